"""Where a prediction partition lives, and Arrow-native Parquet I/O for its files.

Scoring reads and writes Parquet with pyarrow directly (no pandas round trip) through fsspec
URIs: `storage.resolve` gives the filesystem, writes go through `storage.write_bytes`, so they
stay atomic on local disks and object stores alike. The writer settings are fixed: the same
table always gives the same bytes (re-runs are byte-identical, part names are content hashes).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from pipelines.core import locations, storage
from pipelines.core.locations import When
from pipelines.core.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa

# Snappy: about as small as zstd on these files once low-cardinality columns are dictionary
# encoded, and cheaper to write and read.
COMPRESSION = "snappy"
# Unique per row: dictionary encoding would only be tried, found useless and thrown away.
NO_DICTIONARY = frozenset({"row_key", "probability"})


def read_manifest(settings: Settings, day: When) -> dict[str, Any] | None:
    return storage.read_json_if_exists(locations.manifest(settings, day))


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file as an Arrow table (only `columns`, if given)."""
    import pyarrow.parquet as pq

    fs, path = storage.resolve(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def parquet_bytes(table: pa.Table, statistics: list[str] | None = None) -> bytes:
    """`table` as Parquet bytes, deterministically: fixed settings, one contiguous chunk per
    column (page boundaries never depend on how the table happened to be chunked).

    `statistics`: the columns that get min/max/null-count statistics (default: all); the ones
    readers filter on are enough, and computing them for every column costs time.
    """
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    dictionary = [f.name for f in table.schema if f.name not in NO_DICTIONARY]
    pq.write_table(table.combine_chunks(), buf, compression=COMPRESSION,
                   use_dictionary=dictionary, coerce_timestamps="us",
                   allow_truncated_timestamps=False,
                   write_statistics=True if statistics is None else statistics)
    return buf.getvalue()
