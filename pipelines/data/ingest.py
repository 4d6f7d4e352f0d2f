"""Ingest: cut upstream tables into one raw batch per data interval in the landing zone.

Stands in for the feed that delivers one file per interval in production. Batches are CSV files
at `<landing>/<table>/<partition>/<table>.csv` (`date=YYYY-MM-DD` for a daily interval, see
`pipelines.core.intervals`; reference tables: `<table>/snapshot/`), written atomically;
re-ingesting an interval rewrites the same bytes. An interval without rows gets a batch too,
its header only: a quiet interval is a valid state, not a missing file.

A source whose timestamps are naive local times (`sources.<table>.timezone`) is made
timezone-aware here, once: its `timestamp` and `timestamp_columns` are written with their UTC
offset (daylight saving time applied, `sources.<table>.dst`), so every later stage reads
unambiguous times.
"""

from __future__ import annotations

import logging
from datetime import date

import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config, SourceConfig
from pipelines.core.dates import interval_keys, localize, parse_utc

log = logging.getLogger(__name__)


def _read_source(uri: str) -> pd.DataFrame:
    fs, path = storage.resolve(uri)
    compression = "zip" if path.endswith(".zip") else "infer"
    with fs.open(path, "rb") as fh:
        return pd.read_csv(fh, compression=compression, dtype_backend="numpy_nullable")


def localize_source(table: str, source: SourceConfig, df: pd.DataFrame) -> pd.DataFrame:
    """The source's naive local timestamp columns as timezone-aware values (`timezone`)."""
    if not source.local_columns:
        return df
    absent = [c for c in source.local_columns if c not in df.columns]
    if absent:
        raise ValueError(f"dataset.sources.{table}: no column {absent} in {source.uri} (its "
                         f"timestamp and timestamp_columns; columns: {list(df.columns)})")
    out = df.copy()
    for col in source.local_columns:
        out[col] = localize(df[col], source.timezone, f"{source.uri}: {table}.{col}",
                            source.dst.ambiguous, source.dst.nonexistent, source.timestamp_format)
    return out


def ingest(cfg: Config, landing_uri: str, start: date, end: date) -> dict[str, int]:
    """Write one batch per interval of the local days [start, end) (orchestration.interval
    and .timezone) and the reference snapshots; an interval without rows gets a header-only
    batch.

    Returns the number of batch files written per table.
    """
    grain = cfg.grain
    intervals = grain.days(start, end)
    written: dict[str, int] = {}
    for table, source in cfg.dataset.sources.items():
        df = localize_source(table, source, _read_source(source.uri))
        if source.timestamp is None:
            storage.write_bytes(locations.batch(landing_uri, table, None), df.to_csv(index=False).encode())
            written[table] = 1
            continue
        keys = interval_keys(parse_utc(df[source.timestamp], f"{source.uri}: {source.timestamp}"),
                             grain)
        empty = 0
        for iv in intervals:
            part = df[keys == iv.key]
            empty += part.empty
            storage.write_bytes(locations.batch(landing_uri, table, iv), part.to_csv(index=False).encode())
        written[table] = len(intervals)
        log.info("ingest: %s -> %d %s batches in %s (%d without rows)", table, len(intervals),
                 grain.kind, landing_uri, empty)
    return written
