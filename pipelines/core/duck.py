"""DuckDB connections, set up one way for every stage that queries Parquet with it (the
point-in-time join, the Feast offline store, prediction partitions).

Remote files (s3://...) are read through the fsspec filesystem `pipelines.core.storage`
configures, registered on the connection: DuckDB's own httpfs extension would be downloaded
from the internet at first use and configured separately.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.core import storage

if TYPE_CHECKING:
    import duckdb


def connect(con: duckdb.DuckDBPyConnection | None = None, *, memory_limit: str | None = None,
            spill_dir: str | None = None, threads: int | None = None,
            ordered: bool = True) -> duckdb.DuckDBPyConnection:
    """A connection (new, or `con` set up): UTC session time zone, no progress bar; with
    `memory_limit` it spills beyond it into `spill_dir` (never the working directory);
    `ordered=False` lets DuckDB reorder rows when nothing depends on their order."""
    import duckdb

    con = con or duckdb.connect()
    settings = ["SET TimeZone = 'UTC'", "SET enable_progress_bar = false"]
    if memory_limit:
        settings.append(f"SET memory_limit = '{memory_limit}'")
    if spill_dir:
        settings.append(f"SET temp_directory = '{spill_dir}'")
    if threads:
        settings.append(f"SET threads = {int(threads)}")
    if not ordered:
        settings.append("SET preserve_insertion_order = false")
    for sql in settings:
        con.execute(sql).fetchall()
    return con


def readable(con: duckdb.DuckDBPyConnection, uri: str) -> str:
    """What DuckDB reads for `uri`: a local path as it is, a remote URI through the fsspec
    filesystem registered on `con` (once per protocol)."""
    if storage.is_local(uri):
        return storage.resolve(uri)[1]
    fs = storage.filesystem(storage.protocol_of(uri))
    names = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if not any(con.filesystem_is_registered(n) for n in names):
        con.register_filesystem(fs)
    return uri
