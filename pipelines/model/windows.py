"""Training windows: which days a training run covers, and preparing them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pipelines.core.config import Config
from pipelines.core.dates import date_range, to_date
from pipelines.core.settings import Settings


def training_window(cfg: Config, params: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Window from the trigger form, else from a drift event, else the configured initial one."""
    if params.get("train_start") and params.get("train_end"):
        start, end = to_date(params["train_start"]), to_date(params["train_end"])
        trigger, evidence = "manual", None
    elif events:
        extra = events[-1]["extra"]
        end = to_date(extra["date"]) + timedelta(days=1)
        start = end - timedelta(days=cfg.training.window_days)
        trigger, evidence = f"drift on {extra['date']}", extra
    elif params.get("evidence"):
        extra = params["evidence"]
        end = to_date(extra["date"]) + timedelta(days=1)
        start = end - timedelta(days=cfg.training.window_days)
        trigger, evidence = f"drift on {extra['date']}", extra
    else:
        start = to_date(cfg.training.initial_window.start)
        end = to_date(cfg.training.initial_window.end)
        trigger, evidence = "manual", None
    if end <= start:
        raise ValueError(f"training window is empty: start {start} is not before end {end}")
    return {"start": start.isoformat(), "end": end.isoformat(), "trigger": trigger,
            "evidence": evidence}


def validate_window(cfg: Config, settings: Settings, window: dict[str, Any]) -> dict[str, Any]:
    from pipelines.core import locations, storage
    from pipelines.data.checks import validate_day, validate_snapshots

    results = validate_snapshots(cfg, settings)
    missing = []
    for day in date_range(to_date(window["start"]), to_date(window["end"])):
        present = [t for t in cfg.dataset.daily_tables
                   if storage.exists(locations.batch(settings.landing_uri, t, day))]
        missing += [f"{t}/{day}" for t in cfg.dataset.daily_tables if t not in present]
        results += validate_day(cfg, settings, day, present) if present else []
    rows = sum(r.get("rows", 0) for r in results)
    print(f"validate_raw: {len(results)} batches, {rows} rows passed; "
          f"{len(missing)} batches absent: {missing[:5]}")
    return {"batches": len(results), "rows": rows, "absent": missing}


def build_window_features(cfg: Config, settings: Settings, window: dict[str, Any]) -> int:
    from pipelines.features.sources import build_feature_sources
    from pipelines.features.store import apply_definitions

    apply_definitions(settings)
    # Aggregates reach back: write sources from the longest window before the start.
    lookback = max([a.window_days for a in cfg.dataset.aggregates.values()] or [0])
    start = to_date(window["start"]) - timedelta(days=lookback)
    n = 0
    for day in date_range(start, to_date(window["end"])):
        n += len(build_feature_sources(cfg, settings, day))
    return n
