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


def log_table(inputs: ModelInputs, probabilities: np.ndarray, model: dict[str, Any],
              request_id: str | np.ndarray, variant: str, latency_s: float | np.ndarray,
              served_at: datetime, shadow: Shadowed | None = None) -> pa.Table:
    """A request's rows as prediction-log rows: the partition's columns + LOG_COLUMNS
    (`shadow`: the mirror's alias, version, probabilities or None, and status). Requests
    answered in one pass may be logged in one table: `request_id` and `latency_s` then give
    each row its request's."""
    import pyarrow as pa

    from pipelines.scoring.parts import part_table
    from pipelines.scoring.table import LOG_COLUMNS

    table, n = part_table(inputs, probabilities, model), len(inputs)
    alias, version, shadow_p, status = shadow or (None, None, None, None)
    per_row = isinstance(request_id, np.ndarray)
    extra = [pa.array(request_id, pa.string()) if per_row
             else pa.repeat(pa.scalar(request_id, pa.string()), n),
             pa.repeat(pa.scalar(variant, pa.string()), n),
             pa.array(np.round(np.asarray(latency_s, dtype=np.float64) * 1000, 3))
             if per_row else pa.repeat(pa.scalar(round(latency_s * 1000, 3), pa.float64()), n),
             pa.repeat(pa.scalar(served_at, pa.timestamp("us", tz="UTC")), n),
             pa.repeat(pa.scalar(alias, pa.string()), n),
             pa.repeat(pa.scalar(version, pa.string()), n),
             (pa.array(np.asarray(shadow_p, dtype=np.float64), pa.float64())
              if shadow_p is not None else pa.nulls(n, pa.float64())),
             pa.repeat(pa.scalar(status, pa.string()), n)]
    for name, column in zip(LOG_COLUMNS, extra):
        table = table.append_column(name, column)
    return table


class PredictionLog:
    """A worker's buffer of prediction-log rows and the thread that writes them."""

    def __init__(self, settings: Settings, batch_rows: int, flush_seconds: float) -> None:
        self.settings, self.batch_rows, self.flush_seconds = settings, batch_rows, flush_seconds
        self._pending: list[pa.Table] = []
        self._rows, self._seq = 0, 0
        self._lock, self._wake, self._stop = threading.Lock(), threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._origin = f"{socket.gethostname()}-{os.getpid()}"

    def start(self) -> None:
        self._thread.start()

    def append(self, table: pa.Table) -> None:
        """Hand a request's rows over (never blocks on storage)."""
        with self._lock:
            self._pending.append(table)
            self._rows += table.num_rows
            full = self._rows >= self.batch_rows
        metrics.LOG_PENDING.inc(table.num_rows)
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

    def _parts(self, batches: list[pa.Table]) -> list[tuple[str, pa.Table]]:
        """(folder, rows) per event day and model version (one schema per part)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        by_version: dict[str, list[pa.Table]] = {}
        for t in batches:
            by_version.setdefault(t["model_version"][0].as_py(), []).append(t)
        out = []
        for tables in by_version.values():
            table = pa.concat_tables(tables)
            days = pc.strftime(table["event_time"], format="%Y-%m-%d")
            for day in sorted(set(days.to_pylist())):
                folder = locations.prediction_log(self.settings, date.fromisoformat(day))
                out.append((folder, table.filter(pc.equal(days, day))))
        return out

    def _requeue(self, batches: list[pa.Table]) -> None:
        with self._lock:
            self._pending = batches + self._pending
            dropped = self._pending[:max(0, len(self._pending) - MAX_PENDING_BATCHES)]
            self._pending = self._pending[len(dropped):]
            lost = sum(t.num_rows for t in dropped)
            self._rows = sum(t.num_rows for t in self._pending)
        if lost:
            log.error("prediction log: %d rows dropped (more than %d batches waiting)", lost,
                      MAX_PENDING_BATCHES)
            metrics.LOG_PENDING.dec(lost)
            metrics.LOG_ROWS.labels("dropped").inc(lost)
