"""Timestamp sanity as real GX expectations, so Data Docs show them: timezone-aware values,
inside the run's data interval. They are custom column-map expectations, added to a suite at
run time (`timestamp_checks`) because the interval is the run's, not the suite's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import pandas as pd
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    column_condition_partial,
)
from great_expectations.render import LegacyRendererType, RenderedStringTemplateContent
from great_expectations.render.renderer.renderer import renderer

# an explicit zone designator right after the time part ("...T10:00:00Z", "...10:00+05:30")
_TZ_SUFFIX = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"


def as_utc(value: datetime | str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _timestamps(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(has an explicit zone, the UTC timestamp or NaT) for text or datetime values."""
    if pd.api.types.is_datetime64_any_dtype(values):
        aware = getattr(values.dtype, "tz", None) is not None
        parsed = values.dt.tz_convert("UTC") if aware else values.dt.tz_localize("UTC")
        return pd.Series(aware, index=values.index), parsed
    text = values.astype("string").str.strip()
    aware = text.str.contains(_TZ_SUFFIX, regex=True).fillna(False).astype(bool)
    return aware, pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")


class ColumnValuesTimezoneAware(ColumnMapMetricProvider):
    condition_metric_name = "column_values.timezone_aware_timestamp"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> pd.Series:
        aware, parsed = _timestamps(column)
        return aware & parsed.notna()


class ColumnValuesNotBefore(ColumnMapMetricProvider):
    condition_metric_name = "column_values.timestamp_not_before"
    condition_value_keys = ("min_value",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, min_value: str, **kwargs: Any) -> pd.Series:
        return ~(_timestamps(column)[1] < as_utc(min_value))


class ColumnValuesBefore(ColumnMapMetricProvider):
    condition_metric_name = "column_values.timestamp_before"
    condition_value_keys = ("max_value",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, max_value: str, **kwargs: Any) -> pd.Series:
        return ~(_timestamps(column)[1] >= as_utc(max_value))


class _Sentence:
    """The Data Docs sentence of a timestamp expectation (GX's fallback prints raw kwargs)."""

    sentence: ClassVar[str] = ""

    @classmethod
    @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
    def _prescriptive_renderer(cls, configuration: Any = None, result: Any = None,
                               runtime_configuration: dict | None = None, **kwargs: Any) -> list:
        config = configuration or getattr(result, "expectation_config", None)
        params = {k: v for k, v in (config.kwargs if config else {}).items() if k != "batch_id"}
        return [RenderedStringTemplateContent(
            content_block_type="string_template",
            string_template={"template": "$column values must be " + cls.sentence,
                             "params": params,
                             "styling": (runtime_configuration or {}).get("styling")})]


class ExpectColumnValuesToBeTimezoneAwareUtcTimestamps(_Sentence, ColumnMapExpectation):
    """Each value is a timestamp with an explicit zone: ISO text ending in Z or +hh:mm (naive
    text such as '2013-01-01 10:00' fails), or a timezone-aware datetime."""

    sentence: ClassVar[str] = ("timestamps with an explicit time zone (ISO text ending in Z "
                               "or +hh:mm, or timezone-aware datetimes).")
    map_metric = "column_values.timezone_aware_timestamp"


class ExpectColumnValuesToNotBeBeforeIntervalStart(_Sentence, ColumnMapExpectation):
    """Each timestamp is at or after min_value (the data interval start, ISO)."""

    sentence: ClassVar[str] = "at or after the data interval start $min_value."
    min_value: str
    map_metric = "column_values.timestamp_not_before"
    success_keys = ("min_value", "mostly")


class ExpectColumnValuesToBeBeforeIntervalEnd(_Sentence, ColumnMapExpectation):
    """Each timestamp is before max_value (the data interval end, ISO): not in the future."""

    sentence: ClassVar[str] = "before the data interval end $max_value (not in its future)."
    max_value: str
    map_metric = "column_values.timestamp_before"
    success_keys = ("max_value", "mostly")


def _entry(type_: str, **kwargs: Any) -> dict:
    return {"type": type_, "kwargs": kwargs, "meta": {"on_failure": "fail"}}


def timestamp_checks(columns: list[str], column: str, start: datetime | str | None,
                     end: datetime | str | None) -> list[dict]:
    """Suite entries: `column` holds timezone-aware timestamps inside [start, end) (a naive
    start/end counts as UTC). None if the column is absent: the column-set check reports that."""
    if column not in columns:
        return []
    exps = [_entry("expect_column_values_to_be_timezone_aware_utc_timestamps", column=column)]
    if start is not None and end is not None:
        exps += [_entry("expect_column_values_to_not_be_before_interval_start", column=column,
                        min_value=as_utc(start).isoformat()),
                 _entry("expect_column_values_to_be_before_interval_end", column=column,
                        max_value=as_utc(end).isoformat())]
    return exps
