"""The prediction log: every online prediction, stored as batch predictions are.

A row is a prediction partition's row (`scoring.parts.part_table`: row key, times, the model
inputs as scored, probability, model name and version) plus `scoring.table.LOG_COLUMNS`
(request id, variant, latency, when served), so `scoring.table.read_log` returns what
`read_partition` returns for the same rows. Requests only hand their rows over; a background
thread per worker writes them, partitioned by the events' UTC day
(`core.locations.prediction_log`), whenever `serving.log.batch_rows` rows wait and at least
every MLOPS_SERVING_LOG_FLUSH_SECONDS, and on shutdown. Each part is written atomically
(`storage.write_bytes`), so readers never see half a part. A write that fails is logged and
retried at the next flush; past `MAX_PENDING_BATCHES` batches waiting, the oldest rows are
dropped and counted (`serving_prediction_log_rows{status="dropped"}`), never the server.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core import locations, storage
from pipelines.core.settings import Settings
from pipelines.scoring.io import parquet_bytes
from pipelines.serving import metrics

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.scoring.inputs import ModelInputs

log = logging.getLogger(__name__)
MAX_PENDING_BATCHES = 50
# a shadow's (alias, version, probabilities or None, status) for the log record
Shadowed = tuple[str, str, "np.ndarray | None", str]


@dataclass(frozen=True)
class LogRecord:
    """A request's rows as the prediction log takes them over: its model inputs as scored,
    probabilities and version (`ServedModel.described`), request id, the variant (alias) that
    answered, latency, when served, and a shadow's (alias, version, probabilities or None,
    status). Turned into Arrow rows by the log's thread (`log_table`), many requests at once."""
    inputs: ModelInputs
    probabilities: np.ndarray
    model: dict[str, Any]
    request_id: str
    variant: str
    latency_s: float
    served_at: datetime
    shadow: Shadowed | None = None

    def __len__(self) -> int:
        return len(self.inputs)


def log_table(records: list[LogRecord]) -> pa.Table:
    """Requests' rows (answered by one model version) as prediction-log rows: the partition's
    columns (`scoring.parts.part_table` of all their inputs at once) + LOG_COLUMNS, each row
    its request's."""
    import pyarrow as pa

    from pipelines.scoring.inputs import ModelInputs
    from pipelines.scoring.parts import part_table
    from pipelines.scoring.table import LOG_COLUMNS

    rows = [len(r) for r in records]
    table = part_table(ModelInputs.concat([r.inputs for r in records]),
                       np.concatenate([r.probabilities for r in records]), records[0].model)
    each = pa.array(np.repeat(np.arange(len(records)), rows))  # row -> its request

    def per_request(values: list[Any], kind: pa.DataType) -> pa.Array:
        return pa.array(values, kind).take(each)

    shadows = [r.shadow or (None, None, None, None) for r in records]
    shadow_p = [np.full(n, np.nan) if p is None else np.asarray(p, dtype=np.float64)
                for (_, _, p, _), n in zip(shadows, rows)]
    extra = [per_request([r.request_id for r in records], pa.string()),
             per_request([r.variant for r in records], pa.string()),
             per_request([round(r.latency_s * 1000, 3) for r in records], pa.float64()),
             per_request([r.served_at for r in records], pa.timestamp("us", tz="UTC")),
             per_request([s[0] for s in shadows], pa.string()),
             per_request([s[1] for s in shadows], pa.string()),
             pa.array(np.concatenate(shadow_p), pa.float64(), mask=np.concatenate(
                 [np.full(n, s[2] is None) for s, n in zip(shadows, rows)])),
             per_request([s[3] for s in shadows], pa.string())]
    for name, column in zip(LOG_COLUMNS, extra):
        table = table.append_column(name, column)
    return table


