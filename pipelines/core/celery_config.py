"""Celery settings for Airflow's CeleryExecutor whose workers import the heavy libraries once.

A Celery worker forks its pool processes at start, and each task of Airflow 3 is a process
forked again from a pool process (the task SDK's supervisor). Airflow's own Celery app already
imports a few Airflow modules in the worker before the pool forks (its `import_modules`
handler); this adds `Settings.executor_preload` (MLOPS_EXECUTOR_PRELOAD, the list the
embedded default's `PreloadingLocalExecutor` uses), so a task starts with great_expectations,
feast, mlflow, scikit-learn... loaded instead of importing them again (1-7 s each).

Enabled by `[celery] celery_config_options = pipelines.core.celery_config.CELERY_CONFIG`
(`make stack`, docker-compose.yaml). The settings themselves are Airflow's defaults, unchanged.
Imports only, before the pool exists: no client, connection or thread of ours is forked.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import import_modules

log = logging.getLogger(__name__)

# Airflow's settings as they are (a copy: Airflow only merges a dict that is not its own)
CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)


@import_modules.connect
def _preload(**_: Any) -> None:
    """In a worker's main process, at start (Celery sends `import_modules` only there)."""
    from pipelines.core.executor import preload
    from pipelines.core.settings import get_settings

    t0 = time.monotonic()
    took = preload(list(get_settings().executor_preload))
    log.info("preload: celery worker imported %s in %.1fs", took, time.monotonic() - t0)
