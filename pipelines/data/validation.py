"""Validate landed batches before anything downstream reads them, and derived outputs before
they are published.

A batch is one file, `<landing>/<table>/date=YYYY-MM-DD/<table>.csv` (or `.../snapshot/...`).
`validate_batch` hardens the input (`pipelines.data.batch_files`: a file, size, encoding,
declared format, CSV syntax), runs the table's Great Expectations suite
(`expectations/<table>.json`, dataset-specific configuration) plus the run's timestamp checks
(`pipelines.data.timestamps`: timezone-aware, inside the interval), writes a JSON report, an
expectations report (Markdown) and GX Data Docs, and on a "fail"-policy failure moves the batch
folder to a new quarantine folder and raises `DataValidationError`. "warn"-policy failures are
logged and reported only. `validate_frame` does the same for an in-memory output (training set,
predictions) without moving anything. The code knows nothing about flights: every rule lives in
the suite files.
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import UTC, datetime

import pandas as pd

from pipelines.core import storage
from pipelines.data import drafting, rules
from pipelines.data.batch_files import (
    DataValidationError,
    batch_file,
    checked_bytes,
    parse,
    read_batch,
)

log = logging.getLogger(__name__)

_FORMAT = 2  # report layout version: 2 added the expectations report and Data Docs
_CACHE_KEYS = ("format", "table", "sha256", "suite_sha256", "interval", "timestamp_column")


def _iso(value: datetime | str | None) -> str | None:
    """UTC ISO text (as `timestamps.as_utc`: that module imports Great Expectations, and a batch
    with a passing report for the same bytes is answered without it)."""
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).isoformat()


def _stem(uri: str) -> str:
    return uri.removesuffix(".json")


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
            "expectations_report_uri": report.get("expectations_report_uri"),
            "data_docs_uri": report.get("data_docs_uri"),
            "warnings": [rules.describe(w) for w in report.get("warnings", [])][:20]}


def _new_report(table: str, uri: str, suite_dir: str, report_uri: str, timestamp_column: str | None,
                interval: tuple[datetime | None, datetime | None]) -> tuple[dict, dict]:
    suite, suite_sha = rules.load_suite(suite_dir, table)
    report = {"format": _FORMAT, "table": table, "batch_uri": uri, "suite": suite.get("name"),
              "suite_sha256": suite_sha, "timestamp_column": timestamp_column,
              "interval": [_iso(interval[0]), _iso(interval[1])], "sha256": None, "rows": None,
              "validated_at": datetime.now(UTC).isoformat(), "warnings": [], "checks": [],
              "expectations_report_uri": _stem(report_uri) + ".md", "data_docs_uri": None}
    return report, suite


def _run_checks(df: pd.DataFrame, suite: dict, report: dict, docs_uri: str, partition: str,
                interval: tuple[datetime | None, datetime | None]) -> list[dict]:
    """The suite, plus this run's timestamp checks, through GX (building this run's Data Docs)."""
    from pipelines.data import timestamps

    report["rows"] = len(df)
    if report["timestamp_column"]:
        extra = timestamps.timestamp_checks(list(df.columns), report["timestamp_column"],
                                            *interval)
        suite = {**suite, "expectations": [*suite.get("expectations", []), *extra]}
    checks, report["data_docs_uri"] = rules.run_gx(df, suite, docs_uri, asset=report["table"],
                                                   run_name=partition)
    return checks


def _conclude(report: dict, checks: list[dict]) -> None:
    failed = [c for c in checks if not c["success"]]
    report.update(checks=checks, n_checks=len(checks),
                  failures=[c for c in failed if c["on_failure"] == "fail"],
                  warnings=[c for c in failed if c["on_failure"] == "warn"])
    report["success"] = not report["failures"]
    for warning in report["warnings"]:
        log.warning("%s (%s), warn-only check: %s", report["batch_uri"], report["table"],
                    rules.describe(warning))


def _write(report: dict, report_uri: str) -> None:
    """The JSON report and the expectations report (Markdown) beside it."""
    from pipelines.data import data_docs

    storage.write_json(report_uri, report)
    storage.write_bytes(report["expectations_report_uri"],
                        data_docs.expectations_report(report).encode("utf-8"))
    log.info("%s (%s): %s; expectations report %s; Data Docs %s", report["batch_uri"],
             report["table"], "passed" if report["success"] else "FAILED",
             report["expectations_report_uri"], report["data_docs_uri"] or "none")


def _landing_partition(file_uri: str, table: str) -> str | None:
    """The partition folder holding the batch in the landing layout `<...>/<table>/<partition>/
    <file>` (the folder is the batch: it moves whole), or None for a file elsewhere."""
    folder = file_uri.rsplit("/", 1)[0]
    return folder if folder.rsplit("/", 2)[-2:-1] == [table] else None


def _quarantine(report: dict, quarantine_to: str | None) -> str:
    """Move the failed batch to its own quarantine folder, its reports beside it; says where.

    Nothing is ever overwritten: each quarantine of a batch gets a new folder (the caller stamps
    it, `locations.quarantine`), so a copy quarantined earlier stays where it is.
    """
    file_uri = report["batch_uri"]
    if not quarantine_to:
        return "the batch was left in place (no quarantine folder given)"
    if not storage.exists(file_uri):
        return f"nothing was moved to quarantine ({file_uri} does not exist)"
    dest, n = quarantine_to, 1
    while storage.exists(dest):  # the same stamp twice (a clock step back): keep both
        n += 1
        dest = f"{quarantine_to}-{n}"
    folder = _landing_partition(file_uri, report["table"])
    if folder:
        storage.move(folder, dest)
    else:  # never move a folder that is not a batch partition: only the file goes
        storage.move(file_uri, storage.join(dest, os.path.basename(file_uri)))
    from pipelines.data import data_docs

    report["quarantined_to"] = dest
    storage.write_json(storage.join(dest, "_validation.json"), report)
    storage.write_bytes(storage.join(dest, "_validation.md"),
                        data_docs.expectations_report(report).encode("utf-8"))
    return f"the batch was moved to {dest}"


def _raise(report: dict, report_uri: str, where: str) -> None:
    failures = report["failures"]
    lines = [f"- {rules.describe(f)}" for f in failures]
    docs = report["data_docs_uri"] or "none (GX did not run: the file is not a readable table)"
    raise DataValidationError(
        f"Data validation failed for {report['batch_uri']} (table {report['table']}: "
        f"{len(failures)} of {report['n_checks']} checks failed; {where}):\n" + "\n".join(lines)
        + f"\nReport: {report_uri}; expectations report: {report['expectations_report_uri']}; "
        f"Data Docs: {docs}")


def _partition(uri: str) -> str:
    """The batch's partition folder (`date=...`, `snapshot`), else the file or folder stem."""
    parts = uri.rstrip("/").rsplit("/", 2)
    parent = parts[-2] if len(parts) > 1 else ""
    return parent if "=" in parent or parent == "snapshot" else os.path.splitext(parts[-1])[0]


