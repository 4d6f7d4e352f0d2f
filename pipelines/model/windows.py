"""Training windows: which span a training run covers, and preparing them.

A window is [start, end) written as local dates of the grain's zone (`2013-01-01`: its local
midnight) or, for an hourly grain, UTC hours (`2024-11-03T06Z`); a drift-triggered one ends
with the interval that drifted and reaches `training.window_days` back.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from pipelines.core.config import Config
from pipelines.core.settings import Settings


def training_window(cfg: Config, params: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Window from the trigger form, else from a drift event, else the configured initial one."""
    grain = cfg.grain
    extra = events[-1]["extra"] if events else params.get("evidence")
    if params.get("train_start") and params.get("train_end"):
        start, end = grain.bound(params["train_start"]), grain.bound(params["train_end"])
        trigger, evidence = "manual", None
    elif extra:
        end = grain.interval(extra["date"]).end
        start = (end - timedelta(days=cfg.training.window_days) if grain.kind == "hourly"
                 else grain.bound(date.fromisoformat(grain.bound_text(end))  # calendar days
                                  - timedelta(days=cfg.training.window_days)))
        trigger, evidence = f"drift on {extra['date']}", extra
    else:
        start = grain.bound(cfg.training.initial_window.start)
        end = grain.bound(cfg.training.initial_window.end)
        trigger, evidence = "manual", None
    if end <= start:
        raise ValueError(f"training window is empty: start {grain.bound_text(start)} is not "
                         f"before end {grain.bound_text(end)}")
    return {"start": grain.bound_text(start), "end": grain.bound_text(end), "trigger": trigger,
            "evidence": evidence}


def validate_window(cfg: Config, settings: Settings, window: dict[str, Any]) -> dict[str, Any]:
    from pipelines.core import locations, storage
    from pipelines.data.checks import validate_days, validate_snapshots

    results = validate_snapshots(cfg, settings)
    missing, days = [], []
    for iv in window_intervals(cfg, window):
        present = [t for t in cfg.dataset.daily_tables
                   if storage.exists(locations.batch(settings.landing_uri, t, iv))]
        missing += [f"{t}/{iv.key}" for t in cfg.dataset.daily_tables if t not in present]
        days += [(iv, present)] if present else []
    results += validate_days(cfg, settings, days)
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
    n = 0
    for iv in window_intervals(cfg, window, timedelta(days=lookback)):
        n += len(build_feature_sources(cfg, settings, iv))
    return n


def window_intervals(cfg: Config, window: dict[str, Any], before: timedelta = timedelta(0)
                     ) -> list[Any]:
    """The intervals that overlap the window (extended `before` its start), in order."""
    grain = cfg.grain
    return grain.between(grain.bound(window["start"]) - before, grain.bound(window["end"]))
