"""Feast source partitions: one Parquet file per source table, aggregate and day, rewritten
atomically (a re-run changes nothing).

Every source row carries `created_timestamp`: when the value became known. A daily file replays
a feed, so a row of the file's own day was known at its event time; a row for an earlier day
that arrives in a later file (a late row or a correction) is known only when that file lands,
at the end of its day. Rolling label statistics are stamped only once every outcome in them is
known.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.dates import day_start, parse_utc
from pipelines.core.settings import Settings
from pipelines.data.events import load_events, read_csv

log = logging.getLogger(__name__)
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def known_at(event_ts: pd.Series, day: date) -> pd.Series:
    """Created timestamps of a daily file's rows: own-day rows at their event time, rows of
    earlier days (late rows, corrections) when the file is complete, at the end of `day`."""
    landed = pd.Timestamp(day_start(day + timedelta(days=1)))
    return event_ts.where(event_ts >= pd.Timestamp(day_start(day)), landed)


def write_table_sources(cfg: Config, settings: Settings, day: date) -> list[str]:
    """Feature-source partitions for every non-event table's batch of `day` (and snapshots)."""
    written = []
    for table, source in cfg.dataset.sources.items():
        if table == cfg.dataset.events.table:
            continue
        batch_day = day if source.timestamp else None
        raw_uri = locations.batch(settings.landing_uri, table, batch_day)
        if not storage.exists(raw_uri):
            continue
        df = read_csv(raw_uri)
        if source.timestamp:
            df["event_timestamp"] = parse_utc(df[source.timestamp], f"{raw_uri}: {source.timestamp}")
            df["created_timestamp"] = known_at(df["event_timestamp"], day)
        else:
            df["event_timestamp"] = EPOCH
            df["created_timestamp"] = EPOCH
        written.append(storage.write_parquet(df, locations.feature_source(settings, table, batch_day)))
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
        written.append(storage.write_parquet(stats, locations.feature_source(settings, name, day)))
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