def validate_batch(
    table: str,
    batch_uri: str,
    suite_dir: str,
    report_uri: str,
    interval_start: datetime | None = None,
    interval_end: datetime | None = None,
    timestamp_column: str | None = None,
    max_file_mb: float = 200.0,
    quarantine_to: str | None = None,
    docs_uri: str | None = None,
) -> dict:
    """Validate one batch against `<suite_dir>/<table>.json`; returns a small XCom-able summary.

    Raises DataValidationError on any "fail"-policy failure, after moving the batch (its
    partition folder) to `quarantine_to`: a folder of its own per quarantine, named by the
    caller (`locations.quarantine`), so earlier quarantined copies are kept. Writes the JSON
    report, the expectations report (`.md` beside it) and GX Data Docs (to docs_uri; default: a
    folder beside the report). A batch whose bytes already have a passing report at report_uri
    (same suite and interval) is not validated again.
    """
    file_uri = batch_file(table, batch_uri)
    interval = (interval_start, interval_end)
    report, suite = _new_report(table, file_uri, suite_dir, report_uri, timestamp_column, interval)
    try:
        data = checked_bytes(file_uri, max_file_mb)
        report["sha256"] = hashlib.sha256(data).hexdigest()
        cached = _cached_report(report_uri, report)
        if cached is not None:
            log.info("%s: unchanged since its passing report %s; not validated again", file_uri,
                     report_uri)
            return _xcom(cached, report_uri, cached=True)
        df = parse(file_uri, data)
    except DataValidationError as exc:
        checks = [rules.input_failure("readable_batch_file", str(exc))]
    else:
        checks = _run_checks(df, suite, report, docs_uri or _stem(report_uri),
                             _partition(file_uri), interval)
    _conclude(report, checks)
    if not report["success"]:
        where = _quarantine(report, quarantine_to)
        _write(report, report_uri)
        _raise(report, report_uri, where)
    _write(report, report_uri)
    return _xcom(report, report_uri)


def validate_frame(
    name: str,
    df: pd.DataFrame,
    suite_dir: str,
    report_uri: str,
    source: str,
    timestamp_column: str | None = None,
    interval_start: datetime | None = None,
    interval_end: datetime | None = None,
    docs_uri: str | None = None,
) -> dict:
    """Validate an in-memory derived output (training set, prediction partition) with
    `<suite_dir>/<name>.json`: same checks, reports and Data Docs as a batch, no quarantine.

    `source` names the output in messages (its URI, or where it is about to be written). On a
    "fail"-policy failure raises DataValidationError; nothing is moved, and the caller must not
    publish the output.
    """
    interval = (interval_start, interval_end)
    report, suite = _new_report(name, source, suite_dir, report_uri, timestamp_column, interval)
    try:  # the columns and every row's hash; unhashable cells (lists) leave it unset
        rows = pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()
        report["sha256"] = hashlib.sha256(repr(list(df.columns)).encode() + rows).hexdigest()
    except TypeError:
        pass
    checks = _run_checks(df, suite, report, docs_uri or _stem(report_uri), _partition(source),
                         interval)
    _conclude(report, checks)
    _write(report, report_uri)
    if not report["success"]:
        _raise(report, report_uri, "a derived output: nothing was moved, and it must not be "
                                   "published or used")
    return _xcom(report, report_uri)


def draft_suite(data_uri: str, table: str, out_path: str) -> dict:
    """Profile a table and write a draft suite JSON for a human to review.

    `data_uri` is one file (CSV or Parquet) or a glob of batch files, e.g.
    `landing/<table>/date=*/<table>.csv`: with batches, how much of a column may be missing is
    learnt batch by batch (see `drafting.NULL_MARGIN`).
    """
    labels = drafting.batch_labels(drafting.batch_uris(data_uri))
    suite = drafting.profile_suite(
        {label: read_batch(uri, max_file_mb=float("inf")) for uri, label in labels.items()}, table)
    storage.write_json(out_path, suite)
    return suite
