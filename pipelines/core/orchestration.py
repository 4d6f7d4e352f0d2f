"""What the DAG files share: defaults, assets, and the per-task stage context.

Imported by DAG files at parse time, so it stays light: only the standard library and yaml.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import yaml

from pipelines.core.settings import get_settings

# Assets linking the DAGs (URIs are names, not locations).
CHAMPION_ASSET = "mlops://registry/champion"
PREDICTIONS_ASSET = "mlops://store/predictions"
RETRAIN_ASSET = "mlops://drift/retrain-request"
REGISTRY_POOL = "model_registry"


@lru_cache(maxsize=1)
def _orchestration() -> dict[str, Any]:
    with open(get_settings().params_path, encoding="utf-8") as fh:
        return yaml.safe_load(fh).get("orchestration", {})


def _utc(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc) if text else None


def schedule_span() -> tuple[datetime, datetime | None]:
    """[start, end] of the scheduled DAGs: params.yaml, overridable by MLOPS_SCHEDULE_START/END."""
    o = _orchestration()
    start = os.environ.get("MLOPS_SCHEDULE_START") or o["start_date"]
    end = os.environ.get("MLOPS_SCHEDULE_END") or o.get("end_date")
    return _utc(start), _utc(end)  # type: ignore[return-value]


def default_args() -> dict[str, Any]:
    o = _orchestration()
    return {"owner": o.get("owner", "mlops"), "retries": int(o.get("retries", 1)),
            "retry_delay": timedelta(seconds=int(o.get("retry_delay_s", 30)))}


def stage() -> tuple[Any, Any]:
    """(config, settings) for a task body; limits math threads on small workers."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    from pipelines.core.config import load_config

    settings = get_settings()
    return load_config(settings.params_path), settings


def interval_day(context: dict[str, Any]) -> date:
    """The day a daily run covers: its data interval start (UTC)."""
    start = context.get("data_interval_start") or context["logical_date"]
    return start.astimezone(timezone.utc).date()
