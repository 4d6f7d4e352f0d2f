"""Features: write Feast source partitions, apply definitions, retrieve point-in-time rows.

Feature definitions live only in `feature_repo/`. This module writes the data behind them
(one Parquet file per source and day, rewritten atomically, so a re-run changes nothing), and
retrieves training and scoring features through the fast path of `pipelines.pit` (proven equal
to Feast's `get_historical_features`, which stays available: `features.retrieval: feast`), with
the checks Feast does not make: exactly one output row per entity row, in order, dtypes as the
feature views declare, timezone-aware timestamps only.

Every source row carries `created_timestamp`: when the value became known. A daily file replays
a feed, so a row of the file's own day was known at its event time; a row for an earlier day
that arrives in a later file (a late row or a correction) is known only when that file lands,
at the end of its day. With `features.created_timestamp_cutoff` (the default) a row at time T
sees only values known by T: a correction never leaks into rows before it arrived.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from datetime import date, timedelta
from typing import TYPE_CHECKING

import pandas as pd

from pipelines import storage
from pipelines.config import Config
from pipelines.dataset import PREDICTION_TIME, ROW_KEY, load_events, read_csv
from pipelines.dates import day_start, parse_utc
from pipelines.ingest import batch_uri
from pipelines.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore

log = logging.getLogger(__name__)
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


# feature_repo/<file> per online store (FEAST_ONLINE_STORE); both share registry and offline store.
FEAST_YAML = {"sqlite": "feature_store.yaml", "redis": "feature_store.redis.yaml"}


def online_store_kind() -> str:
    """`FEAST_ONLINE_STORE` (sqlite | redis); unset: redis if FEAST_REDIS_CONNECTION is set."""
    kind = os.environ.get("FEAST_ONLINE_STORE", "").strip().lower()
    if not kind:
        kind = "redis" if os.environ.get("FEAST_REDIS_CONNECTION", "").strip() else "sqlite"
    if kind not in FEAST_YAML:
        raise ValueError(f"FEAST_ONLINE_STORE={kind!r}: expected one of {sorted(FEAST_YAML)}")
    return kind


def feast_yaml(settings: Settings) -> str:
    """The feature_store*.yaml of the configured online store."""
    return os.path.join(settings.feature_repo, FEAST_YAML[online_store_kind()])


def feast_env(settings: Settings) -> dict[str, str]:
    """Environment that the feature_store*.yaml expands (registry and online store locations).

    Defaults: the registry beside the data (`<MLOPS_DATA_URI>/feast/registry.db`) when the data
    is in an object store, else in the local state folder (`<state>/feast`, or FEAST_STATE_DIR),
    where the SQLite online store also lives. The Redis online store needs
    FEAST_REDIS_CONNECTION (host:port,password=...,db=N).
    """
    kind = online_store_kind()
    env: dict[str, str] = {}

    def feast_dir() -> str:
        path = os.environ.get("FEAST_STATE_DIR") or f"{storage.local_path(settings.state_uri)}/feast"
        os.makedirs(path, exist_ok=True)
        return path

    registry = os.environ.get("FEAST_REGISTRY_PATH", "").strip()
    if not registry:
        registry = (f"{feast_dir()}/registry.db" if storage.is_local(settings.data_uri)
                    else storage.join(settings.data_uri, "feast", "registry.db"))
    env["FEAST_REGISTRY_PATH"] = registry
    if kind == "sqlite":
        env["FEAST_ONLINE_PATH"] = (os.environ.get("FEAST_ONLINE_PATH", "").strip()
                                    or f"{feast_dir()}/online.db")
    elif not os.environ.get("FEAST_REDIS_CONNECTION", "").strip():
        raise ValueError("FEAST_ONLINE_STORE=redis needs FEAST_REDIS_CONNECTION "
                         "(host:port,password=...,db=N)")
    endpoint = storage.s3_endpoint()
    if registry.startswith("s3://") and endpoint and not os.environ.get("FEAST_S3_ENDPOINT_URL"):
        env["FEAST_S3_ENDPOINT_URL"] = endpoint  # what Feast's S3 registry store reads
    return env


def get_store(settings: Settings) -> "FeatureStore":
    from pathlib import Path

    from feast import FeatureStore

    os.environ.update(feast_env(settings))
    return FeatureStore(repo_path=settings.feature_repo, fs_yaml_file=Path(feast_yaml(settings)))


def apply_definitions(settings: Settings) -> None:
    """`feast apply` on the feature repo (idempotent)."""
    env = {**os.environ, **feast_env(settings)}
    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    out = subprocess.run([feast, "-f", feast_yaml(settings), "apply"], cwd=settings.feature_repo,
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"feast apply failed ({out.returncode}):\n{out.stdout[-2000:]}\n"
                           f"{out.stderr[-4000:]}")


def known_at(event_ts: pd.Series, day: date) -> pd.Series:
    """Created timestamps of a daily file's rows: own-day rows at their event time, rows of
    earlier days (late rows, corrections) when the file is complete, at the end of `day`."""
    landed = pd.Timestamp(day_start(day + timedelta(days=1)))
    return event_ts.where(event_ts >= pd.Timestamp(day_start(day)), landed)


def _source_uri(settings: Settings, name: str, day: date | None) -> str:
    leaf = f"date={day.isoformat()}.parquet" if day else "snapshot.parquet"
    return storage.join(settings.features_uri, name, leaf)


def write_table_sources(cfg: Config, settings: Settings, day: date) -> list[str]:
    """Feature-source partitions for every non-event table's batch of `day` (and snapshots)."""
    written = []
    for table, source in cfg.dataset.sources.items():
        if table == cfg.dataset.events.table:
            continue
        batch_day = day if source.timestamp else None
        raw_uri = batch_uri(settings.landing_uri, table, batch_day)
        if not storage.exists(raw_uri):
            continue
        df = read_csv(raw_uri)
        if source.timestamp:
            df["event_timestamp"] = parse_utc(df[source.timestamp], f"{raw_uri}: {source.timestamp}")
            df["created_timestamp"] = known_at(df["event_timestamp"], day)
        else:
            df["event_timestamp"] = EPOCH
            df["created_timestamp"] = EPOCH
        written.append(storage.write_parquet(df, _source_uri(settings, table, batch_day)))
    return written


