"""Fast point-in-time retrieval: DuckDB ASOF joins over the Feast sources, with Feast's semantics.

Feast stays the source of truth for what a feature is: source path, timestamp and created
timestamp columns, TTL, join keys and feature names are read from the FeatureStore objects
(`service_views`). This module only makes the join fast. For an entity row at time T and a
feature view it returns the values of the row Feast's `get_historical_features` returns:

- the feature row of the same entity with the latest event timestamp <= T; rows with equal
  event timestamps are ordered by their created timestamp (the latest wins);
- nothing (nulls) if that row is older than T - ttl (a ttl of 0 or None never expires), if the
  entity has no such row, or if a join key is null;
- with `cutoff=True` (Feast's `filter_by_created_timestamp=True`) only rows *created* by T
  count. A row created after its event time (a late row, e.g. a correction of an earlier value)
  is invisible to rows before its created time and visible from then on, so a correction
  written later cannot leak into an earlier training row. Off, a correction rewrites history.
  A view without a created timestamp column has no cutoff (as in Feast).

Two source rows equal in join keys, event and created timestamp are a tie Feast breaks
arbitrarily; exact duplicates are harmless, differing values are ambiguous in both paths.
Naive (time-zone-less) timestamps are rejected, never read as UTC.

How: one ASOF JOIN per view ordered by the struct (event ts, created ts), so ties resolve as in
Feast (by the event ts alone where every row it joins was created at its event time: then the
two orders agree), and the TTL applied to the row found. With the cutoff, late rows get a second
ASOF on their created time over a running maximum, and the later of the two candidates wins.
Output columns keep DuckDB -> Arrow -> pandas types, as Feast's do (an Int64 feature with nulls
is float64).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from pipelines.core import duck

if TYPE_CHECKING:
    import duckdb
    import pandas as pd
    import pyarrow as pa
    from feast import FeatureStore, FeatureView

TS, CR = "__ts", "__cr"  # a view's event / created timestamp inside the queries
ROW, AT = "__row", "__at"  # entity row position and as-of time


@dataclass(frozen=True)
class ViewSpec:
    """What the join needs to know about one feature view (read from Feast, never written)."""

    name: str  # output prefix: `<name>__<feature>`
    path: str  # Parquet file or glob
    timestamp_field: str
    created_timestamp_column: str | None
    ttl: timedelta | None  # None or 0: never expires
    join_keys: tuple[tuple[str, str], ...]  # (source column, entity column)
    features: tuple[str, ...]
    field_mapping: tuple[tuple[str, str], ...] = ()  # (source column, view column)


def view_spec(fv: "FeatureView", repo_path: str = ".", features: list[str] | None = None,
              prefix: str | None = None, join_key_map: dict[str, str] | None = None) -> ViewSpec:
    """The join spec of a Feast FeatureView (optionally a projection of it)."""
    from feast.infra.offline_stores.file_source import FileSource

    src = fv.batch_source
    if not isinstance(src, FileSource):
        raise TypeError(f"{fv.name}: fast retrieval reads FileSource views, got {type(src).__name__}")
    path = src.path if "://" in src.path or os.path.isabs(src.path) else os.path.join(repo_path, src.path)
    keys = join_key_map or {c.name: c.name for c in fv.entity_columns}
    return ViewSpec(
        name=prefix or fv.name, path=path, timestamp_field=src.timestamp_field,
        created_timestamp_column=src.created_timestamp_column or None,
        ttl=fv.ttl if fv.ttl else None, join_keys=tuple(keys.items()),
        features=tuple(features if features is not None else [f.name for f in fv.features]),
        field_mapping=tuple((src.field_mapping or {}).items()))


def service_views(store: "FeatureStore", service_name: str) -> list[ViewSpec]:
    """The join specs of the service's feature views, in service order.

    A service holds feature views only: request-time features are computed from the entity
    rows by pipelines.features.request, never by code stored in the Feast registry.
    """
    service = store.get_feature_service(service_name)
    specs = []
    for proj in service.feature_view_projections:
        fv = store.get_feature_view(proj.name)
        specs.append(view_spec(fv, str(store.repo_path), [f.name for f in proj.features],
                               proj.name_alias or fv.name, proj.join_key_map or None))
    return specs


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _all(con: "duckdb.DuckDBPyConnection", sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()  # fetched to the end: the connection is free again


def _read(con: "duckdb.DuckDBPyConnection", spec: ViewSpec) -> str:
    """SELECT of the view's source: join keys, __ts, __cr, features (view column names)."""
    path = duck.readable(con, spec.path).replace("'", "''")
    source_of = {view: source for source, view in spec.field_mapping}
    col = lambda view: _q(source_of.get(view, view))
    cols = [f"{col(k)} AS {_q(k)}" for k, _ in spec.join_keys]
    cols.append(f"{col(spec.timestamp_field)} AS {TS}")
    if spec.created_timestamp_column:
        cols.append(f"{col(spec.created_timestamp_column)} AS {CR}")
    cols += [f"{col(f)} AS {_q(f)}" for f in spec.features]
    not_null = " AND ".join(f"{col(k)} IS NOT NULL" for k, _ in spec.join_keys) or "true"
    return f"SELECT {', '.join(cols)} FROM read_parquet('{path}') WHERE {not_null}"


