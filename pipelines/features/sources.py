"""Feast source partitions: one Parquet file per source table, aggregate and day, rewritten
atomically (a re-run changes nothing).

Every source row carries `created_timestamp`: when the value became known. A daily file replays
a feed, so a row of the file's own day was known at its event time; a row for an earlier day
that arrives in a later file (a late row or a correction) is known only when that file lands,
at the end of its day. Rolling label statistics are stamped only once every outcome in them is
known.

Each partition records, in its Parquet metadata, the sha256 of what it is made of: the bytes of
the raw batches it reads, the `dataset` and `features` configuration and the code that builds
it. A partition whose recorded inputs are unchanged is not rebuilt: the nightly DAGs both build
the sources of a day (whichever runs first does the work), and every build covers the lookback
days again, which an earlier night already built from the same bytes. A late or corrected batch
changes the inputs of every partition that reads it, and those are rebuilt.
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
from pipelines.core.dates import date_range, day_start, parse_utc
from pipelines.core.settings import Settings
from pipelines.data.events import load_events, read_csv

log = logging.getLogger(__name__)
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
INPUTS_KEY = "mlops_inputs_sha256"  # Parquet metadata: what a partition was built from
# The code a partition's content depends on besides its inputs and configuration.
CODE = ("features/sources.py", "data/events.py", "core/expressions.py", "core/dates.py",
        "core/storage.py")


@cache
def _code_sha256() -> str:
    root, h = Path(__file__).resolve().parents[1], hashlib.sha256()
    for rel in CODE:
        h.update(rel.encode() + (root / rel).read_bytes())
    return h.hexdigest()


def inputs_key(cfg: Config, name: str, day: date | None, uris: list[str]) -> str:
    """sha256 of a partition's inputs: raw batch bytes, configuration, code."""
    h = hashlib.sha256(_code_sha256().encode())
    h.update(json.dumps([name, str(day), cfg.dataset.model_dump(mode="json"),
                         cfg.features.model_dump(mode="json")], sort_keys=True,
                        default=str).encode())
    for uri in uris:
        h.update(uri.encode() + hashlib.sha256(storage.read_bytes(uri)).digest())
    return h.hexdigest()


def _current(uri: str, key: str) -> bool:
    return storage.parquet_metadata(uri, INPUTS_KEY) == key


def _write(df: pd.DataFrame, uri: str, key: str) -> str:
    return storage.write_parquet(df, uri, metadata={INPUTS_KEY: key})


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
        out, key = locations.feature_source(settings, table, batch_day), inputs_key(
            cfg, table, day if source.timestamp else None, [raw_uri])
        if _current(out, key):
            written.append(out)
            continue
        df = read_csv(raw_uri)
        if source.timestamp:
            df["event_timestamp"] = parse_utc(df[source.timestamp], f"{raw_uri}: {source.timestamp}")
            df["created_timestamp"] = known_at(df["event_timestamp"], day)
        else:
            df["event_timestamp"] = EPOCH
            df["created_timestamp"] = EPOCH
        written.append(_write(df, out, key))
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
    table = cfg.dataset.events.table
    for name, agg in cfg.dataset.aggregates.items():
        first = day - timedelta(days=agg.window_days - 1)
        batches = [u for d in date_range(first, day + timedelta(days=1))
                   if storage.exists(u := locations.batch(settings.landing_uri, table, d))]
        out, key = locations.feature_source(settings, name, day), inputs_key(cfg, name, day,
                                                                              batches)
        if batches and _current(out, key):
            written.append(out)
            continue
        events = load_events(cfg, settings.landing_uri, first, day + timedelta(days=1))
        if events.empty:
            continue
        stats = compute_aggregate(events, list(agg.keys), cfg.dataset.label.name, day,
                                  agg.window_days, cfg.dataset.label.available_after)
        written.append(_write(stats, out, key))
    return written


def build_feature_sources(cfg: Config, settings: Settings, day: date) -> list[str]:
    """All feature-source partitions for one day (idempotent; up-to-date ones are kept)."""
    written = write_table_sources(cfg, settings, day) + write_aggregate_sources(cfg, settings, day)
    log.info("features: %d source partitions for %s are up to date", len(written), day)
    return written


def build_sources_for_interval(cfg: Config, settings: Settings, day: date) -> list[str]:
    """Every source partition that features of `day` can read, whatever ran before.

    Rows of `day` read partitions stamped up to `lookback_days` earlier (aggregates are stamped
    after the label delay), so a run rewrites those too: the result does not depend on the
    order in which a backfill's runs finish. Writes are atomic and deterministic; partitions
    whose inputs are unchanged are kept as they are.
    """
    written: list[str] = []
    for back in range(cfg.features.source_lookback_days, -1, -1):
        written += build_feature_sources(cfg, settings, day - timedelta(days=back))
    return written
