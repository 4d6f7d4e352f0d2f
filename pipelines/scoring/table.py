"""The published predictions, read back: one partition as a frame, or all as a DuckDB table.

Readers trust only the files a partition's manifest names: files of runs in progress or killed
are never read.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

from pipelines.core import duck, locations, storage
from pipelines.core.settings import Settings
from pipelines.data.events import ROW_KEY
from pipelines.scoring.io import read_manifest, read_table
from pipelines.scoring.parts import PROBABILITY

if TYPE_CHECKING:
    import duckdb


def read_partition(settings: Settings, day: date) -> pd.DataFrame:
    """The published predictions of `day` (only the files its manifest names)."""
    import pyarrow as pa

    manifest = read_manifest(settings, day)
    if manifest is None:
        raise FileNotFoundError(f"no published prediction partition for {day}")
    base = locations.predictions(settings, day)
    tables = [read_table(storage.join(base, f)) for f in manifest["files"]]
    return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame()


def published_files(settings: Settings, start: date | None = None,
                    end: date | None = None) -> list[str]:
    """URIs of every file a published manifest names, for days in [start, end)."""
    uris = []
    for name in storage.listdir(settings.predictions_uri):
        if not name.startswith("date="):
            continue
        day = date.fromisoformat(name[len("date="):])
        if (start and day < start) or (end and day >= end):
            continue
        manifest = read_manifest(settings, day)
        if manifest is not None:
            uris += [storage.join(settings.predictions_uri, name, f) for f in manifest["files"]]
    return uris


def predictions_relation(settings: Settings, con: duckdb.DuckDBPyConnection | None = None,
                         start: date | None = None, end: date | None = None
                         ) -> duckdb.DuckDBPyRelation:
    """The published predictions as one DuckDB relation, with a `date` column.

    A snapshot: it names the files the manifests name now; files of runs in progress or killed
    are never read. Partitions scored by versions with different inputs are unioned by name.
    """
    con = duck.connect(con)
    uris = published_files(settings, start, end)
    if not uris:
        return con.sql(f"SELECT NULL::VARCHAR AS {ROW_KEY}, NULL::DOUBLE AS {PROBABILITY}, "
                       "NULL::VARCHAR AS model_version, NULL::DATE AS date WHERE false")
    return con.read_parquet([duck.readable(con, u) for u in uris], hive_partitioning=True,
                            union_by_name=True)


def create_predictions_view(con: duckdb.DuckDBPyConnection, settings: Settings,
                            name: str = "predictions") -> None:
    """`CREATE VIEW <name>` over the published predictions (see `predictions_relation`)."""
    predictions_relation(settings, con).create_view(name, replace=True)
