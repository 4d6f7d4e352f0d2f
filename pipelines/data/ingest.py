"""Ingest: cut upstream tables into daily raw batches in the landing zone.

Stands in for the feed that delivers one file a day in production. Batches are CSV files at
`<landing>/<table>/date=YYYY-MM-DD/<table>.csv` (reference tables: `<table>/snapshot/`),
written atomically; re-ingesting a day rewrites the same bytes.
"""

from __future__ import annotations

import logging
from datetime import date

import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.dates import date_range, parse_utc

log = logging.getLogger(__name__)


def _read_source(uri: str) -> pd.DataFrame:
    fs, path = storage.resolve(uri)
    compression = "zip" if path.endswith(".zip") else "infer"
    with fs.open(path, "rb") as fh:
        return pd.read_csv(fh, compression=compression, dtype_backend="numpy_nullable")


def ingest(cfg: Config, landing_uri: str, start: date, end: date) -> dict[str, int]:
    """Write daily batches for days in [start, end) and the reference snapshots.

    Returns the number of batch files written per table.
    """
    written: dict[str, int] = {}
    for table, source in cfg.dataset.sources.items():
        df = _read_source(source.uri)
        if source.timestamp is None:
            storage.write_bytes(locations.batch(landing_uri, table, None), df.to_csv(index=False).encode())
            written[table] = 1
            continue
        day_of_row = parse_utc(df[source.timestamp], f"{source.uri}: {source.timestamp}").dt.date
        count = 0
        for day in date_range(start, end):
            part = df[day_of_row == day]
            if part.empty:
                continue
            storage.write_bytes(locations.batch(landing_uri, table, day), part.to_csv(index=False).encode())
            count += 1
        written[table] = count
        log.info("ingest: %s -> %d daily batches in %s", table, count, landing_uri)
    return written
