"""Validate landed batches before anything downstream reads them.

A batch is one file, `<landing>/<table>/date=YYYY-MM-DD/<table>.csv` (or `.../snapshot/...`).
`validate_batch` hardens the input (size, encoding, CSV syntax), runs the table's Great
Expectations suite (`expectations/<table>.json`, dataset-specific configuration) plus timestamp
checks done in code, writes a summary report, and on a "fail"-policy failure moves the batch
folder to quarantine and raises `DataValidationError`. "warn"-policy failures are logged and
reported only. The code knows nothing about flights: every rule lives in the suite files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from datetime import datetime, timezone

import pandas as pd

from pipelines import storage
from pipelines import validation_rules as rules

log = logging.getLogger(__name__)

_MB = 1024 * 1024
_PARQUET = (".parquet", ".pq")
_CACHE_KEYS = ("table", "sha256", "suite_sha256", "interval", "timestamp_column")


class DataValidationError(Exception):
    """A batch failed validation; the message names the file, columns, rules and example values."""


def _checked_bytes(uri: str, max_file_mb: float) -> bytes:
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


def _parse(uri: str, data: bytes) -> pd.DataFrame:
    if uri.lower().endswith(_PARQUET):
        try:
            return pd.read_parquet(io.BytesIO(data))
        except Exception as exc:
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
            record_start = reader.line_num
        return pd.read_csv(io.StringIO(text), low_memory=False)
    except csv.Error as exc:
        raise DataValidationError(
            f"{uri} is not a well-formed CSV: {exc} in the record starting at line "
            f"{record_start + 1} (look for an unclosed or stray quote)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataValidationError(f"{uri} is not a well-formed CSV: {exc}") from None


def read_batch(uri: str, max_file_mb: float) -> pd.DataFrame:
    """Read one batch file (CSV, or Parquet by extension) after size, encoding and syntax checks."""
    return _parse(uri, _checked_bytes(uri, max_file_mb))


def _batch_file(table: str, batch_uri: str) -> str:
    fs, path = storage.resolve(batch_uri)
    return storage.join(batch_uri, f"{table}.csv") if fs.isdir(path) else batch_uri


def _iso(value: datetime | str | None) -> str | None:
    return None if value is None else rules.as_utc(value).isoformat()


def _cached_report(report_uri: str, report: dict) -> dict | None:
    """The earlier report at report_uri if it passed on the same bytes, suite and interval."""
    try:
        old = storage.read_json(report_uri) if storage.exists(report_uri) else None
    except (ValueError, OSError):
        return None
    if old and old.get("success") and all(old.get(k) == report.get(k) for k in _CACHE_KEYS):
        return old
    return None


def _xcom(report: dict, report_uri: str, cached: bool = False) -> dict:
    return {"table": report["table"], "batch_uri": report["batch_uri"], "rows": report.get("rows"),
            "success": bool(report["success"]), "report_uri": report_uri, "cached": cached,
            "warnings": [rules.describe(w) for w in report.get("warnings", [])][:20]}


def _reject(report: dict, report_uri: str, quarantine_uri: str | None) -> None:
    """Write the report, move the batch folder to quarantine (with the report beside it), raise."""
    file_uri, failures, table = report["batch_uri"], report["failures"], report["table"]
    folder = file_uri.rsplit("/", 1)[0]
    # the landing layout <...>/<table>/<partition>/<file>: the partition folder is the batch
    partitioned = folder.rsplit("/", 2)[-2:-1] == [table]
    where = "the batch was left in place (no quarantine configured)"
    if quarantine_uri and storage.exists(file_uri):
        dest = storage.join(quarantine_uri, table,
                            os.path.basename(folder) if partitioned else "unpartitioned")
        storage.remove(dest, recursive=True)  # an older quarantined copy of the same batch
        if partitioned:
            storage.move(folder, dest)
        else:  # never move a folder that is not a batch partition: only the file goes
            storage.move(file_uri, storage.join(dest, os.path.basename(file_uri)))
        report["quarantined_to"] = dest
        storage.write_json(storage.join(dest, "_validation.json"), report)
        where = f"the batch was moved to {dest}"
    storage.write_json(report_uri, report)
    lines = [f"- {rules.describe(f)}" for f in failures]
    raise DataValidationError(
        f"Data validation failed for {file_uri} (table {report['table']}: {len(failures)} of "
        f"{report['n_checks']} checks failed; {where}; report at {report_uri}):\n" + "\n".join(lines))


def validate_batch(
    table: str,
    batch_uri: str,
    suite_dir: str,
    report_uri: str,
    interval_start: datetime | None = None,
    interval_end: datetime | None = None,
    timestamp_column: str | None = None,
    max_file_mb: float = 200.0,
    quarantine_uri: str | None = None,
) -> dict:
    """Validate one batch against `<suite_dir>/<table>.json`; returns a small XCom-able summary.

    Raises DataValidationError (after quarantining the batch folder) on any "fail"-policy
    failure. A batch whose bytes already have a passing report at report_uri (same suite and
    interval) is not validated again.
    """
    file_uri = _batch_file(table, batch_uri)
    suite, suite_sha = rules.load_suite(suite_dir, table)
    report: dict = {
        "table": table, "batch_uri": file_uri, "suite": suite.get("name"),
        "suite_sha256": suite_sha, "timestamp_column": timestamp_column,
        "interval": [_iso(interval_start), _iso(interval_end)], "sha256": None, "rows": None,
        "validated_at": datetime.now(timezone.utc).isoformat(), "warnings": [], "checks": []}
    df, checks = None, []
    try:
        data = _checked_bytes(file_uri, max_file_mb)
        report["sha256"] = hashlib.sha256(data).hexdigest()
        cached = _cached_report(report_uri, report)
        if cached is not None:
            log.info("%s: unchanged since its passing report %s; not validated again", file_uri,
                     report_uri)
            return _xcom(cached, report_uri, cached=True)
        df = _parse(file_uri, data)
    except DataValidationError as exc:
        checks = [rules.input_failure("readable_batch_file", str(exc))]
    if df is not None:
        report["rows"] = len(df)
        checks = rules.run_gx(df, suite)
        if timestamp_column:
            checks += rules.timestamp_checks(df, timestamp_column, interval_start, interval_end)
    failed = [c for c in checks if not c["success"]]
    report.update(checks=checks, n_checks=len(checks),
                  failures=[c for c in failed if c["on_failure"] == "fail"],
                  warnings=[c for c in failed if c["on_failure"] == "warn"])
    report["success"] = not report["failures"]
    for warning in report["warnings"]:
        log.warning("%s (table %s), warn-only check: %s", file_uri, table, rules.describe(warning))
    if not report["success"]:
        _reject(report, report_uri, quarantine_uri)
    storage.write_json(report_uri, report)
    return _xcom(report, report_uri)


def draft_suite(data_uri: str, table: str, out_path: str) -> dict:
    """Profile a table (CSV or Parquet) and write a draft suite JSON for a human to review."""
    suite = rules.profile_suite(read_batch(data_uri, max_file_mb=float("inf")), table)
    storage.write_json(out_path, suite)
    return suite
