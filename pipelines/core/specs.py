"""Typed specs of computed columns: derived event columns (`dataset.events.derived`) and
request-time features (`features.request_time`).

Validated when params.yaml loads, and again when a model's recorded request-time spec is read
back from the registry for scoring (`parse_request_spec`): both are data (expressions are
parsed by pipelines.core.expressions, never executed as code).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from pipelines.core.expressions import Expression, check_fill


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# A row whose inputs are missing (or whose result is missing or not finite): propagate = the
# value is missing; error = fail naming the column, expression and rows; fill = fill_value.
OnMissing = Literal["propagate", "error", "fill"]
_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"


def _missing_policy(owner: Any, dtype: str) -> None:
    if owner.on_missing == "fill":
        if owner.fill_value is None:
            raise ValueError("on_missing: fill needs a fill_value")
        check_fill(owner.fill_value, dtype, "fill_value")
    elif owner.fill_value is not None:
        raise ValueError(f"fill_value is only used with on_missing: fill (got {owner.on_missing})")


class DerivedColumn(_Frozen):
    """A column computed on the event row, either `concat` (the columns' text joined by `sep`;
    missing when any of them is) or `expr` (see pipelines.core.expressions) with its `dtype`."""
    concat: tuple[str, ...] | None = None
    sep: str = "-"
    expr: str | None = None
    dtype: Literal["float64", "int64", "bool", "string"] | None = None
    on_missing: OnMissing = "propagate"
    fill_value: bool | int | float | str | None = None

    @model_validator(mode="after")
    def _kind(self) -> "DerivedColumn":
        if (self.concat is None) == (self.expr is None):
            raise ValueError("give either concat (columns joined as text) or expr (an "
                             "expression with a dtype)")
        if self.concat is not None:
            if not self.concat:
                raise ValueError("concat needs at least one column")
            if self.dtype not in (None, "string"):
                raise ValueError(f"concat makes text: dtype {self.dtype} is not possible")
        else:
            if self.dtype is None:
                raise ValueError(f"expr {self.expr!r} needs a dtype (float64, int64, bool, "
                                 "string)")
            Expression(self.expr)  # parsed and checked now: a bad expression fails the load
        _missing_policy(self, self.dtype or "string")
        return self

    @property
    def expression(self) -> Expression | None:
        return Expression(self.expr) if self.expr is not None else None


CALENDAR_FIELDS = ("year", "month", "day", "weekday", "hour", "minute", "dayofyear")


class CalendarFeature(_Frozen):
    """Calendar fields (Monday = 0 for weekday) of a timestamp request column, in `timezone`
    (an IANA name: daylight saving time is applied). Naive timestamps are refused."""
    kind: Literal["calendar"]
    input: str
    timezone: str
    fields: tuple[Literal[CALENDAR_FIELDS], ...] = Field(min_length=1)  # type: ignore[valid-type]
    on_missing: OnMissing = "propagate"
    fill_value: int | None = None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as "
                             "'America/New_York')") from None
        return v

    @model_validator(mode="after")
    def _check(self) -> "CalendarFeature":
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields {list(self.fields)} repeat a field")
        _missing_policy(self, "int64")
        return self

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def outputs(self) -> dict[str, str]:
        """Field -> dtype."""
        return {f: "int64" for f in self.fields}


class ExpressionFeature(_Frozen):
    """One numeric value computed from request columns (`inputs`, exactly the columns `expr`
    reads) by an expression of pipelines.core.expressions."""
    kind: Literal["expression"]
    inputs: tuple[str, ...] = Field(min_length=1)
    expr: str
    dtype: Literal["float64", "int64"]  # model inputs are numeric
    field: str = Field("value", pattern=_NAME)
    on_missing: OnMissing = "propagate"
    fill_value: int | float | None = None

    @model_validator(mode="after")
    def _check(self) -> "ExpressionFeature":
        reads = Expression(self.expr).names
        if set(reads) != set(self.inputs):
            raise ValueError(f"inputs {list(self.inputs)} must be the columns expr "
                             f"{self.expr!r} reads: {list(reads)}")
        if "__" in self.field:
            raise ValueError(f"field {self.field!r} may not contain '__'")
        _missing_policy(self, self.dtype)
        return self

    @property
    def outputs(self) -> dict[str, str]:
        return {self.field: self.dtype}


RequestFeature = Annotated[CalendarFeature | ExpressionFeature, Field(discriminator="kind")]


def check_request_names(spec: dict[str, Any]) -> dict[str, Any]:
    """Feature names make `<name>__<field>` columns: no '__' inside, no surprises."""
    for name in spec:
        if not re.match(_NAME, name) or "__" in name:
            raise ValueError(f"request-time feature name {name!r}: letters, digits and single "
                             "underscores, starting with a letter")
    return spec


def request_spec_json(spec: dict[str, Any]) -> str:
    """The canonical text of a request-time spec (sorted keys, defaults included): what a
    model's lineage records and its hash covers."""
    return json.dumps({name: f.model_dump(mode="json") for name, f in spec.items()},
                      sort_keys=True, separators=(",", ":"))


def parse_request_spec(text: str | None) -> dict[str, Any]:
    """A recorded request-time spec back as validated specs (None or "": no features)."""
    if not text:
        return {}
    return check_request_names(
        TypeAdapter(dict[str, RequestFeature]).validate_python(json.loads(text)))
