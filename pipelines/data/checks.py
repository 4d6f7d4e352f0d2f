"""Validation gates of the lifecycle: a day's raw batches, the reference snapshots, and the derived
outputs (training sets, prediction partitions) before anything uses them.

Where the reports go (all under the reports URI, local or object store):

    validation/<table>/date=D.json | .md     JSON report and expectations report per batch
                                             (date=D: the interval's partition name)
    validation/training_set/<start>_<end>.json | .md,  validation/predictions/date=D.json | .md
    data_docs/<name>/<partition>/index.html  GX Data Docs site per batch or output

A raw batch that fails is moved out of the landing zone to its own folder under the data URI,
`quarantine/<table>/<partition>/<UTC stamp>/` (`locations.quarantine`), with `_validation.json`
and `_validation.md` beside it; quarantining the same batch again adds a folder, never replaces.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing.context
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.intervals import Interval
from pipelines.core.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TRAINING_SET, PREDICTIONS = "training_set", "predictions"  # suite names of the derived outputs
EVENT_TIME = "event_time"  # pipelines.data.events: the event's own timestamp in model rows
VALIDATION_LOCK_S = 3600.0  # longest wait for another run's validation of the same batch
# A window with this many batches never validated gets helper processes (`validate_days`): at
# about 0.6 s a batch here, 48 are 30 s of work on one process. Below it the saving is ~10 s
# at most, which a busy 2-core host loses to the helper's start-up (~4 s of imports).
HELPERS_FROM_BATCHES = 48


def _uris(settings: Settings, name: str, partition: str) -> dict[str, str]:
    return {"report_uri": locations.validation_report(settings, name, partition),
            "docs_uri": locations.data_docs(settings, name, partition)}


def _stamp() -> str:
    """When a quarantine happens (UTC, to the microsecond): it names a folder, not data, so it
    is the wall clock, not the run's logical date; a re-run of the same day gets a new one."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _validate_landed(cfg: Config, settings: Settings, table: str,
                     iv: Interval | None) -> dict[str, Any]:
    """`validate_batch` of one landed batch (iv None: the table's snapshot), holding the
    batch's lock (`locks.named_lock` on its report URI): runs that read the same batch at once
    (a catch-up's nights, batch scoring beside feature materialisation) validate it once, and
    the others find its passing report for the same bytes and reuse it; nor can two of them
    quarantine it at once. Absent is checked under the lock: a batch another run has just
    quarantined is absent, and the error names its report."""
    from pipelines.core.locks import named_lock
    from pipelines.data.validation import DataValidationError, validate_batch

    uri = locations.batch(settings.landing_uri, table, iv)
    partition = locations.partition(iv)
    uris = _uris(settings, table, partition)
    when = iv.key if iv else "the snapshot"
    # the wait is one validation of this batch (the largest file allowed may take minutes)
    with named_lock(settings, f"validate:{uris['report_uri']}", timeout=VALIDATION_LOCK_S):
        if not storage.exists(uri):
            report = uris["report_uri"]
            last = f" (its last report: {report})" if storage.exists(report) else ""
            raise DataValidationError(f"{uri}: no {table} batch has landed for {when}{last}")
        return validate_batch(
            table=table, batch_uri=uri, suite_dir=settings.expectations_dir,
            interval_start=iv.start if iv else None, interval_end=iv.end if iv else None,
            timestamp_column=cfg.dataset.sources[table].timestamp if iv else None,
            max_file_mb=cfg.validation.max_file_mb,
            quarantine_to=locations.quarantine(settings, table, partition, _stamp()), **uris)


def validate_day(cfg: Config, settings: Settings, day: Interval | date,
                 tables: list[str] | None = None) -> list[dict[str, Any]]:
    """Validate the interval's batch of each interval table; raises DataValidationError on a
    bad one. (`day`: an interval, or a date: the interval holding its local midnight.)

    Every table is checked (each bad batch quarantined, each absent one noted) before the error
    is raised, so one run names every problem of the interval, absent batches included. A
    header-only batch (an interval without rows) is a batch like any other: its suite says
    whether none is acceptable (expect_table_row_count_to_be_between).
    """
    from pipelines.data.validation import DataValidationError

    iv = cfg.grain.interval(day)
    tables = tables or cfg.dataset.daily_tables
    results, errors = [], {}
    for table in tables:
        try:
            results.append(_validate_landed(cfg, settings, table, iv))
        except DataValidationError as exc:
            errors[table] = str(exc)
    if errors:
        raise DataValidationError(
            f"{iv.key}: {len(errors)} of {len(tables)} tables failed validation "
            f"({', '.join(errors)}):\n\n" + "\n\n".join(errors.values()))
    return results


