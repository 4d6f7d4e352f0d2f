"""What the DAG files share: schedule span, default args and the per-task stage context.

Imported by DAG files at parse time, so it stays light: config (yaml + pydantic, which Airflow
has already loaded) and settings; nothing heavy. The configuration is read once per process.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from pipelines.core.config import Config, load_config
from pipelines.core.settings import Settings, get_settings


@lru_cache(maxsize=4)
def _config(path: str, version: tuple[int, int]) -> Config:  # noqa: ARG001 - the cache key
    return load_config(path)


def config() -> Config:
    """params.yaml (MLOPS_PARAMS), loaded and validated once per process (again only if the
    file changes)."""
    path = get_settings().params_path
    stat = os.stat(path)
    return _config(path, (stat.st_mtime_ns, stat.st_size))


def _utc(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc) if text else None


def schedule_span() -> tuple[datetime, datetime | None]:
    """[start, end] of the scheduled DAGs: params.yaml `orchestration`, overridable by
    MLOPS_SCHEDULE_START / MLOPS_SCHEDULE_END."""
    o, s = config().orchestration, get_settings()
    return _utc(s.schedule_start or o.start_date), _utc(s.schedule_end or o.end_date)  # type: ignore[return-value]


def default_args() -> dict[str, Any]:
    o = config().orchestration
    return {"owner": o.owner, "retries": o.retries,
            "retry_delay": timedelta(seconds=o.retry_delay_s)}


def stage() -> tuple[Config, Settings]:
    """(config, settings) for a task body; limits math threads on small workers."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    return config(), get_settings()


def interval_day(context: dict[str, Any]) -> date:
    """The day a daily run covers: its data interval start (UTC)."""
    start = context.get("data_interval_start") or context["logical_date"]
    return start.astimezone(timezone.utc).date()


def triggering_user(context: dict[str, Any]) -> str | None:
    """The person who triggered the run (None for a scheduled or asset-triggered run)."""
    run = context.get("dag_run")
    return getattr(run, "triggering_user_name", None) or None
