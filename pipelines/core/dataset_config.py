"""The `dataset` section of params.yaml: sources (and their time zones), the event table (key,
time, derived columns, duplicates), the label (and when each outcome is known) and the rolling
label statistics. Re-exported by pipelines.core.config."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.core.specs import DerivedColumn


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_duration(text: str) -> timedelta:
    """'2h', '30m', '1d', '90s' -> timedelta (explicit units only)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", str(text))
    if not match:
        raise ValueError(f"duration {text!r} must look like '2h', '30m', '1d' or '90s'")
    value, unit = float(match.group(1)), match.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: value})


class DstPolicy(_Frozen):
    """What a naive local time means where the clocks change (`sources.<table>.dst`)."""
    ambiguous: Literal["earliest", "latest", "raise"] = "earliest"  # a repeated local hour
    nonexistent: Literal["raise", "shift_forward"] = "raise"  # a skipped one: a bad clock


class SourceConfig(_Frozen):
    uri: str
    timestamp: str | None = None
    # Naive timestamps (no offset, e.g. '2024-11-03 01:30:00' or a date) in `timestamp` and in
    # `timestamp_columns` are local time in this IANA zone, made timezone-aware once at ingest.
    timezone: str | None = None
    timestamp_columns: tuple[str, ...] = ()
    timestamp_format: str | None = None  # strptime format of the naive values (default ISO 8601)
    dst: DstPolicy = DstPolicy()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            from pipelines.core.intervals import zone

            zone(v)
        return v

    @model_validator(mode="after")
    def _local(self) -> "SourceConfig":
        if (self.timestamp_columns or self.timestamp_format) and self.timezone is None:
            raise ValueError("timestamp_columns and timestamp_format need a timezone (the zone "
                             "the naive values are local to)")
        return self

    @property
    def local_columns(self) -> tuple[str, ...]:
        """The columns ingest makes timezone-aware (none without a timezone)."""
        if self.timezone is None:
            return ()
        return tuple(dict.fromkeys([*([self.timestamp] if self.timestamp else []),
                                    *self.timestamp_columns]))


class PassthroughFeatures(_Frozen):
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()


class DuplicatesPolicy(_Frozen):
    """Event rows sharing a key: `error` (the default: fail naming them), or keep the `first`
    or `last` of them, ordered by `order_by` (a column; default: the order rows were read)."""
    keep: Literal["error", "first", "last"] = "error"
    order_by: str | None = None

    @model_validator(mode="after")
    def _order(self) -> "DuplicatesPolicy":
        if self.keep == "error" and self.order_by is not None:
            raise ValueError("order_by is only used with keep: first or keep: last")
        return self


class EventsConfig(_Frozen):
    table: str
    key: tuple[str, ...]
    timestamp: str
    prediction_lead: timedelta
    derived: dict[str, DerivedColumn] = Field(default_factory=dict)
    passthrough_features: PassthroughFeatures = PassthroughFeatures()
    duplicates: DuplicatesPolicy = DuplicatesPolicy()

    @field_validator("prediction_lead", mode="before")
    @classmethod
    def _lead(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v


class LabelConfig(_Frozen):
    """When a row's outcome is known: `available_at` (a timestamp column of the event row, per
    row) plus `available_after` (default 0), or `available_after` the event timestamp (one
    delay for every row). A row is labelled once its `requires` and its `available_at` exist."""
    name: str
    expr: str
    requires: tuple[str, ...] = ()
    available_at: str | None = None
    available_after: timedelta | None = None

    @field_validator("available_after", mode="before")
    @classmethod
    def _after(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _when(self) -> "LabelConfig":
        if self.available_at is None and self.available_after is None:
            raise ValueError("say when an outcome is known: available_at (a timestamp column, "
                             "per row) or available_after (a delay after the event timestamp)")
        return self

    @property
    def delay(self) -> timedelta:
        """The fixed part of the delay (after `available_at`, or after the event)."""
        return self.available_after or timedelta(0)


class AggregateConfig(_Frozen):
    keys: tuple[str, ...]
    window_days: int = Field(gt=0)


class DatasetConfig(_Frozen):
    name: str
    sources: dict[str, SourceConfig]
    events: EventsConfig
    label: LabelConfig
    aggregates: dict[str, AggregateConfig] = Field(default_factory=dict)

    @property
    def daily_tables(self) -> list[str]:
        """The tables cut into one batch per interval (those with a timestamp); the others
        are reference tables (one snapshot)."""
        return [name for name, src in self.sources.items() if src.timestamp]

    @model_validator(mode="after")
    def _events_source(self) -> "DatasetConfig":
        source = self.sources.get(self.events.table)
        if source is None:
            raise ValueError(f"events.table {self.events.table!r} is not one of the sources "
                             f"{sorted(self.sources)}")
        if source.timestamp != self.events.timestamp:
            raise ValueError(f"sources.{self.events.table}.timestamp "
                             f"{source.timestamp!r}: the events table is cut into interval "
                             f"batches by its event time, events.timestamp "
                             f"{self.events.timestamp!r}")
        return self
