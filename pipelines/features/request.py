"""Request-time features: computed from the entity row itself, by one function everywhere.

A request-time feature (`features.request_time` in params.yaml) reads columns the caller
provides with the entity keys: the prediction time, or any other declared request column. It
replaces Feast's on-demand feature views, whose code Feast stores in its registry and executes
in every process that reads it; here the registry holds data only and the computation is this
module, driven by a spec that is itself data (a calendar in a time zone, or an expression of
pipelines.core.expressions).

`compute` is the one implementation: training (`historical_features`, pandas), batch scoring
(`historical_features_table`, Arrow) and online serving (`pipelines.features.serving
.serving_features`, JSON-like entity rows) all call it, and the online/offline skew check
compares them. A model records the spec it was trained with (`pipelines.core.specs
.request_spec_json`, in its lineage tags and its feature-service hash) and is scored with that
spec, not with today's params.yaml.

Output columns are `<name>__<field>` (like Feast's full feature names), appended in spec order.
Pandas results are exactly the Arrow results converted with `to_pandas()` (an int64 feature
with missing values is float64, as Feast's are).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from pipelines.core.expressions import Expression, apply_missing, derive
from pipelines.core.specs import CalendarFeature, ExpressionFeature

if TYPE_CHECKING:
    import pyarrow as pa

Spec = Mapping[str, "CalendarFeature | ExpressionFeature"]


def columns(spec: Spec) -> dict[str, tuple[str, str, str]]:
    """Output column -> (feature, field, dtype), in output order."""
    return {f"{name}__{fld}": (name, fld, dtype) for name, feat in spec.items()
            for fld, dtype in feat.outputs.items()}


def inputs(spec: Spec) -> list[str]:
    """The request columns the spec reads (what a serving request must carry)."""
    return list(dict.fromkeys(c for feat in spec.values() for c in feat.inputs))


def schema(spec: Spec) -> dict[str, tuple[str, str, object]]:
    """Output column -> (feature, field, Feast dtype): the retrieval's dtype check."""
    from feast import types as ft

    feast_types = {"int64": ft.Int64, "float64": ft.Float64}
    return {col: (name, fld, feast_types[dtype]) for col, (name, fld, dtype) in
            columns(spec).items()}


def _timestamps(values: pd.Series, what: str, tz: str) -> pd.arrays.DatetimeArray:
    """Timezone-aware datetimes, or text / datetime objects with an offset, as instants in
    zone `tz` (the array: its fields without a Series per step, and for a request's few
    rows a tenth of the `.dt` accessor's cost); naive values are refused (never read as
    UTC)."""
    from pipelines.core.dates import parse_utc

    if isinstance(values.dtype, pd.DatetimeTZDtype):
        stamps = values.array
    elif values.isna().all():
        stamps = pd.array([pd.NaT] * len(values), dtype="datetime64[ns, UTC]")
    else:
        stamps = parse_utc(values, what).array
    return stamps.tz_convert(tz)


def _calendar(name: str, feat: CalendarFeature, frame: pd.DataFrame
              ) -> dict[str, pd.Series | np.ndarray]:
    what = f"features.request_time.{name}"
    column = frame[feat.input]
    local = _timestamps(column, f"{what}: {feat.input}", feat.timezone)
    missing = local.isna()
    complete = not missing.any()  # whole numbers: nothing to null, fill or refuse
    out = {}
    for fld in feat.fields:  # the array's fields: numpy, without a Series per step
        field = getattr(local, fld)
        if complete:
            out[fld] = np.asarray(field, dtype=np.int64)
            continue
        values = pd.Series(np.asarray(field, dtype=np.float64), index=column.index)  # NaT: NaN
        out[fld] = apply_missing(values, pd.Series(missing, index=column.index), "int64",
                                 feat.on_missing, feat.fill_value,
                                 f"{what}.{fld} ({feat.input} in {feat.timezone})")
    return out


def _expression(name: str, feat: ExpressionFeature, frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {feat.field: derive(Expression(feat.expr), frame, feat.dtype, feat.on_missing,
                               feat.fill_value, f"features.request_time.{name}")}


def _input_frame(rows: "pd.DataFrame | pa.Table", spec: Spec) -> pd.DataFrame:
    """The request columns the spec reads, as pandas (Arrow: only those columns converted)."""
    import pyarrow as pa

    names = rows.column_names if isinstance(rows, pa.Table) else list(rows.columns)
    for name, feat in spec.items():
        absent = [c for c in feat.inputs if c not in names]
        if absent:
            raise ValueError(f"request-time feature {name!r} reads {absent}, which the entity "
                             f"rows do not carry (columns: {names})")
    wanted = inputs(spec)
    if isinstance(rows, pa.Table):
        return rows.select(wanted).to_pandas()
    index = rows.index
    if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1:
        return rows  # positions already (the features read only their inputs)
    return rows[wanted].reset_index(drop=True)


def compute(spec: Spec, rows: "pd.DataFrame | pa.Table") -> "pd.DataFrame | pa.Table":
    """The request-time features (`<name>__<field>` columns) of each entity row.

    `rows` is a pandas frame (training), an Arrow table (batch scoring) or a frame made from
    serving requests (`serving_frame`); the result is of the same kind, one row per entity row
    in the same order (pandas: a fresh RangeIndex). Fails naming the feature on a missing
    request column, a naive timestamp, or a missing value under `on_missing: error`.
    """
    import pyarrow as pa

    n = rows.num_rows if isinstance(rows, pa.Table) else len(rows)
    arrays = compute_arrays(spec, rows)
    table = pa.table(arrays) if arrays else pa.table({"__n": pa.nulls(n)}).drop(["__n"])
    if isinstance(rows, pa.Table):
        return table
    # each column as `table.to_pandas()` makes it (int64 with nulls: float64), less overhead
    return pd.DataFrame({c: a.to_pandas() for c, a in arrays.items()}, index=pd.RangeIndex(n))


def compute_arrays(spec: Spec, rows: "pd.DataFrame | pa.Table") -> "dict[str, pa.Array]":
    """`compute`'s columns as Arrow arrays (what it makes its result of)."""
    import pyarrow as pa

    frame = _input_frame(rows, spec)
    arrays: dict[str, pa.Array] = {}
    for name, feat in spec.items():
        values = _calendar(name, feat, frame) if isinstance(feat, CalendarFeature) \
            else _expression(name, feat, frame)
        for fld, series in values.items():
            dtype = feat.outputs[fld]
            arrays[f"{name}__{fld}"] = pa.array(series, type=pa.int64() if dtype == "int64"
                                                else pa.float64(), from_pandas=True)
    return arrays


def serving_frame(entity_rows: list[Mapping[str, Any]], spec: Spec) -> pd.DataFrame:
    """The request columns of serving requests (dicts of JSON-like values: numbers, text,
    ISO timestamps with an offset, None) as the frame `compute` reads."""
    wanted = inputs(spec)
    absent = sorted({c for row in entity_rows for c in wanted if c not in row})
    if absent:
        raise ValueError(f"request rows lack the request columns {absent} (request-time "
                         f"features read {wanted})")
    return pd.DataFrame({c: pd.Series([row[c] for row in entity_rows]) for c in wanted},
                        index=pd.RangeIndex(len(entity_rows)))