def validate_days(cfg: Config, settings: Settings, days: list[tuple[Interval, list[str]]], *,
                  helpers_from: int = HELPERS_FROM_BATCHES) -> list[dict[str, Any]]:
    """`validate_day` of each (interval, tables) of a window, in order.

    Every interval is validated (each bad batch quarantined) before the one DataValidationError
    that names all the failed intervals is raised, so one run names every problem of the
    window. A batch with a passing report for the same bytes is not validated again.

    With `helpers_from` or more batches that have no report yet (a window nobody has read),
    `settings.validation_workers - 1` helper processes validate days beside this one (see
    `_outcomes_with_helpers`); the reports, quarantines, results and error are the same.
    """
    from pipelines.data.validation import DataValidationError

    helpers = settings.validation_workers - 1
    if helpers > 0 and len(days) > 1 and _unreported(settings, days) >= helpers_from \
            and _may_start_helpers():
        outcomes = _outcomes_with_helpers(cfg, settings, days, helpers)
    else:
        outcomes = [_day_outcome(cfg, settings, iv, tables) for iv, tables in days]
    results: list[dict[str, Any]] = []
    failed: list[tuple[Interval, str]] = []
    for (iv, _), (passed, error) in zip(days, outcomes, strict=True):
        results += passed
        failed += [(iv, error)] if error is not None else []
    if failed:
        shown = 3
        more = (f"\n\n... and {len(failed) - shown} more intervals: "
                f"{', '.join(iv.key for iv, _ in failed[shown:])}" if len(failed) > shown else "")
        raise DataValidationError(
            f"{len(failed)} of {len(days)} intervals failed validation "
            f"({', '.join(iv.key for iv, _ in failed)}):\n\n"
            + "\n\n".join(error for _, error in failed[:shown]) + more)
    return results


def _day_outcome(cfg: Config, settings: Settings, iv: Interval, tables: list[str]
                 ) -> tuple[list[dict[str, Any]], str | None]:
    """`validate_day`'s results, or its DataValidationError's message (the bad batches are
    quarantined: the window goes on to the next day). Any other error propagates."""
    from pipelines.data.validation import DataValidationError

    try:
        return validate_day(cfg, settings, iv, tables), None
    except DataValidationError as exc:
        return [], str(exc)


def _may_start_helpers() -> bool:
    """Whether this process may start processes: not a daemonic one (a Celery prefork
    worker's task runs in one; there the workers are the parallelism)."""
    if multiprocessing.current_process().daemon:
        log.info("validating in this process only: it is a daemonic worker process, which "
                 "may not start helpers")
        return False
    return True


def _unreported(settings: Settings, days: list[tuple[Interval, list[str]]]) -> int:
    """How many of the days' batches have no validation report (one listing per folder)."""
    reports = [locations.validation_report(settings, t, locations.partition(iv))
               for iv, ts in days for t in ts]
    listed = {folder: set(storage.listdir(folder))
              for folder in {r.rsplit("/", 1)[0] for r in reports}}
    return sum(name not in listed[folder]
               for folder, name in (r.rsplit("/", 1) for r in reports))


def _outcomes_with_helpers(cfg: Config, settings: Settings,
                           days: list[tuple[Interval, list[str]]], helpers: int
                           ) -> list[tuple[list[dict[str, Any]], str | None]]:
    """Each day's `_day_outcome`, validated by this process and `helpers` others at once.

    GX validation is pure Python, one core per process: the demo's 59-day window took 69 s
    in one process and 42 s in two. The helpers are fresh interpreters (spawn: nothing forked
    from a task process with threads, sockets and GX state). Each is fed one day at a time
    from the front of the window by a thread of this process, which itself takes days from
    the back, so each does as many as it can, whatever a helper's start-up costs. Each batch is
    still validated under its own lock, and the outcomes come back in the window's order. A
    helper's log lines are logged by this process (in a task's log at their own level, not
    as stderr), marked with its pid. If a helper dies, the days it left are validated here.
    """
    import threading
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    outcomes: list[Any] = [None] * len(days)
    ends, lock = [0, len(days)], threading.Lock()  # the next front day, the end of the rest
    left: list[int] = []  # days a dead helper did not do
    errors: list[BaseException] = []  # a feeder's error, raised here

    def claim(front: bool) -> int | None:
        with lock:
            if ends[0] >= ends[1]:
                return None
            ends[0 if front else 1] += 1 if front else -1
            return ends[0] - 1 if front else ends[1]

    def stop() -> None:
        with lock:
            ends[1] = ends[0]

    def feed(pool: ProcessPoolExecutor) -> None:
        try:
            while (i := claim(front=True)) is not None:
                try:
                    outcomes[i] = pool.submit(_day_outcome, cfg, settings, *days[i]).result()
                except BrokenProcessPool as exc:
                    log.warning("a validation helper stopped (%s); its days are validated "
                                "here", exc)
                    left.append(i)
                    return
        except BaseException as exc:  # noqa: BLE001 (an error validating a day: the task's)
            errors.append(exc)
            stop()

    context = _HelperContext()
    records = context.Queue()  # the helpers' log records, logged here
    relay = logging.handlers.QueueListener(records, _Relay())
    relay.start()
    try:
        with ProcessPoolExecutor(max_workers=helpers, mp_context=context,
                                 initializer=_helper_logging, initargs=(records,)) as pool:
            feeders = [threading.Thread(target=feed, args=(pool,), daemon=True,
                                        name=f"validation-helper-{n}") for n in range(helpers)]
            for feeder in feeders:
                feeder.start()
            here = 0
            try:
                while (i := claim(front=False)) is not None:
                    outcomes[i], here = _day_outcome(cfg, settings, *days[i]), here + 1
            except BaseException:
                stop()
                raise
            finally:
                for feeder in feeders:
                    feeder.join()
    finally:
        relay.stop()  # after the helpers have exited: every record they put is logged
    if errors:
        raise errors[0]
    for i in left:
        outcomes[i], here = _day_outcome(cfg, settings, *days[i]), here + 1
    log.info("validated %d days: %d in this process, %d in %d helper(s)",
             len(days), here, len(days) - here, helpers)
    return outcomes