def _profile(con: "duckdb.DuckDBPyConnection", spec: ViewSpec, source: str) -> tuple[int, int]:
    """Reject naive or null timestamps; return the numbers of late rows (created > event) and
    of early ones (created < event)."""
    import duckdb

    try:
        types = {r[0]: r[1] for r in _all(con, f"DESCRIBE {source}")}
    except duckdb.IOException as exc:
        raise FileNotFoundError(f"{spec.name}: no source files at {spec.path} ({exc})") from exc
    for column, label in ((TS, spec.timestamp_field), (CR, spec.created_timestamp_column)):
        if column in types and not ("WITH TIME ZONE" in types[column]
                                    or types[column].startswith("TIMESTAMPTZ")):
            raise ValueError(f"{spec.name}: {label} in {spec.path} is {types[column]}, a naive "
                             "timestamp; write timezone-aware UTC timestamps")
    counts = (f"count(*) FILTER ({CR} IS NULL), count(*) FILTER ({CR} > {TS}), "
              f"count(*) FILTER ({CR} < {TS})") if CR in types else "0, 0, 0"
    [(nulls_ts, nulls_cr, late, early)] = _all(
        con, f"SELECT count(*) FILTER ({TS} IS NULL), {counts} FROM ({source})")
    if nulls_ts or nulls_cr:
        raise ValueError(f"{spec.name}: {nulls_ts} null {spec.timestamp_field} and {nulls_cr} null "
                         f"{spec.created_timestamp_column} values in {spec.path}")
    return int(late), int(early)