class PredictionLog:
    """A worker's buffer of prediction-log rows and the thread that writes them."""

    def __init__(self, settings: Settings, batch_rows: int, flush_seconds: float) -> None:
        self.settings, self.batch_rows, self.flush_seconds = settings, batch_rows, flush_seconds
        self._pending: list[LogRecord | pa.Table] = []  # tables: rows of a failed write
        self._rows, self._seq = 0, 0
        self._lock, self._wake, self._stop = threading.Lock(), threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._origin = f"{socket.gethostname()}-{os.getpid()}"

    def start(self) -> None:
        self._thread.start()

    def append(self, record: LogRecord) -> None:
        """Hand a request's rows over (never blocks on storage; made into Arrow rows by this
        log's thread, with the other requests' of its flush: one table per flush, not one per
        request, keeps the request path and the flush short)."""
        with self._lock:
            self._pending.append(record)
            self._rows += len(record)
            full = self._rows >= self.batch_rows
        metrics.LOG_PENDING.inc(len(record))
        if full:
            self._wake.set()

    def close(self) -> None:
        """Stop the thread and write what is left (a failure is logged, as at any flush)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=60)
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if not self._stop.is_set():
                self.flush()

    def flush(self) -> int:
        """Write every waiting row, one part per event day and model version; returns the
        rows written (parts that fail wait for the next flush)."""
        with self._lock:
            batches, self._pending, self._rows = self._pending, [], 0
        parts, written = self._parts(batches), 0
        for i, (folder, table) in enumerate(parts):
            self._seq += 1
            name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{self._origin}-{self._seq:06d}.parquet"
            try:
                storage.write_bytes(storage.join(folder, name), parquet_bytes(table))
            except Exception:  # noqa: BLE001 - storage trouble must not take the server down
                left = [t for _, t in parts[i:]]
                log.exception("prediction log: writing %d rows to %s failed; retried at the "
                              "next flush", sum(t.num_rows for t in left), folder)
                self._requeue(left)
                break
            written += table.num_rows
            metrics.LOG_PENDING.dec(table.num_rows)
            metrics.LOG_ROWS.labels("written").inc(table.num_rows)
        return written

    def _parts(self, batches: list[LogRecord | pa.Table]) -> list[tuple[str, pa.Table]]:
        """(folder, rows) per event day and model version (one schema per part)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        built: dict[str, list[pa.Table]] = {}
        records: dict[str, list[LogRecord]] = {}
        for item in batches:
            if isinstance(item, LogRecord):
                records.setdefault(str(item.model["version"]), []).append(item)
            else:
                built.setdefault(item["model_version"][0].as_py(), []).append(item)
        for version, same in records.items():
            try:
                built.setdefault(version, []).append(log_table(same))
            except Exception:  # noqa: BLE001 - the thread must live on for the next requests
                lost = sum(len(r) for r in same)  # a retry would fail the same way
                log.exception("prediction log: %d rows of version %s could not be made into "
                              "log rows; dropped", lost, version)
                metrics.LOG_PENDING.dec(lost)
                metrics.LOG_ROWS.labels("dropped").inc(lost)
        out = []
        for tables in built.values():
            # one chunk per column: a filter over many small chunks costs ten times the copy,
            # in this thread, which holds the GIL the requests of this worker wait for
            table = pa.concat_tables(tables).combine_chunks()
            days = pc.strftime(table["event_time"], format="%Y-%m-%d")
            found = sorted(pc.unique(days).to_pylist())
            for day in found:
                folder = locations.prediction_log(self.settings, date.fromisoformat(day))
                out.append((folder, table if len(found) == 1
                            else table.filter(pc.equal(days, day))))
        return out

    def _requeue(self, batches: list[LogRecord | pa.Table]) -> None:
        with self._lock:
            self._pending = batches + self._pending
            dropped = self._pending[:max(0, len(self._pending) - MAX_PENDING_BATCHES)]
            self._pending = self._pending[len(dropped):]
            lost = sum(len(t) for t in dropped)
            self._rows = sum(len(t) for t in self._pending)
        if lost:
            log.error("prediction log: %d rows dropped (more than %d batches waiting)", lost,
                      MAX_PENDING_BATCHES)
            metrics.LOG_PENDING.dec(lost)
            metrics.LOG_ROWS.labels("dropped").inc(lost)
