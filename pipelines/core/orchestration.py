"""What the DAG files share: schedule (one run per data interval of `orchestration.interval`
in `orchestration.timezone`), span, default args and the per-task stage context.

Imported by DAG files at parse time, so it stays light: config (yaml + pydantic, which Airflow
has already loaded) and settings; nothing heavy. The configuration is read once per process.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from pipelines.core.config import Config, load_config
from pipelines.core.intervals import Interval
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


def _local(text: str | None) -> datetime | None:
    """A configured date (or time) in the schedule's zone (UTC for the flights demo)."""
    from pipelines.core.intervals import zone

    if not text:
        return None
    when = datetime.fromisoformat(text)
    if when.tzinfo is not None:
        return when
    name = config().grain.schedule_timezone
    return when.replace(tzinfo=timezone.utc if name == "UTC" else zone(name))


def schedule_span() -> tuple[datetime, datetime | None]:
    """[start, end] of the scheduled DAGs: params.yaml `orchestration`, overridable by
    MLOPS_SCHEDULE_START / MLOPS_SCHEDULE_END (dates: local midnight in the schedule's zone)."""
    o, s = config().orchestration, get_settings()
    return _local(s.schedule_start or o.start_date), _local(s.schedule_end or o.end_date)  # type: ignore[return-value]


def interval_schedule() -> tuple[str, str]:
    """(cron, time zone) of a schedule with one run per data interval: the arguments of
    Airflow's CronDataIntervalTimetable (daily UTC: "0 0 * * *", "UTC")."""
    grain = config().grain
    return grain.cron, grain.schedule_timezone


def first_interval() -> Interval:
    """The first scheduled interval (windows never reach before it)."""
    return config().grain.at(schedule_span()[0])


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


def run_interval(context: dict[str, Any], override: str | None = None) -> Interval:
    """The data interval a run covers (the interval holding its data interval start), or the
    interval `override` names (a trigger form's date or key)."""
    grain = config().grain
    if override:
        return grain.interval(override)
    start = context.get("data_interval_start") or context["logical_date"]
    return grain.at(start.astimezone(timezone.utc))


def triggering_user(context: dict[str, Any]) -> str | None:
    """The person who triggered the run (None for a scheduled or asset-triggered run)."""
    run = context.get("dag_run")
    return getattr(run, "triggering_user_name", None) or None