def _view_sql(con: "duckdb.DuckDBPyConnection", spec: ViewSpec, i: int, cutoff: bool
              ) -> tuple[list[str], str, list[str]]:
    """(CTEs, ASOF join clauses onto the entity rows `e`, output columns) of view `i`."""
    source = _read(con, spec)
    all_late, early = _profile(con, spec, source)  # checks the timestamps whatever the cutoff
    late = all_late if cutoff else 0
    key_list = ", ".join(_q(k) for k, _ in spec.join_keys)
    key_sel = f"{key_list}, " if key_list else ""

    def on(alias: str) -> str:
        return "".join(f"e.{_q(ek)} = {alias}.{_q(k)} AND " for k, ek in spec.join_keys)

    has_cr = spec.created_timestamp_column is not None
    # The ASOF orders a key's rows by (event, created). Where every row it joins was created at
    # its event time (no created column; or none created earlier, and none later or those
    # joined apart below, with the cutoff), rows equal in event time are equal in created time
    # too, a tie either way, and the event time alone orders them: a struct comparison costs
    # about a tenth of the join.
    by_event = not has_cr or (early == 0 and (late > 0 or all_late == 0))
    order = f"{{'t': {TS}, 'c': {CR}}}" if has_cr else f"{{'t': {TS}}}"
    on_time = f" WHERE {CR} <= {TS}" if late else ""
    cast = ", ".join(f"{c}::TIMESTAMPTZ AS {c}" for c in (TS, CR) if c != CR or has_cr)
    values = "{" + ", ".join(f"{_q(f)}: {_q(f)}" for f in spec.features) + "}"
    # the ASOF's order where it is not the event time, and the pick below (late rows) compares
    # the (event, created) structs and takes the values as one struct
    carried = [f"{order} AS __o"] if late or not by_event else []
    carried.append(f"{values} AS __v" if late else ", ".join(_q(f) for f in spec.features))
    ctes = [f"s{i} AS (SELECT * REPLACE ({cast}) FROM ({source}))",
            f"v{i} AS (SELECT {key_sel}{TS}, {', '.join(carried)} FROM s{i}{on_time})"]
    probe = f"{{'t': e.{AT}, 'c': 'infinity'::TIMESTAMPTZ}}" if has_cr else f"{{'t': e.{AT}}}"
    asof = f"e.{AT} >= v{i}.{TS}" if by_event else f"{probe} >= v{i}.__o"
    joins = f"ASOF LEFT JOIN v{i} ON {on(f'v{i}')}{asof}"
    pick_t = f"v{i}.{TS}"
    pick = {f: f"v{i}.{_q(f)}" for f in spec.features}
    if late:  # late rows count from their created time: a running maximum over it
        part = f"PARTITION BY {key_list} " if key_list else ""
        ctes.append(f"l{i} AS (SELECT {key_sel}{CR} AS __vis, max({{'o': {order}, 'v': {values}}}) "
                    f"OVER ({part}ORDER BY {CR} RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
                    f" AS __b FROM s{i} WHERE {CR} > {TS})")
        joins += f" ASOF LEFT JOIN l{i} ON {on(f'l{i}')}e.{AT} >= l{i}.__vis"
        late_wins = f"(l{i}.__b.o IS NOT NULL AND (v{i}.__o IS NULL OR l{i}.__b.o > v{i}.__o))"
        pick_t = f"(CASE WHEN {late_wins} THEN l{i}.__b.o.t ELSE v{i}.{TS} END)"
        pick = {f: f"(CASE WHEN {late_wins} THEN l{i}.__b.v ELSE v{i}.__v END).{_q(f)}"
                for f in spec.features}
    if spec.ttl:
        us = int(spec.ttl / timedelta(microseconds=1))
        fresh = f"{pick_t} >= e.{AT} - to_microseconds({us})"
        cols = [f"CASE WHEN {fresh} THEN {pick[f]} END AS {_q(f'{spec.name}__{f}')}"
                for f in spec.features]
    else:
        cols = [f"{pick[f]} AS {_q(f'{spec.name}__{f}')}" for f in spec.features]
    return ctes, joins, cols


