"""Feast source partitions: one Parquet file per source table, aggregate and data interval,
rewritten atomically (a re-run changes nothing).

Every source row carries `created_timestamp`: when the value became known. An interval's file
replays a feed, so a row of the file's own interval was known at its event time; a row for an
earlier interval that arrives in a later file (a late row or a correction) is known only when
that file lands, at the end of its interval. Rolling label statistics of an interval are
stamped at its end plus `dataset.label.available_after` and count only the outcomes known by
then (each row's `label_available_at`: per row with `dataset.label.available_at`), so no row
at an earlier prediction time can see them, and none sees an outcome before it was known.

Each partition records, in its Parquet metadata, the sha256 of what it is made of: the bytes of
the raw batches it reads, the `dataset` and `features` configuration and the code that builds
it. A partition whose recorded inputs are unchanged is not rebuilt: the nightly DAGs both build
the sources of an interval (whichever runs first does the work), and every build covers the
lookback intervals again, which an earlier night already built from the same bytes. A late or
corrected batch changes the inputs of every partition that reads it, and those are rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import date, timedelta
from functools import cache
from pathlib import Path

import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.dates import parse_utc
from pipelines.core.intervals import Interval, as_interval
from pipelines.core.settings import Settings
from pipelines.data.checks import lookback
from pipelines.data.events import EVENT_TIME, LABEL_AT, instant, load_events, read_csv

log = logging.getLogger(__name__)
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
INPUTS_KEY = "mlops_inputs_sha256"  # Parquet metadata: what a partition was built from
# The code a partition's content depends on besides its inputs and configuration.
CODE = ("features/sources.py", "data/events.py", "core/expressions.py", "core/dates.py",
        "core/intervals.py", "core/storage.py")


@cache
def _code_sha256() -> str:
    root, h = Path(__file__).resolve().parents[1], hashlib.sha256()
    for rel in CODE:
        h.update(rel.encode() + (root / rel).read_bytes())
    return h.hexdigest()


def inputs_key(cfg: Config, name: str, part: Interval | None, uris: list[str]) -> str:
    """sha256 of a partition's inputs: raw batch bytes, configuration, code."""
    h = hashlib.sha256(_code_sha256().encode())
    h.update(json.dumps([name, part.label if part else None,
                         cfg.dataset.model_dump(mode="json"),
                         cfg.features.model_dump(mode="json"),
                         cfg.orchestration.model_dump(mode="json")], sort_keys=True,
                        default=str).encode())
    for uri in uris:
        h.update(uri.encode() + hashlib.sha256(storage.read_bytes(uri)).digest())
    return h.hexdigest()


def _current(uri: str, key: str) -> bool:
    return storage.parquet_metadata(uri, INPUTS_KEY) == key


def _write(df: pd.DataFrame, uri: str, key: str) -> str:
    return storage.write_parquet(df, uri, metadata={INPUTS_KEY: key})


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
        out = locations.feature_source(settings, table, batch_day)
        key = inputs_key(cfg, table, batch_day, [raw_uri])
        if _current(out, key):
            written.append(out)
            continue
        df = read_csv(raw_uri)
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
        written.append(_write(df, out, key))
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
    table = cfg.dataset.events.table
    for name, agg in cfg.dataset.aggregates.items():
        first = iv.end - timedelta(days=agg.window_days)
        lo, hi = instant(cfg, first), instant(cfg, iv.end)
        batches = [u for b in cfg.grain.between(lo.to_pydatetime(), hi.to_pydatetime())
                   if storage.exists(u := locations.batch(settings.landing_uri, table, b))]
        out, key = locations.feature_source(settings, name, iv), inputs_key(cfg, name, iv,
                                                                             batches)
        if batches and _current(out, key):
            written.append(out)
            continue
        events = load_events(cfg, settings.landing_uri, first, iv.end)
        if events.empty:
            continue
        stats = compute_aggregate(events, list(agg.keys), cfg.dataset.label.name, iv,
                                  agg.window_days, cfg.dataset.label.delay)
        written.append(_write(stats, out, key))
    return written


def build_feature_sources(cfg: Config, settings: Settings, day: Interval | date) -> list[str]:
    """All feature-source partitions for one interval (idempotent; up-to-date ones are kept)."""
    iv = cfg.grain.interval(day)
    written = write_table_sources(cfg, settings, iv) + write_aggregate_sources(cfg, settings, iv)
    log.info("features: %d source partitions for %s are up to date", len(written), iv.label)
    return written


def build_sources_for_interval(cfg: Config, settings: Settings,
                               day: Interval | date) -> list[str]:
    """Every source partition that features of an interval can read, whatever ran before.

    Rows of the interval read partitions stamped up to `features.source_lookback_days` earlier
    (aggregates are stamped after the label delay), so a run rewrites those too: the result
    does not depend on the order in which a backfill's runs finish. Writes are atomic and
    deterministic; partitions whose inputs are unchanged are kept as they are.
    """
    iv = cfg.grain.interval(day)
    written: list[str] = []
    for earlier in [*lookback(cfg, iv), iv]:
        written += build_feature_sources(cfg, settings, earlier)
    return written
