"""Airflow's LocalExecutor whose workers import the heavy libraries once, before their first task.

A LocalExecutor worker is a long-lived process; each task it runs is a process `os.fork`ed from
it (the task SDK's supervisor), which then imports what the task body imports. Most of a
nightly task's time here was those imports (great_expectations, feast, evidently, mlflow,
scikit-learn: 1-7 s each, every task). This executor's workers import them first, so a task
process starts with them loaded and pays only its own work.

What is preloaded is `Settings.executor_preload` (MLOPS_EXECUTOR_PRELOAD, comma-separated module
names; empty: nothing, the plain LocalExecutor). A module that fails to import is logged and
skipped: the task that needs it fails with the real error. Imports only: no client, session,
connection or thread of ours exists in the worker when it forks (a library's own thread at
import, e.g. pyarrow's jemalloc or onnxruntime's, is not copied into the child; both create
what they need again there). Enabled for the embedded default in scripts/env.sh
(`AIRFLOW__CORE__EXECUTOR=pipelines.core.executor.PreloadingLocalExecutor`); measured by
`bench nightly`.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

from airflow.executors import local_executor
from airflow.executors.local_executor import LocalExecutor

log = logging.getLogger(__name__)
_run_worker = local_executor._run_worker  # the worker loop this one wraps


def preload(names: list[str]) -> dict[str, float]:
    """Import `names` (module -> seconds; a failure is logged and skipped)."""
    took = {}
    for name in names:
        t0 = time.monotonic()
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the task needing it will raise it itself
            log.warning("preload: %s failed to import (%s: %s); tasks import it themselves",
                        name, type(exc).__name__, exc)
            continue
        took[name] = round(time.monotonic() - t0, 2)
    return took


def _run_preloaded_worker(**kwargs: Any) -> None:
    """A LocalExecutor worker that first imports `Settings.executor_preload` (module level, so
    it is started by name under any multiprocessing start method)."""
    from pipelines.core.settings import get_settings

    took = preload(get_settings().executor_preload)
    log.info("preload: worker imported %s in %.1fs", took, sum(took.values()))
    _run_worker(**kwargs)


class PreloadingLocalExecutor(LocalExecutor):
    """LocalExecutor whose worker processes run `_run_preloaded_worker`."""

    def _spawn_worker(self) -> None:
        # LocalExecutor._spawn_worker starts `local_executor._run_worker` with its queues: swap
        # the loop for ours while it does, rather than copy how it passes them
        local_executor._run_worker = _run_preloaded_worker
        try:
            super()._spawn_worker()
        finally:
            local_executor._run_worker = _run_worker