def retrieve(entities: "pd.DataFrame", specs: list[ViewSpec], timestamp_col: str,
             cutoff: bool = True, con: "duckdb.DuckDBPyConnection | None" = None) -> "pa.Table":
    """Feature columns (`<view>__<feature>`) for every entity row, in entity row order
    (both checked: `_join`).

    `entities` holds `timestamp_col` (timezone-aware) and every view's entity join columns.
    Exactly one output row per entity row, duplicates included.
    """
    import pandas as pd
    import pyarrow as pa

    at = entities[timestamp_col]
    if not isinstance(at.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"{timestamp_col} must be timezone-aware (UTC), got {at.dtype}: naive "
                         "timestamps are not read as UTC silently")
    if at.isna().any():
        raise ValueError(f"{int(at.isna().sum())} entity rows without {timestamp_col}")
    con = duck.connect(con)
    ent_cols = list(dict.fromkeys(ek for s in specs for _, ek in s.join_keys))
    frame = entities[ent_cols].reset_index(drop=True)
    for c in ent_cols:  # an all-null key column has no type to compare: make it untyped null
        if frame[c].isna().all():
            frame[c] = pd.Series([None] * len(frame), dtype=object)
    frame.insert(0, AT, at.dt.tz_convert("UTC").reset_index(drop=True))
    frame.insert(0, ROW, pd.RangeIndex(len(frame)))
    return _join(con, pa.Table.from_pandas(frame, preserve_index=False), specs, cutoff)


def retrieve_table(entities: "pa.Table", specs: list[ViewSpec], timestamp_col: str,
                   cutoff: bool = True, con: "duckdb.DuckDBPyConnection | None" = None
                   ) -> "pa.Table":
    """`retrieve` for entity rows held as an Arrow table (no pandas round trip): the same
    checks, the same join, the same output (batch scoring's path; `retrieve` stays training's).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    at = entities[timestamp_col]
    if not (pa.types.is_timestamp(at.type) and at.type.tz is not None):
        raise ValueError(f"{timestamp_col} must be timezone-aware (UTC), got {at.type}: naive "
                         "timestamps are not read as UTC silently")
    if at.null_count:
        raise ValueError(f"{at.null_count} entity rows without {timestamp_col}")
    con = duck.connect(con)
    n = entities.num_rows
    ent_cols = list(dict.fromkeys(ek for s in specs for _, ek in s.join_keys))
    names, cols = [ROW, AT], [pa.array(np.arange(n, dtype=np.int64)),
                              pc.cast(at, pa.timestamp(at.type.unit, "UTC"))]
    for c in ent_cols:  # an all-null key column has no type to compare: make it untyped null
        col = entities[c]
        names.append(c)
        cols.append(pa.nulls(n) if col.null_count == n else col)
    return _join(con, pa.Table.from_arrays(cols, names=names), specs, cutoff)


def _join(con: "duckdb.DuckDBPyConnection", entities: "pa.Table", specs: list[ViewSpec],
          cutoff: bool) -> "pa.Table":
    """The point-in-time join of `entities` (ROW = 0..n-1, AT, entity join columns) with every
    view: the feature columns, one row per entity row in entity row order.

    Both are checked here, where the order is produced: the query also returns each output
    row's entity row number, which must be exactly 0..n-1 (then dropped: with no view, the
    output has no column and one row per entity row).
    """
    import numpy as np

    con.register("__entities", entities)
    ctes = [f"e AS (SELECT * REPLACE ({AT}::TIMESTAMPTZ AS {AT}) FROM __entities)"]
    joins, cols = [], []
    for i, spec in enumerate(specs):
        c, j, out = _view_sql(con, spec, i, cutoff)
        ctes += c
        joins.append(j)
        cols += out
    sql = (f"WITH {', '.join(ctes)} SELECT {', '.join([f'e.{ROW} AS {ROW}', *cols])} FROM e "
           f"{' '.join(joins)} ORDER BY e.{ROW}")
    try:
        table = con.sql(sql).to_arrow_table()
    finally:
        con.unregister("__entities")
    n = entities.num_rows
    if table.num_rows != n:
        raise ValueError(f"point-in-time join returned {table.num_rows} rows for {n} entity rows")
    row = table[ROW].to_numpy()
    wrong = np.flatnonzero(row != np.arange(n, dtype=row.dtype))
    if wrong.size:
        raise ValueError(f"point-in-time join returned rows out of entity-row order: output row "
                         f"{wrong[0]} is entity row {row[wrong[0]]} ({wrong.size} rows misplaced)")
    return table.drop_columns([ROW])  # no view: no column, still one row per entity row