def compute_aggregate(events: pd.DataFrame, keys: list[str], label: str, day: date,
                      window_days: int, available_after: timedelta) -> pd.DataFrame:
    """Label share and count per key over the `window_days` days ending with `day`.

    Stamped when every outcome in the window is known: the end of `day` plus the label delay,
    so a training row at an earlier prediction time can never see it.
    """
    lo = pd.Timestamp(day_start(day - timedelta(days=window_days - 1)))
    hi = pd.Timestamp(day_start(day + timedelta(days=1)))
    window = events[(events["event_time"] >= lo) & (events["event_time"] < hi)]
    window = window[window[label].notna()]
    stats = (window.groupby(keys, observed=True)[label].agg(label_rate="mean", label_count="count")
             .reset_index())
    stamp = hi + available_after
    stats["event_timestamp"] = stamp
    stats["created_timestamp"] = stamp
    stats["label_count"] = stats["label_count"].astype("int64")
    return stats


def write_aggregate_sources(cfg: Config, settings: Settings, day: date) -> list[str]:
    written = []
    for name, agg in cfg.dataset.aggregates.items():
        events = load_events(cfg, settings.landing_uri, day - timedelta(days=agg.window_days - 1),
                             day + timedelta(days=1))
        if events.empty:
            continue
        stats = compute_aggregate(events, list(agg.keys), cfg.dataset.label.name, day,
                                  agg.window_days, cfg.dataset.label.available_after)
        written.append(storage.write_parquet(stats, _source_uri(settings, name, day)))
    return written


def build_feature_sources(cfg: Config, settings: Settings, day: date) -> list[str]:
    """All feature-source partitions for one day (idempotent)."""
    written = write_table_sources(cfg, settings, day) + write_aggregate_sources(cfg, settings, day)
    log.info("features: wrote %d source partitions for %s", len(written), day)
    return written


