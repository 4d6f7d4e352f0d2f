"""Shadow (mirror) scoring: a mirrored request is also scored by the mirror alias, after its
response is built, off the request path; the shadow's answer is logged beside the primary's
in the same prediction-log record and never changes what the caller got.

A request hands a `ShadowJob` to a bounded queue (`serving.shadow.queue`) and returns; when
the queue is full the job is dropped (`serving_shadow_requests_total{status="dropped"}`) and
the primary's record is logged at once. One thread per worker takes jobs in turn and scores
each in a thread of its own, waiting at most `serving.shadow.timeout_seconds`: a shadow that
raises is `error`, one that takes longer `timeout` (its thread is left to finish; while it
runs, later jobs are `busy`, never scored concurrently). Whatever happens, each mirrored
request's rows are logged exactly once, with `shadow_status` saying what happened. The
disagreement of the rows scored: `serving_shadow_abs_diff` (|p_shadow - p_primary|) and
`serving_shadow_label_disagreements_total` over `serving_shadow_rows_total` (the label at
`serving.shadow.threshold`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.serving import metrics
from pipelines.serving.predlog import LogRecord, PredictionLog

if TYPE_CHECKING:
    from pipelines.scoring.inputs import ModelInputs
    from pipelines.serving.model import ServedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowJob:
    """A mirrored request: what the primary answered, and what the shadow needs to score it."""
    primary: ServedModel
    shadow: ServedModel
    columns: dict[str, np.ndarray]  # the decoded request (the shadow prepares its own inputs)
    inputs: ModelInputs  # the primary's
    probabilities: np.ndarray  # the primary's
    request_id: str
    latency_s: float
    served_at: datetime


class ShadowRunner:
    """A worker's shadow queue and the thread that scores it. `score(job)` returns the
    shadow's probabilities in request order (the data plane prepares the shadow's inputs)."""

    def __init__(self, name: str, score: Callable[[ShadowJob], np.ndarray], log_: PredictionLog,
                 size: int, timeout_s: float, threshold: float) -> None:
        self.name, self._score, self._log = name, score, log_
        self.timeout_s, self.threshold = timeout_s, threshold
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=size)
        self._running: threading.Thread | None = None  # a shadow that outlived its timeout
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the job in hand; jobs still queued are logged as `dropped`."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._finish(job, None, "dropped")
        self._queue.put(None)
        self._thread.join(timeout=self.timeout_s + 5)

    def submit(self, job: ShadowJob) -> bool:
        """Queue a mirrored request (never blocks); a full queue drops it: False."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._finish(job, None, "dropped")
            return False
        metrics.SHADOW_PENDING.inc()
        return True

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            metrics.SHADOW_PENDING.dec()
            try:
                self._handle(job)
            except Exception:  # noqa: BLE001 - the shadow thread must outlive any one job
                log.exception("shadow: handling request %s failed", job.request_id)

    def _handle(self, job: ShadowJob) -> None:
        if self._running is not None and self._running.is_alive():
            self._finish(job, None, "busy")
            return
        result: dict[str, Any] = {}

        def score() -> None:
            try:
                result["p"] = self._score(job)
            except BaseException as exc:  # noqa: BLE001 - reported as the job's status
                result["error"] = exc

        thread = threading.Thread(target=score, name="shadow-score", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            self._running = thread
            log.warning("shadow: %s v%s took over %ss on request %s; given up", job.shadow.alias,
                        job.shadow.version, self.timeout_s, job.request_id)
            self._finish(job, None, "timeout")
        elif "error" in result:
            exc = result["error"]
            log.warning("shadow: %s v%s failed on request %s: %s: %s", job.shadow.alias,
                        job.shadow.version, job.request_id, type(exc).__name__, exc)
            self._finish(job, None, "error")
        else:
            self._finish(job, result["p"], "ok")

    def _finish(self, job: ShadowJob, p: np.ndarray | None, status: str) -> None:
        """Log the primary's rows once, with the shadow's answer (or None) and status."""
        alias = job.shadow.alias
        if p is not None and (len(p) != len(job.probabilities) or not np.isfinite(p).all()):
            p, status = None, "error"
        self._log.append(LogRecord(job.inputs, job.probabilities, job.primary.described,
                                   job.request_id, job.primary.alias, job.latency_s,
                                   job.served_at, (alias, job.shadow.version, p, status)))
        metrics.SHADOW_REQUESTS.labels(self.name, alias, status).inc()
        if p is not None:
            diff = np.abs(p - job.probabilities)
            for d in diff:
                metrics.SHADOW_DIFF.labels(self.name, alias).observe(float(d))
            labels = (p >= self.threshold) != (job.probabilities >= self.threshold)
            metrics.SHADOW_ROWS.labels(self.name, alias).inc(len(p))
            metrics.SHADOW_DISAGREE.labels(self.name, alias).inc(int(labels.sum()))
