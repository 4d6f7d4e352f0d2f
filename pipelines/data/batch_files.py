"""Reading one batch file before Great Expectations sees it: the input hardening.

A file is checked for what GX cannot report (or would report as a cascade of unrelated
failures): that it exists and is a file, its size, that it is the format its name says (CSV
or Parquet), valid UTF-8, strict CSV syntax (every record as wide as the header). Each
problem is one DataValidationError whose message names the file and the line or byte.
"""

from __future__ import annotations

import csv
import io

import pandas as pd

from pipelines.core import storage

_MB = 1024 * 1024
_PARQUET = (".parquet", ".pq")
_MAGIC = {b"PAR1": "Parquet", b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip"}


class DataValidationError(Exception):
    """A batch failed validation; the message names the file, columns, rules and example values."""


def checked_bytes(uri: str, max_file_mb: float) -> bytes:
    """The bytes of one batch file, after the existence and size checks."""
    fs, path = storage.resolve(uri)
    if fs.isdir(path):  # e.g. a Spark-style output folder landed where the file belongs
        names = storage.listdir(uri)
        found = f"holding {_clip(', '.join(names))}" if names else "empty"
        raise DataValidationError(
            f"{uri} is a directory ({found}): expected a batch file (CSV or Parquet) at this "
            "path; land the table as one file")
    try:
        n_bytes = storage.size(uri)
    except FileNotFoundError:
        raise DataValidationError(f"{uri}: file not found") from None
    if n_bytes > max_file_mb * _MB:
        raise DataValidationError(
            f"{uri} is {n_bytes / _MB:.3f} MB, above the limit of {max_file_mb} MB for one batch "
            "file (validation.max_file_mb); split the batch or raise the limit")
    data = storage.read_bytes(uri)
    if not data.strip():
        raise DataValidationError(f"{uri} is empty ({len(data)} bytes): expected a header row and "
                                  "data rows")
    return data


def parse(uri: str, data: bytes) -> pd.DataFrame:
    """The table in `data` (CSV, or Parquet by the name's extension), or a DataValidationError."""
    declared = "Parquet" if uri.lower().endswith(_PARQUET) else "CSV"
    actual = next((kind for magic, kind in _MAGIC.items() if data.startswith(magic)), "CSV")
    if actual != declared:  # e.g. a Parquet or zip file named .csv, a CSV named .parquet
        raise DataValidationError(
            f"{uri} is not the declared format: its name says {declared} but its first bytes "
            f"{data[:4]!r} are " + (f"those of a {actual} file" if actual != "CSV" else
                                    "not the PAR1 magic of a Parquet file"))
    if declared == "Parquet":
        try:
            return pd.read_parquet(io.BytesIO(data))
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataValidationError(f"{uri} is not a readable Parquet file: {exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataValidationError(
            f"{uri} is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
            f"(line {line}) cannot be decoded; re-export the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    record_start = 1
    try:  # a strict pass first: pandas would silently pad short rows with NaN
        header = next(reader)
        for row in reader:
            if row and len(row) != len(header):
                raise DataValidationError(
                    f"{uri} is not a well-formed CSV: the record at line {record_start + 1} has "
                    f"{len(row)} fields but the header has {len(header)}")
            # two files concatenated (the second perhaps with its own byte-order mark): every
            # column would read as text and fail its checks one by one
            if row[:1] and [row[0].lstrip("\ufeff"), *row[1:]] == header:
                raise DataValidationError(
                    f"{uri} is not a well-formed CSV: line {record_start + 1} repeats the header "
                    f"row ({_clip(','.join(header))}); remove it (were two exports concatenated?)")
            record_start = reader.line_num
        return pd.read_csv(io.StringIO(text), low_memory=False)
    except csv.Error as exc:
        raise DataValidationError(
            f"{uri} is not a well-formed CSV: {exc} in the record starting at line "
            f"{record_start + 1} (look for an unclosed or stray quote)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataValidationError(f"{uri} is not a well-formed CSV: {exc}") from None


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_batch(uri: str, max_file_mb: float) -> pd.DataFrame:
    """Read one batch file (CSV, or Parquet by extension) after size, encoding and syntax checks."""
    return parse(uri, checked_bytes(uri, max_file_mb))


def batch_file(table: str, batch_uri: str) -> str:
    """The batch file of `batch_uri`: `<table>.csv` in it if it is a partition folder holding
    that name, else the URI itself (`checked_bytes` says what is there if it is not a file)."""
    fs, path = storage.resolve(batch_uri)
    inside = storage.join(batch_uri, f"{table}.csv")
    return inside if fs.isdir(path) and storage.exists(inside) else batch_uri
