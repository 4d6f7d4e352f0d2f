"""Features: write Feast source partitions, apply definitions, retrieve point-in-time rows.

Feature definitions live only in `feature_repo/`. This module writes the data behind them
(one Parquet file per source and day, rewritten atomically, so a re-run changes nothing), and
wraps Feast retrieval with the checks Feast does not make: exactly one output row per entity
row, in order, with timezone-aware timestamps.
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
from pipelines.dates import day_start
from pipelines.ingest import batch_uri
from pipelines.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def feast_env(settings: Settings) -> dict[str, str]:
    """Environment that feature_store.yaml expands (registry and online store locations)."""
    feast_dir = os.environ.get("FEAST_STATE_DIR") or f"{storage.local_path(settings.state_uri)}/feast"
    os.makedirs(feast_dir, exist_ok=True)
    return {
        "FEAST_REGISTRY_PATH": os.environ.get("FEAST_REGISTRY_PATH", f"{feast_dir}/registry.db"),
        "FEAST_ONLINE_PATH": os.environ.get("FEAST_ONLINE_PATH", f"{feast_dir}/online.db"),
    }


def get_store(settings: Settings) -> "FeatureStore":
    from feast import FeatureStore

    os.environ.update(feast_env(settings))
    return FeatureStore(repo_path=settings.feature_repo)


def apply_definitions(settings: Settings) -> None:
    """`feast apply` on the feature repo (idempotent)."""
    env = {**os.environ, **feast_env(settings)}
    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    subprocess.run([feast, "apply"], cwd=settings.feature_repo, env=env, check=True,
                   capture_output=True, text=True)


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
            df["event_timestamp"] = pd.to_datetime(df[source.timestamp], utc=True)
            df["created_timestamp"] = pd.Timestamp(day_start(day + timedelta(days=1)))
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


def feature_service_hash(store: "FeatureStore", service_name: str) -> str:
    """Hash of the service's feature view specs (not their registry timestamps)."""
    service = store.get_feature_service(service_name)
    digest = hashlib.sha256(service.to_proto().spec.SerializeToString(deterministic=True))
    for projection in sorted(service.feature_view_projections, key=lambda p: p.name):
        fv = store.get_feature_view(projection.name)
        digest.update(fv.to_proto().spec.SerializeToString(deterministic=True))
    return digest.hexdigest()


def historical_features(store: "FeatureStore", service_name: str, rows: pd.DataFrame,
                        join_keys: list[str]) -> pd.DataFrame:
    """Point-in-time features for each row, as of its prediction time.

    Returns `rows` with the service's features appended, in the same order, one output row per
    input row; raises if Feast dropped or duplicated any.
    """
    if rows[PREDICTION_TIME].dt.tz is None:
        raise ValueError(f"{PREDICTION_TIME} must be timezone-aware (UTC); got naive timestamps")
    if rows[ROW_KEY].duplicated().any():
        raise ValueError(f"duplicate {ROW_KEY} values in the entity rows")
    entity_df = rows[[ROW_KEY, PREDICTION_TIME, *join_keys]].copy()
    service = store.get_feature_service(service_name)
    out = store.get_historical_features(entity_df=entity_df, features=service,
                                        full_feature_names=True).to_df()
    if len(out) != len(rows) or out[ROW_KEY].duplicated().any():
        raise ValueError(f"feature retrieval returned {len(out)} rows for {len(rows)} entity rows "
                         f"({out[ROW_KEY].duplicated().sum()} duplicated keys)")
    feature_cols = [c for c in out.columns if "__" in c]
    merged = rows.merge(out[[ROW_KEY, *feature_cols]], on=ROW_KEY, how="left", validate="1:1")
    return merged


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Feast feature columns (full names: `<view>__<feature>`)."""
    return [c for c in df.columns if "__" in c]


def materialize(settings: Settings, start: date, end: date) -> None:
    """Load features with timestamps in [start, end) into the online store (idempotent)."""
    store = get_store(settings)
    store.materialize(start_date=day_start(start), end_date=day_start(end))
