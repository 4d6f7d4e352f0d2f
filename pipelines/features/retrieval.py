"""Point-in-time retrieval of a feature service for entity rows (pandas or Arrow), with the
request-time features (pipelines.features.request) computed from the same rows.

The fast path is `pipelines.features.pit` (DuckDB ASOF joins proven equal to Feast's
`get_historical_features`, which stays available: `features.retrieval: feast`), with the checks
Feast does not make: exactly one output row per entity row, in order, dtypes as the feature
views declare, timezone-aware timestamps only. With `features.created_timestamp_cutoff` a row
at time T sees only values known by T: a correction never leaks into rows before it arrived.

The order is checked where it is produced: in `pit._join` (the entity row numbers the join
returns must be 0..n-1) and in `_feast_features` (Feast's rows are put in entity row order by
their row keys, each of which must be found exactly once). The output holds the entity rows'
own columns, so the order cannot be checked on it afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from pipelines.data.events import PREDICTION_TIME, ROW_KEY
from pipelines.features import request
from pipelines.features.store import service_schema

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    from feast import FeatureStore


def historical_features(store: "FeatureStore", service_name: str, rows: pd.DataFrame,
                        join_keys: list[str], *, engine: str | None = None,
                        cutoff: bool | None = None,
                        request_time: request.Spec | None = None) -> pd.DataFrame:
    """Point-in-time features for each row, as of its prediction time.

    Returns `rows` with the service's features (`<view>__<feature>`) appended, then the
    request-time features of `request_time` (`<name>__<field>`, computed from the rows' own
    columns; None: none), in the same order, one output row per input row; raises if the
    retrieval dropped or duplicated any, or if a feature's dtype does not match its declared
    one. `engine` ("duckdb": pipelines.features.pit, "feast": get_historical_features) and
    `cutoff` (created-timestamp cutoff) default to `features.retrieval` and
    `features.created_timestamp_cutoff` in params.yaml.
    """
    if engine is None or cutoff is None:
        from pipelines.core.config import load_config

        fcfg = load_config().features
        engine = fcfg.retrieval if engine is None else engine
        cutoff = fcfg.created_timestamp_cutoff if cutoff is None else cutoff
    if not isinstance(rows[PREDICTION_TIME].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"{PREDICTION_TIME} must be timezone-aware (UTC); got naive timestamps")
    if rows[ROW_KEY].duplicated().any():
        raise ValueError(f"duplicate {ROW_KEY} values in the entity rows")
    rows = rows.reset_index(drop=True)
    entity_df = rows[[ROW_KEY, PREDICTION_TIME, *join_keys]]
    if engine == "duckdb":
        feats = _fast_features(store, service_name, entity_df, cutoff)
    elif engine == "feast":
        feats = _feast_features(store, service_name, entity_df, cutoff)
    else:
        raise ValueError(f"unknown retrieval engine {engine!r} (duckdb | feast)")
    spec = request_time or {}
    _no_clash(list(rows.columns) + list(feats.columns), spec)
    # no copy: `rows` (reset_index's deep copy) and the features are this call's own frames
    # (copying a million rows with 10 features took 0.13 s in a fresh process: new memory)
    out = pd.concat([rows, feats, request.compute(spec, rows)] if spec else [rows, feats],
                    axis=1, copy=False)
    check_retrieval(out, rows, {**service_schema(store, service_name), **request.schema(spec)})
    return out


def _no_clash(columns: list[str], spec: request.Spec) -> None:
    clash = [c for c in request.columns(spec) if c in columns]
    if clash:
        raise ValueError(f"request-time features {clash} would replace columns of the same "
                         "name (entity rows or feature views); rename them")


def _fast_features(store: "FeatureStore", service_name: str, entity_df: pd.DataFrame,
                   cutoff: bool) -> pd.DataFrame:
    from pipelines.features import pit

    specs = pit.service_views(store, service_name)
    return pit.retrieve(entity_df, specs, PREDICTION_TIME, cutoff=cutoff).to_pandas()


def _distinct(con: "duckdb.DuckDBPyConnection", column: "pa.ChunkedArray") -> int:
    """How many distinct values `column` holds, null counted as one value (as pyarrow's
    `count_distinct(mode="all")`, which took 3x as long for a million row keys: one thread)."""
    import pyarrow as pa

    con.register("__distinct", pa.table({"v": column}))
    try:
        return con.execute("SELECT count(DISTINCT v) + least(count(*) - count(v), 1) "
                           "FROM __distinct").fetchall()[0][0]
    finally:
        con.unregister("__distinct")


def historical_features_table(store: "FeatureStore", service_name: str, rows: "pa.Table",
                              join_keys: list[str], *, engine: str | None = None,
                              cutoff: bool | None = None,
                              request_time: request.Spec | None = None) -> "pa.Table":
    """`historical_features` for entity rows held as an Arrow table, returning an Arrow table
    (batch scoring's path: no pandas round trip of the chunk; training keeps the pandas one).

    The same rows, features, values and checks: `rows` with the service's feature columns and
    the request-time features appended, in the same order, one output row per input row; each
    feature's Arrow column is the one `historical_features` converts to pandas, and its dtype
    is checked as that pandas column would be. With `engine="feast"` (whose retrieval is pandas
    anyway) it is `historical_features` on `rows.to_pandas()`, converted to Arrow.
    """
    import pyarrow as pa

    from pipelines.core import duck
    from pipelines.features import pit

    if engine is None or cutoff is None:
        from pipelines.core.config import load_config

        fcfg = load_config().features
        engine = fcfg.retrieval if engine is None else engine
        cutoff = fcfg.created_timestamp_cutoff if cutoff is None else cutoff
    if engine == "feast":
        out = historical_features(store, service_name, rows.to_pandas(), join_keys,
                                  engine=engine, cutoff=cutoff, request_time=request_time)
        return pa.Table.from_pandas(out, preserve_index=False)
    if engine != "duckdb":
        raise ValueError(f"unknown retrieval engine {engine!r} (duckdb | feast)")
    at = rows[PREDICTION_TIME].type
    if not (pa.types.is_timestamp(at) and at.tz is not None):
        raise ValueError(f"{PREDICTION_TIME} must be timezone-aware (UTC); got naive timestamps")
    con = duck.connect()
    if _distinct(con, rows[ROW_KEY]) != rows.num_rows:
        raise ValueError(f"duplicate {ROW_KEY} values in the entity rows")
    entity = rows.select([ROW_KEY, PREDICTION_TIME, *join_keys])
    feats = pit.retrieve_table(entity, pit.service_views(store, service_name), PREDICTION_TIME,
                               cutoff=cutoff, con=con)
    spec = request_time or {}
    _no_clash(rows.column_names + feats.column_names, spec)
    out = rows
    for table in (feats, request.compute(spec, rows)) if spec else (feats,):
        for name in table.column_names:
            out = out.append_column(name, table[name])
    check_retrieval_table(out, rows, {**service_schema(store, service_name),
                                      **request.schema(spec)})
    return out


def _feast_features(store: "FeatureStore", service_name: str, entity_df: pd.DataFrame,
                    cutoff: bool) -> pd.DataFrame:
    """Feast's features for the entity rows, in their order.

    Feast returns its rows in an order of its own: they are put in entity row order by their
    row keys, which must be the entity rows' keys, each exactly once (the entity rows' keys
    are unique), so that the reordering is a permutation onto the entity rows.
    """
    import numpy as np

    service = store.get_feature_service(service_name)
    out = store.get_historical_features(entity_df=entity_df, features=service,
                                        full_feature_names=True,
                                        filter_by_created_timestamp=cutoff).to_df()
    if len(out) != len(entity_df) or out[ROW_KEY].duplicated().any():
        raise ValueError(f"feature retrieval returned {len(out)} rows for {len(entity_df)} entity "
                         f"rows ({int(out[ROW_KEY].duplicated().sum())} duplicated keys)")
    position = pd.Series(np.arange(len(out)), index=out[ROW_KEY]).reindex(entity_df[ROW_KEY])
    missing = position.isna().to_numpy()
    if missing.any():
        raise ValueError(f"feature retrieval returned no row for {int(missing.sum())} of "
                         f"{len(entity_df)} entity rows, e.g. {ROW_KEY} "
                         f"{entity_df[ROW_KEY].to_numpy()[missing][0]!r}")
    out = out.iloc[position.to_numpy(dtype=np.int64)].reset_index(drop=True)
    return out[feature_columns(out)]


def _dtype_ok(declared: object, series: pd.Series) -> bool:
    from feast import types as ft

    kind = series.dtype.kind
    if declared in (ft.Float32, ft.Float64):
        return kind == "f"
    if declared in (ft.Int32, ft.Int64):  # an integer column with nulls arrives as float
        if kind in "iu":
            return True
        values = series.dropna()
        return kind == "f" and bool((values == values.round()).all())
    if declared == ft.Bool:
        return kind == "b" or (kind == "O" and series.dropna().map(type).eq(bool).all())
    if declared == ft.String:
        return kind == "O" or isinstance(series.dtype, pd.StringDtype)
    if declared == ft.UnixTimestamp:
        return kind == "M"
    return True  # other Feast types are not checked here


def check_retrieval(out: pd.DataFrame, rows: pd.DataFrame,
                    schema: dict[str, tuple[str, str, object]]) -> None:
    """Exactly one output row per entity row, and dtypes as the views declare.

    `out` is `rows` with the feature columns appended, so its keys are `rows`' own whatever
    the retrieval did: the order is checked where it is produced (`pit._join`,
    `_feast_features`), not here. The row count catches feature rows that do not line up with
    the entity rows in `pd.concat` (more of them, or another index, add rows); fewer feature
    rows would be filled with nulls, which the retrievals' own row counts refuse.
    """
    if len(out) != len(rows):
        raise ValueError(f"feature retrieval returned {len(out)} rows for {len(rows)} entity rows")
    _check_schema(out.columns, schema, lambda col: out[col].dtype,
                  lambda declared, col: _dtype_ok(declared, out[col]))


def _check_schema(columns, schema: dict[str, tuple[str, str, object]], dtype_of, ok) -> None:
    """Every schema column present, and `ok(declared, column)` for each (pandas or Arrow)."""
    missing = [c for c in schema if c not in columns]
    if missing:
        raise ValueError(f"feature retrieval returned no column for {missing}")
    bad = [f"{view}.{feature}: declared {declared}, got {dtype_of(col)}"
           for col, (view, feature, declared) in schema.items() if not ok(declared, col)]
    if bad:
        raise TypeError("feature dtypes do not match their declared ones: " + "; ".join(bad))


def _arrow_dtype_ok(declared: object, col: "pa.ChunkedArray") -> bool:
    """`_dtype_ok` of the pandas column `col.to_pandas()` gives (converted only when the
    answer depends on more than a float or string type)."""
    import pyarrow as pa
    from feast import types as ft

    if pa.types.is_floating(col.type) and declared not in (ft.Int32, ft.Int64):
        return _dtype_ok(declared, pd.Series([], dtype=col.type.to_pandas_dtype()))
    if declared == ft.String and (pa.types.is_string(col.type)
                                  or pa.types.is_large_string(col.type)):
        return True  # object in pandas
    return _dtype_ok(declared, pa.table({"c": col}).to_pandas()["c"])


def check_retrieval_table(out: "pa.Table", rows: "pa.Table",
                          schema: dict[str, tuple[str, str, object]]) -> None:
    """`check_retrieval` of an Arrow retrieval (dtypes as `to_pandas()` would give them).

    As there, the order is checked where it is produced (`pit._join`), not here. The row count
    is for an `out` built otherwise: `historical_features_table` builds it with
    `append_column`, which already refuses a column of another length.
    """
    if out.num_rows != rows.num_rows:
        raise ValueError(f"feature retrieval returned {out.num_rows} rows for {rows.num_rows} "
                         "entity rows")
    _check_schema(out.column_names, schema, lambda col: out[col].type,
                  lambda declared, col: _arrow_dtype_ok(declared, out[col]))


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Feast feature columns (full names: `<view>__<feature>`)."""
    return [c for c in df.columns if "__" in c]
