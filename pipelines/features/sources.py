"""Feast source partitions: one Parquet file per source table, aggregate and data interval,
rewritten atomically (a re-run changes nothing).

Every source row carries `created_timestamp`: when the value became known. An interval's file
replays a feed, so a row of the file's own interval was known at its event time; a row for an
earlier interval that arrives in a later file (a late row or a correction) is known only when
that file lands, at the end of its interval. Rolling label statistics of an interval are
stamped at its end plus `dataset.label.available_after` and count only the outcomes known by
then (each row's `label_available_at`: per row with `dataset.label.available_at`), so no row
at an earlier prediction time can see them, and none sees an outcome before it was known.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.dates import parse_utc
from pipelines.core.intervals import Interval, as_interval
from pipelines.core.settings import Settings
from pipelines.data.checks import lookback
from pipelines.data.events import EVENT_TIME, LABEL_AT, load_events, read_csv

log = logging.getLogger(__name__)
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def known_at(event_ts: pd.Series, day: Interval | date) -> pd.Series:
    """Created timestamps of an interval file's rows: rows of its own interval at their event
    time, rows of earlier ones (late rows, corrections) when the file is complete, at its end.
    (A date: its daily UTC interval.)"""
    iv = as_interval(day)
    return event_ts.where(event_ts >= pd.Timestamp(iv.start), pd.Timestamp(iv.end))


def write_table_sources(cfg: Config, settings: Settings, day: Interval | date) -> list[str]:
    """Feature-source partitions for every non-event table's batch of an interval (and the
    snapshots). A batch without rows has no partition (an earlier one of it is removed)."""
    iv = cfg.grain.interval(day)
    written = []
    for table, source in cfg.dataset.sources.items():
        if table == cfg.dataset.events.table:
            continue
        batch_day = iv if source.timestamp else None
        raw_uri = locations.batch(settings.landing_uri, table, batch_day)
        if not storage.exists(raw_uri):
            continue
        df = read_csv(raw_uri)
        out = locations.feature_source(settings, table, batch_day)
        if df.empty:  # no rows: nothing to serve, and no column types to give DuckDB
            if storage.exists(out):
                storage.remove(out)
            continue
        if source.timestamp:
            df["event_timestamp"] = parse_utc(df[source.timestamp], f"{raw_uri}: {source.timestamp}")
            df["created_timestamp"] = known_at(df["event_timestamp"], iv)
        else:
            df["event_timestamp"] = EPOCH
            df["created_timestamp"] = EPOCH
        written.append(storage.write_parquet(df, out))
    return written


def compute_aggregate(events: pd.DataFrame, keys: list[str], label: str, day: Interval | date,
                      window_days: int, available_after: timedelta) -> pd.DataFrame:
    """Label share and count per key over the events of the `window_days` days ending with the
    interval `day` (a date: its daily UTC interval).

    Stamped at the interval's end plus `available_after`, and counting only the outcomes known
    by then (`label_available_at`; without that column: event time + `available_after`, all of
    the window's), so a row at an earlier prediction time never sees them, and no statistic
    holds an outcome before it was known.
    """
    iv = as_interval(day)
    hi = pd.Timestamp(iv.end)
    lo = hi - timedelta(days=window_days)
    stamp = hi + available_after
    known_at_ = events[LABEL_AT] if LABEL_AT in events.columns else \
        events[EVENT_TIME] + available_after
    window = events[(events[EVENT_TIME] >= lo) & (events[EVENT_TIME] < hi)
                    & events[label].notna() & (known_at_ <= stamp)]
    stats = (window.groupby(keys, observed=True)[label].agg(label_rate="mean", label_count="count")
             .reset_index())
    stats["event_timestamp"] = stamp
    stats["created_timestamp"] = stamp
    stats["label_count"] = stats["label_count"].astype("int64")
    return stats


def write_aggregate_sources(cfg: Config, settings: Settings, day: Interval | date) -> list[str]:
    iv = cfg.grain.interval(day)
    written = []
    for name, agg in cfg.dataset.aggregates.items():
        events = load_events(cfg, settings.landing_uri, iv.end - timedelta(days=agg.window_days),
                             iv.end)
        if events.empty:
            continue
        stats = compute_aggregate(events, list(agg.keys), cfg.dataset.label.name, iv,
                                  agg.window_days, cfg.dataset.label.delay)
        written.append(storage.write_parquet(stats, locations.feature_source(settings, name, iv)))
    return written


def build_feature_sources(cfg: Config, settings: Settings, day: Interval | date) -> list[str]:
    """All feature-source partitions for one interval (idempotent)."""
    iv = cfg.grain.interval(day)
    written = write_table_sources(cfg, settings, iv) + write_aggregate_sources(cfg, settings, iv)
    log.info("features: wrote %d source partitions for %s", len(written), iv.label)
    return written


def build_sources_for_interval(cfg: Config, settings: Settings,
                               day: Interval | date) -> list[str]:
    """Every source partition that features of an interval can read, whatever ran before.

    Rows of the interval read partitions stamped up to `features.source_lookback_days` earlier
    (aggregates are stamped after the label delay), so a run rewrites those too: the result
    does not depend on the order in which a backfill's runs finish. Writes are atomic and
    deterministic.
    """
    iv = cfg.grain.interval(day)
    written: list[str] = []
    for earlier in [*lookback(cfg, iv), iv]:
        written += build_feature_sources(cfg, settings, earlier)
    return written
