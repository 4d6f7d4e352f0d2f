"""The retraining decision: drift or decay for `drift.consecutive` intervals in a row, outside
the cooldown, and at most one retraining per episode (a run of signalled intervals of one model
version). A check without a verdict ("insufficient data", "insufficient labels", not run yet)
is no signal: it neither counts towards nor continues a streak. Every decision is a JSON file
under `registry/drift/` and rows in the metrics history.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.intervals import Grain, Interval
from pipelines.core.settings import Settings
from pipelines.monitoring import history as metrics_store

log = logging.getLogger(__name__)
MAX_EPISODE_DAYS = 366


def _record(settings: Settings, kind: str, day: Interval | date | str) -> dict[str, Any] | None:
    return storage.read_json_if_exists(locations.monitoring_record(settings, kind, day))


def _signal(settings: Settings, day: Interval | date) -> tuple[bool, str | None, dict[str, Any]]:
    """(drift or decay?, model version, summary) of one interval from its stored checks."""
    verdict = _record(settings, "verdicts", day) or {}
    quality = _record(settings, "quality", day) or {}
    drift, decay = bool(verdict.get("drift")), bool(quality.get("decay"))
    version = verdict.get("model_version") or quality.get("model_version")
    summary = {"drift": drift, "decay": decay, "drift_status": verdict.get("status"),
               "drift_reason": verdict.get("reason"),
               "quality_reason": quality.get("reason"), "report_uri": verdict.get("report_uri"),
               "drift_share": verdict.get("drift_share"), "prediction_psi": verdict.get("prediction_psi"),
               "model": verdict.get("model"), "model_version": version,
               "quality": {k: quality.get(k) for k in ("labelled_day", "status", "failed")}
               | {"window": {k: (quality.get("window") or {}).get(k) for k in
                             ("n", "roc_auc", "pr_auc", "calibration_error", "positive_rate")}}}
    return drift or decay, version, summary


def _episode(grain: Grain, settings: Settings, day: Interval, version: str | None
             ) -> tuple[Interval, Interval, int]:
    """First and last interval of the run of signalled intervals of `version` around `day`,
    and how many intervals of it end with `day` (the streak)."""
    def same(d: Interval) -> bool:
        signalled, v, _ = _signal(settings, d)
        return signalled and v == version

    limit = timedelta(days=MAX_EPISODE_DAYS)
    start = end = day
    streak = 1
    while day.start - start.start < limit and same(grain.previous(start)):
        start, streak = grain.previous(start), streak + 1
    while end.start - day.start < limit and same(grain.next(end)):
        end = grain.next(end)
    return start, end, streak


def decide(cfg: Config, settings: Settings, day: Interval | date,
           run_id: str | None = None) -> dict[str, Any]:
    """Retrain now? Drift or decay for `consecutive` intervals ending with `day`, outside the
    cooldown of any other trigger, and no trigger yet in this episode."""
    grain = cfg.grain
    day = grain.interval(day)
    signalled, version, summary = _signal(settings, day)
    triggers = {n[:-5]: _record(settings, "triggers", n[:-5]) or {}
                for n in storage.listdir(storage.join(locations.monitoring_state(settings), "triggers"))
                if n.endswith(".json")}
    start, end, streak = _episode(grain, settings, day, version) if signalled else (day, day, 0)
    cooldown = timedelta(days=cfg.drift.cooldown_days)
    nearby = sorted(t for t in triggers if t != day.key
                    and abs(day.start - grain.interval(t).start) < cooldown)
    in_episode = sorted(t for t in triggers if t != day.key
                        and start.start <= grain.interval(t).start <= end.start) if signalled else []
    already = bool(triggers.get(day.key, {}).get("emitted"))
    retrain = (signalled and streak >= cfg.drift.consecutive and not nearby and not in_episode
               and not already)
    if not signalled:
        unjudged = [f"{what}: {status}" for what, status in (
            ("drift", summary["drift_status"]), ("quality", summary["quality"]["status"]))
            if status not in (None, "ok")]
        reason = "no drift or decay" + (f" ({'; '.join(unjudged)})" if unjudged else "")
    elif already:
        reason = "retraining already requested for this interval"
    elif in_episode:
        reason = f"episode since {start} already requested retraining on {in_episode[0]}"
    elif streak < cfg.drift.consecutive:
        reason = f"signal for {streak} of {cfg.drift.consecutive} intervals"
    elif nearby:
        reason = f"cooldown: retraining requested on {nearby[-1]} (< {cfg.drift.cooldown_days} days)"
    else:
        reason = "retrain: " + " and ".join(k for k in ("drift", "decay") if summary[k]) + \
                 f" for {streak} interval(s) since {start}"
    decision = {"date": day.key, "retrain": retrain, "signal": signalled, "streak": streak,
                "episode_start": start.key if signalled else None, "in_cooldown": bool(nearby),
                "reason": reason, "alert": "retrain" if retrain else
                ("episode" if signalled and streak == 1 and not already else None),
                "evidence": {"date": day.key, **summary, "streak": streak,
                             "episode_start": start.key if signalled else None,
                             "history_plot": locations.drift_report(settings, day, "history.png")}}
    storage.write_json(locations.monitoring_record(settings, "decisions", day), decision)
    if retrain:
        storage.write_json(locations.monitoring_record(settings, "triggers", day), {**decision, "emitted": False})
    metrics_store.record(settings, day, "decision", [
        ("_decision", "signal", float(signalled)), ("_decision", "drift", float(summary["drift"])),
        ("_decision", "decay", float(summary["decay"])), ("_decision", "streak", float(streak)),
        ("_decision", "retrain", float(retrain)), ("_decision", "in_cooldown", float(bool(nearby)))],
        version, run_id)
    log.info("decide: %s retrain=%s (%s)", day.key, retrain, reason)
    return decision


def retrain_evidence(settings: Settings, day: Interval | date) -> dict[str, Any]:
    """The evidence of `day`'s trigger, marked as emitted (the asset event's extra)."""
    uri = locations.monitoring_record(settings, "triggers", day)
    trigger = storage.read_json_if_exists(uri)
    if trigger is None:
        raise FileNotFoundError(f"no retraining trigger recorded for {locations.key(day)}")
    storage.write_json(uri, {**trigger, "emitted": True})
    return trigger["evidence"]


def plot(cfg: Config, settings: Settings, day: Interval | date) -> str:
    """The history plot of the last `monitoring.plot_days` days, next to the Evidently report."""
    day = cfg.grain.interval(day)
    return metrics_store.plot_history(settings, day, cfg.monitoring.plot_days,
                                      locations.drift_report(settings, day, "history.png"))