class _HelperProcess(multiprocessing.context.SpawnProcess):
    def start(self) -> None:
        """Started with a bare `__main__` (only `multiprocessing` reads it meanwhile)."""
        import sys
        import types

        main, sys.modules["__main__"] = sys.modules["__main__"], types.ModuleType("__main__")
        try:
            super().start()
        finally:
            sys.modules["__main__"] = main


class _HelperContext(multiprocessing.context.SpawnContext):
    """Spawn, without the parent's main script: a spawned child runs it again (as
    `__mp_main__`) unless the parent has none, and an Airflow task's is the `airflow` console
    script, which fails there (the task process's masked database URL). The helpers need
    nothing from it: what they run is importable from `pipelines`."""
    Process = _HelperProcess


def _helper_logging(records: Any) -> None:
    """A helper's logging: the project's lines (INFO and up) and others' warnings, put on the
    queue its parent logs from (`_Relay`), marked with the helper's pid."""
    handler = logging.handlers.QueueHandler(records)
    handler.setFormatter(logging.Formatter("[validation helper %(process)d] %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("pipelines").setLevel(logging.INFO)


class _Relay(logging.Handler):
    """A helper's log record, handed to this process's logger of the same name: it reaches
    the same handlers as this process's own lines (an Airflow task's log, as its level)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def validate_snapshots(cfg: Config, settings: Settings) -> list[dict[str, Any]]:
    return [_validate_landed(cfg, settings, table, None)
            for table, source in cfg.dataset.sources.items() if not source.timestamp]


def lookback(cfg: Config, iv: Interval) -> list[Interval]:
    """The intervals before `iv` whose batches its features read (features.source_lookback_days
    before its start), oldest first."""
    return cfg.grain.between(iv.start - timedelta(days=cfg.features.source_lookback_days),
                             iv.start)


def validate_interval(cfg: Config, settings: Settings, day: Interval | date) -> list[dict[str, Any]]:
    """Validate every raw batch a run for an interval reads: its own and the feature-source
    lookback's (those that have landed)."""
    iv = cfg.grain.interval(day)
    results = []
    for earlier in lookback(cfg, iv):
        present = [t for t in cfg.dataset.daily_tables
                   if storage.exists(locations.batch(settings.landing_uri, t, earlier))]
        results += validate_day(cfg, settings, earlier, present) if present else []
    return results + validate_day(cfg, settings, iv)


def validate_training_set(cfg: Config, settings: Settings,
                          training_set: dict[str, Any]) -> dict[str, Any]:
    """Validate a training set written by `build_training_set` (pass its returned dict).

    Suite `expectations/training_set.json`; event times must lie in [start, end). Raises
    DataValidationError on failure: do not train on it.
    """
    from pipelines.data.validation import validate_frame

    uri, start, end = training_set["uri"], training_set["start"], training_set["end"]
    return validate_frame(
        TRAINING_SET, storage.read_parquet(uri), settings.expectations_dir, source=uri,
        timestamp_column=EVENT_TIME, interval_start=cfg.grain.bound(start),
        interval_end=cfg.grain.bound(end), **_uris(settings, TRAINING_SET, f"{start}_{end}"))


def validate_predictions(cfg: Config, settings: Settings, day: Interval | date,
                         predictions: pd.DataFrame | list[str] | None = None) -> dict[str, Any]:
    """Validate `day`'s predictions before they are published: pass the frame, or the URIs of
    the part files written but not yet named by a manifest. On DataValidationError do not write
    the manifest. With `predictions=None` the published partition (its manifest's files) is read.

    Suite `expectations/predictions.json`; event times must lie inside the interval.
    """
    import pandas as pd

    from pipelines.data.validation import validate_frame

    day = cfg.grain.interval(day)
    source = locations.predictions(settings, day)
    if predictions is None:
        manifest = storage.read_json(locations.manifest(settings, day))
        predictions = [storage.join(source, name) for name in manifest["files"]]
    if not isinstance(predictions, pd.DataFrame):
        predictions = pd.concat([storage.read_parquet(uri) for uri in predictions],
                                ignore_index=True)
    return validate_frame(
        PREDICTIONS, predictions, settings.expectations_dir, source=source,
        timestamp_column=EVENT_TIME, interval_start=day.start, interval_end=day.end,
        **_uris(settings, PREDICTIONS, locations.partition(day)))