def build_sources_for_interval(cfg: Config, settings: Settings, day: date) -> list[str]:
    """Every source partition that features of `day` can read, whatever ran before.

    Rows of `day` read partitions stamped up to `lookback_days` earlier (aggregates are stamped
    after the label delay), so a run rewrites those too: the result does not depend on the
    order in which a backfill's runs finish. Writes are atomic and deterministic.
    """
    written: list[str] = []
    for back in range(cfg.features.source_lookback_days, -1, -1):
        written += build_feature_sources(cfg, settings, day - timedelta(days=back))
    return written


def _without_meta(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _without_meta(v) for k, v in obj.items() if k != "meta"}
    return [_without_meta(v) for v in obj] if isinstance(obj, list) else obj


def feature_service_hash(store: "FeatureStore", service_name: str) -> str:
    """Hash of the service's and its views' specs, without registry (apply) timestamps."""
    import json

    from google.protobuf.json_format import MessageToDict

    service = store.get_feature_service(service_name)
    specs = [MessageToDict(service.to_proto().spec)]
    odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
    for projection in sorted(service.feature_view_projections, key=lambda p: p.name):
        fv = odfvs.get(projection.name) or store.get_feature_view(projection.name)
        spec = fv.to_proto().spec
        if projection.name in odfvs:  # pickled UDF bytes differ per apply; its source does not
            spec.ClearField("feature_transformation")
            spec.ClearField("user_defined_function")
            specs.append({"udf": fv.feature_transformation.udf_string})
        specs.append(MessageToDict(spec))
    text = json.dumps(_without_meta(specs), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def historical_features(store: "FeatureStore", service_name: str, rows: pd.DataFrame,
                        join_keys: list[str], *, engine: str | None = None,
                        cutoff: bool | None = None) -> pd.DataFrame:
    """Point-in-time features for each row, as of its prediction time.

    Returns `rows` with the service's features (`<view>__<feature>`) appended, in the same
    order, one output row per input row; raises if the retrieval dropped or duplicated any, or
    if a feature's dtype does not match its view's schema. `engine` ("duckdb": pipelines.pit,
    "feast": get_historical_features) and `cutoff` (created-timestamp cutoff) default to
    `features.retrieval` and `features.created_timestamp_cutoff` in params.yaml.
    """
    if engine is None or cutoff is None:
        from pipelines.config import load_config

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
    out = pd.concat([rows, feats], axis=1)
    check_retrieval(out, rows, service_schema(store, service_name))
    return out


def _fast_features(store: "FeatureStore", service_name: str, entity_df: pd.DataFrame,
                   cutoff: bool) -> pd.DataFrame:
    import pyarrow as pa

    from pipelines import pit

    specs, odfvs = pit.service_views(store, service_name)
    table = pit.retrieve(entity_df, specs, PREDICTION_TIME, cutoff=cutoff)
    if odfvs:  # on-demand views: Feast's own transformation, on the same inputs Feast gives it
        table = _on_demand(table, pa.Table.from_pandas(entity_df, preserve_index=False), odfvs)
    return table.to_pandas()


def _on_demand(table: "pa.Table", base: "pa.Table", odfvs: list) -> "pa.Table":
    """`table` (the views' features) with the on-demand views' features appended, computed by
    Feast's own transformation on the entity columns (`base`) and the views' features."""
    for name in table.column_names:
        base = base.append_column(name, table[name])
    for odfv, features in odfvs:
        done = odfv.transform_arrow(base, full_feature_names=True)
        wanted = {f"{odfv.projection.name_to_use()}__{f}" for f in features}
        for col in done.column_names:  # in the transformation's order, as Feast does
            if col in wanted:
                table = table.append_column(col, done[col])
    return table


def historical_features_table(store: "FeatureStore", service_name: str, rows: "pa.Table",
                              join_keys: list[str], *, engine: str | None = None,
                              cutoff: bool | None = None) -> "pa.Table":
    """`historical_features` for entity rows held as an Arrow table, returning an Arrow table
    (batch scoring's path: no pandas round trip of the chunk; training keeps the pandas one).

    The same rows, features, values and checks: `rows` with the service's feature columns
    appended, in the same order, one output row per input row; each feature's Arrow column is
    the one `historical_features` converts to pandas, and its dtype is checked as that pandas
    column would be. With `engine="feast"` (whose retrieval is pandas anyway) it is
    `historical_features` on `rows.to_pandas()`, converted to Arrow.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines import pit

    if engine is None or cutoff is None:
        from pipelines.config import load_config

        fcfg = load_config().features
        engine = fcfg.retrieval if engine is None else engine
        cutoff = fcfg.created_timestamp_cutoff if cutoff is None else cutoff
    if engine == "feast":
        out = historical_features(store, service_name, rows.to_pandas(), join_keys,
                                  engine=engine, cutoff=cutoff)
        return pa.Table.from_pandas(out, preserve_index=False)
    if engine != "duckdb":
        raise ValueError(f"unknown retrieval engine {engine!r} (duckdb | feast)")
    at = rows[PREDICTION_TIME].type
    if not (pa.types.is_timestamp(at) and at.tz is not None):
        raise ValueError(f"{PREDICTION_TIME} must be timezone-aware (UTC); got naive timestamps")
    if pc.count_distinct(rows[ROW_KEY], mode="all").as_py() != rows.num_rows:
        raise ValueError(f"duplicate {ROW_KEY} values in the entity rows")
    entity = rows.select([ROW_KEY, PREDICTION_TIME, *join_keys])
    specs, odfvs = pit.service_views(store, service_name)
    feats = pit.retrieve_table(entity, specs, PREDICTION_TIME, cutoff=cutoff)
    if odfvs:
        feats = _on_demand(feats, entity, odfvs)
    out = rows
    for name in feats.column_names:
        out = out.append_column(name, feats[name])
    check_retrieval_table(out, rows, service_schema(store, service_name))
    return out


def _feast_features(store: "FeatureStore", service_name: str, entity_df: pd.DataFrame,
                    cutoff: bool) -> pd.DataFrame:
    service = store.get_feature_service(service_name)
    out = store.get_historical_features(entity_df=entity_df, features=service,
                                        full_feature_names=True,
                                        filter_by_created_timestamp=cutoff).to_df()
    if len(out) != len(entity_df) or out[ROW_KEY].duplicated().any():
        raise ValueError(f"feature retrieval returned {len(out)} rows for {len(entity_df)} entity "
                         f"rows ({int(out[ROW_KEY].duplicated().sum())} duplicated keys)")
    order = pd.Series(range(len(out)), index=out[ROW_KEY])
    out = out.iloc[order.reindex(entity_df[ROW_KEY]).to_numpy()].reset_index(drop=True)
    return out[feature_columns(out)]


def service_schema(store: "FeatureStore", service_name: str) -> dict[str, tuple[str, str, object]]:
    """Output column -> (view, feature, declared Feast dtype) of every feature of the service."""
    service = store.get_feature_service(service_name)
    return {f"{p.name_to_use()}__{f.name}": (p.name_to_use(), f.name, f.dtype)
            for p in service.feature_view_projections for f in p.features}


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
    """Exactly one output row per entity row, in order, and dtypes as the views declare."""
    if len(out) != len(rows) or not out[ROW_KEY].equals(rows[ROW_KEY].reset_index(drop=True)):
        raise ValueError(f"feature retrieval returned {len(out)} rows for {len(rows)} entity rows "
                         "(or not in their order)")
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
        raise TypeError("feature dtypes do not match the feature view schemas: " + "; ".join(bad))


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
    """`check_retrieval` of an Arrow retrieval (dtypes as `to_pandas()` would give them)."""
    if out.num_rows != rows.num_rows or not out[ROW_KEY].equals(rows[ROW_KEY]):
        raise ValueError(f"feature retrieval returned {out.num_rows} rows for {rows.num_rows} "
                         "entity rows (or not in their order)")
    _check_schema(out.column_names, schema, lambda col: out[col].type,
                  lambda declared, col: _arrow_dtype_ok(declared, out[col]))


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Feast feature columns (full names: `<view>__<feature>`)."""
    return [c for c in df.columns if "__" in c]
