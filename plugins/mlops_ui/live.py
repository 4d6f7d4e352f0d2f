"""What the model page shows of live serving, as plain dicts: the routing in force, each
variant's request rate, latency, shadow failures and disagreement over the last minutes of the
prediction log, and the steps of the latest rollout from the promotion history.

Per-variant numbers come from `pipelines.model.rollout.evidence`, the function the rollout
judges its steps with (one implementation). Failed requests are not in the prediction log: the
error rate shown is the latest rollout step's (read from `/metrics` when it was judged). No
Airflow, no HTML.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core import locations, storage
from pipelines.core.settings import Settings
from pipelines.model import registry

if TYPE_CHECKING:
    from pipelines.core.config import Config

ROLLOUT_ACTIONS = ("rollout_step", "rollout_rolled_back", "promote", "routing_reset")


def _routing(settings: Settings, cfg: Config) -> dict[str, Any]:
    from pipelines.model import routing

    doc = storage.read_json_if_exists(locations.routing(settings))
    try:
        live = routing.current(settings, cfg)
    except ValueError as exc:
        return {"source": "document", "error": str(exc), "shares": {}, "mirror": None}
    return {"source": "document" if doc else "params.yaml", "error": None,
            "shares": live.shares, "mirror": live.mirror,
            "at": (doc or {}).get("at"), "actor": (doc or {}).get("actor"),
            "reason": (doc or {}).get("reason")}


def _variants(settings: Settings, cfg: Config, start: datetime, end: datetime
              ) -> dict[str, dict[str, Any]]:
    from pipelines.model.rollout import evidence
    from pipelines.model.rollout_run import served_records

    records = served_records(settings, start, end)
    if records.empty:
        return {}
    seconds = (end - start).total_seconds()
    out = {}
    for v, e in evidence(records, {}, None, cfg.serving.shadow.threshold).items():
        scored = e.shadow_abs_diff.size
        out[v] = {"requests": e.answered, "rate_per_s": e.answered / seconds,
                  "p50_ms": float(np.quantile(e.latency_ms, 0.5)) if e.answered else None,
                  "p99_ms": float(np.quantile(e.latency_ms, 0.99)) if e.answered else None,
                  "shadow_requests": e.shadow_requests,
                  "shadow_failure_rate": e.shadow_failed / e.shadow_requests
                  if e.shadow_requests else None,
                  "mean_abs_diff": float(e.shadow_abs_diff.mean()) if scored else None,
                  "label_disagreement": e.shadow_label_disagreements / scored if scored else None}
    return out


def latest_rollout(settings: Settings, name: str) -> list[dict[str, Any]]:
    """The events of the latest rollout run (its steps, a roll-back or the promotion), oldest
    first."""
    events = sorted((e for e in registry.history(settings) if e.get("model") == name
                     and e.get("action") in ROLLOUT_ACTIONS), key=lambda e: e.get("at", ""))
    steps = [e for e in events if e["action"] == "rollout_step"]
    if not steps:
        return []
    actor = steps[-1].get("actor")
    return [{"at": e.get("at"), "action": e["action"], "version": e.get("to_version"),
             "reason": e.get("reason"), "step": (e.get("rollout") or {}).get("step"),
             "passed": (e.get("rollout") or {}).get("passed"),
             "breached": (e.get("rollout") or {}).get("breached") or [],
             "error_rate": next((c["observed"] for c in (e.get("rollout") or {}).get(
                 "checks", []) if c["name"] == "error_rate"), None)}
            for e in events if e.get("actor") == actor]


def live_serving(settings: Settings, cfg: Config, minutes: int = 15,
                 now: datetime | None = None) -> dict[str, Any]:
    """The routing, per-variant numbers over the last `minutes`, and the latest rollout."""
    end = now or datetime.now(UTC)
    start = end - timedelta(minutes=minutes)
    return {"routing": _routing(settings, cfg), "minutes": minutes,
            "variants": _variants(settings, cfg, start, end),
            "rollout": latest_rollout(settings, cfg.registry.model_name)}
