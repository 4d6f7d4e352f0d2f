"""Monitoring of scored intervals and the retraining decision.

Drift: the window of prediction partitions ending with the interval (model inputs +
probabilities) against the training reference of the model version that scored the interval,
scored by the same ONNX (cached per version). Quality: once the outcomes of a day are known
(`dataset.label.available_after`), its predictions are joined to them by row key and scored,
pooled over a trailing window and compared with the model's own evaluation metrics.
The decision: drift or decay for `consecutive` intervals in a row, outside the cooldown, and at
most one retraining per episode (a run of signalled intervals of one model version).
Every verdict, quality check and decision is a JSON file under `registry/drift/` and rows in
the metrics history.
"""

from __future__ import annotations

import logging
import math
import tempfile
from datetime import date, timedelta
from typing import Any

import pandas as pd

from pipelines import metrics_store, registry, storage
from pipelines.config import Config
from pipelines.dataset import ROW_KEY, load_events
from pipelines.dates import day_start
from pipelines.drift import check_drift
from pipelines.drift_stats import quality_metrics
from pipelines.scoring import PROBABILITY, read_manifest, read_partition
from pipelines.settings import Settings

log = logging.getLogger(__name__)
BASELINE_METRICS = ("roc_auc", "pr_auc", "calibration_error", "brier", "positive_rate")
MAX_EPISODE_DAYS = 366


def drift_state_uri(settings: Settings) -> str:
    return storage.join(settings.registry_uri, "drift")


def _state(settings: Settings, kind: str, day: date | str) -> str:
    name = day.isoformat() if isinstance(day, date) else day
    return storage.join(drift_state_uri(settings), kind, f"{name}.json")


def _read(uri: str) -> dict[str, Any] | None:
    return storage.read_json(uri) if storage.exists(uri) else None


def report_uri(settings: Settings, day: date, name: str) -> str:
    return storage.join(settings.reports_uri, "drift", f"date={day.isoformat()}", name)


# --------------------------------------------------------------------------- reference


def _reference_uri(settings: Settings, model: str, version: str) -> str:
    return storage.join(drift_state_uri(settings), "reference", model, f"v{version}")


def save_reference(settings: Settings, model: str, version: str, frame: pd.DataFrame,
                   meta: dict[str, Any]) -> str:
    """Store a version's scored reference and its meta (inputs, onnx sha256, baseline)."""
    base = _reference_uri(settings, model, str(version))
    storage.write_parquet(frame, storage.join(base, "reference.parquet"))
    storage.write_json(storage.join(base, "meta.json"), meta)  # written last: the commit point
    return base


def model_reference(settings: Settings, manifest: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scored training reference + meta of the version that scored a partition (cached)."""
    model, version = manifest["model"], str(manifest["model_version"])
    base = _reference_uri(settings, model, version)
    meta = _read(storage.join(base, "meta.json"))
    stale = meta is not None and manifest.get("onnx_sha256") not in (None, meta.get("onnx_sha256"))
    if meta is None or stale:
        frame, meta = _build_reference(settings, model, version)
        save_reference(settings, model, version, frame, meta)
    return storage.read_parquet(storage.join(base, "reference.parquet")), meta


def _build_reference(settings: Settings, model: str, version: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    from pipelines.onnx_model import OnnxScorer, to_native_frame
    from pipelines.tracking import load_onnx

    c = registry.client(settings)
    mv = c.get_model_version(model, version)
    pinned = registry.describe(model, mv)
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.download(settings, f"runs:/{mv.run_id}/reference/reference.parquet", tmp)
        ref = pd.read_parquet(path)
    numeric, categorical = pinned["numeric"], pinned["categorical"]
    scorer = OnnxScorer(load_onnx(settings, pinned["onnx_uri"], pinned["onnx_sha256"]), numeric,
                        categorical)
    ref[PROBABILITY] = scorer.predict_proba(to_native_frame(ref, numeric, categorical))
    metrics = c.get_run(mv.run_id).data.metrics  # the evaluation-set metrics of training
    baseline = {k: float(metrics[k]) for k in BASELINE_METRICS if k in metrics}
    return ref, {"model": model, "version": version, "run_id": mv.run_id, "numeric": numeric,
                 "categorical": categorical, "onnx_sha256": pinned["onnx_sha256"], "baseline": baseline}


# --------------------------------------------------------------------------- drift


def window_days(cfg: Config, day: date, first_day: date | None) -> list[date]:
    """The days a drift check of `day` covers (not before the first scheduled day)."""
    days = [day - timedelta(days=back) for back in range(cfg.drift.window_days)]
    return [d for d in days if first_day is None or d >= first_day]


def window_ready(cfg: Config, settings: Settings, day: date, first_day: date | None) -> bool:
    """True once every partition of the window is published (the sensor's condition)."""
    return all(read_manifest(settings, d) is not None for d in window_days(cfg, day, first_day))


def check_interval(cfg: Config, settings: Settings, day: date, first_day: date | None = None,
                   run_id: str | None = None) -> dict[str, Any]:
    """Drift verdict of the window ending with `day` against its model's training reference."""
    manifest = read_manifest(settings, day)
    if manifest is None:
        raise FileNotFoundError(f"no published prediction partition for {day}: run batch_scoring")
    days = [d for d in window_days(cfg, day, first_day) if read_manifest(settings, d) is not None]
    current = pd.concat([read_partition(settings, d) for d in days], ignore_index=True)
    version = str(manifest["model_version"])
    if PROBABILITY in current.columns and "model_version" in current.columns:
        # predictions of other versions are not comparable with this version's reference
        other = current["model_version"].astype(str) != version
        current[PROBABILITY] = current[PROBABILITY].where(~other)
    reference, meta = model_reference(settings, manifest)
    verdict = check_drift(reference, current, meta["numeric"], meta["categorical"], PROBABILITY,
                          cfg.drift, report_uri(settings, day, "evidently.html"))
    verdict.update({"date": day.isoformat(), "model": manifest["model"], "model_version": version,
                    "window_start": days[-1].isoformat(), "window_days": [d.isoformat() for d in days]})
    storage.write_json(_state(settings, "verdicts", day), verdict)
    metrics_store.record(settings, day, "drift", metrics_store.drift_rows(verdict), version, run_id)
    log.info("drift: %s drift=%s share=%.3f prediction_psi=%s (%s)", day, verdict["drift"],
             verdict["drift_share"], verdict.get("prediction_psi"), verdict["reason"])
    return verdict


# --------------------------------------------------------------------------- quality


def labelled_day(cfg: Config, day: date) -> date:
    """The latest day whose outcomes are all known by the end of `day`'s interval."""
    lag = math.ceil(cfg.dataset.label.available_after / timedelta(days=1))
    return day - timedelta(days=lag)


def _labelled_rows(cfg: Config, settings: Settings, d: date, version: str, as_of: pd.Timestamp) -> pd.DataFrame:
    label = cfg.dataset.label.name
    preds = read_partition(settings, d)
    if "model_version" in preds.columns:
        preds = preds[preds["model_version"].astype(str) == version]
    events = load_events(cfg, settings.landing_uri, d, d + timedelta(days=1))
    if preds.empty or events.empty or PROBABILITY not in preds.columns:
        return pd.DataFrame(columns=[ROW_KEY, PROBABILITY, label, "day"])
    rows = preds[[ROW_KEY, PROBABILITY]].merge(events[[ROW_KEY, label, "label_available_at"]],
                                               on=ROW_KEY, how="inner")
    rows = rows[rows[label].notna() & (rows["label_available_at"] <= as_of)]
    return rows.assign(day=d.isoformat())[[ROW_KEY, PROBABILITY, label, "day"]]


def check_quality(cfg: Config, settings: Settings, day: date, run_id: str | None = None) -> dict[str, Any]:
    """Live quality of the day whose outcomes became known, and the decay verdict.

    Only the predictions of the labelled day's model version count, and only outcomes known by
    the end of `day`'s interval; decay compares the trailing window with that version's
    evaluation metrics (`monitoring.quality.max_drop` / `max_rise`).
    """
    q, label = cfg.monitoring.quality, cfg.dataset.label.name
    target = labelled_day(cfg, day)
    result: dict[str, Any] = {"date": day.isoformat(), "labelled_day": target.isoformat(),
                              "decay": False, "status": "ok", "reason": "", "model_version": None,
                              "daily": {}, "window": {}, "baseline": {}, "checks": [], "failed": []}
    manifest = read_manifest(settings, target)
    if manifest is None:
        result.update(status="no predictions", reason=f"no scored partition for {target} yet")
    else:
        version = str(manifest["model_version"])
        _, meta = model_reference(settings, manifest)
        as_of = pd.Timestamp(day_start(day + timedelta(days=1)))
        days = [target - timedelta(days=k) for k in range(q.window_days)]
        frames = [_labelled_rows(cfg, settings, d, version, as_of) for d in days
                  if read_manifest(settings, d) is not None]
        rows = pd.concat(frames, ignore_index=True)
        today = rows[rows["day"] == target.isoformat()]
        result.update(model_version=version, baseline=meta.get("baseline", {}),
                      daily=quality_metrics(today[label], today[PROBABILITY], q.calibration_bins),
                      window=quality_metrics(rows[label], rows[PROBABILITY], q.calibration_bins),
                      window_start=days[-1].isoformat(),
                      scored_rows=int(manifest.get("output_rows", 0)))
        _judge(result, q)
    storage.write_json(_state(settings, "quality", day), result)
    metrics_store.record(settings, target, "quality", metrics_store.quality_rows(result),
                         result["model_version"], run_id)
    log.info("quality: %s (outcomes of %s) decay=%s (%s)", day, target, result["decay"], result["reason"])
    return result


def _judge(result: dict[str, Any], q: Any) -> None:
    window, baseline = result["window"], result["baseline"]
    if window["n"] < q.min_labels:
        result.update(status="insufficient labels",
                      reason=f"{window['n']} labelled rows < min_labels {q.min_labels}: no quality verdict")
        return
    for metric, limit, sign in ([(m, v, 1) for m, v in q.max_drop.items()]
                                + [(m, v, -1) for m, v in q.max_rise.items()]):
        live, base = window.get(metric), baseline.get(metric)
        if live is None or base is None:
            result["checks"].append({"metric": metric, "passed": None, "live": live, "baseline": base})
            continue
        change = sign * (base - live)  # how much worse than at evaluation
        passed = change <= limit
        result["checks"].append({"metric": metric, "passed": passed, "live": live, "baseline": base,
                                 "worse_by": change, "limit": limit})
        if not passed:
            result["failed"].append(f"{metric} {live:.3f} vs evaluation {base:.3f} (worse by "
                                    f"{change:.3f} > {limit:g})")
    result["decay"] = bool(result["failed"])
    result["reason"] = ("quality decay: " + "; ".join(result["failed"]) if result["failed"] else
                        f"no decay over {window['n']} labelled rows")


# --------------------------------------------------------------------------- decision


def _signal(settings: Settings, day: date) -> tuple[bool, str | None, dict[str, Any]]:
    """(drift or decay?, model version, summary) of one interval from its stored checks."""
    verdict = _read(_state(settings, "verdicts", day)) or {}
    quality = _read(_state(settings, "quality", day)) or {}
    drift, decay = bool(verdict.get("drift")), bool(quality.get("decay"))
    version = verdict.get("model_version") or quality.get("model_version")
    summary = {"drift": drift, "decay": decay, "drift_reason": verdict.get("reason"),
               "quality_reason": quality.get("reason"), "report_uri": verdict.get("report_uri"),
               "drift_share": verdict.get("drift_share"), "prediction_psi": verdict.get("prediction_psi"),
               "model": verdict.get("model"), "model_version": version,
               "quality": {k: quality.get(k) for k in ("labelled_day", "status", "failed")}
               | {"window": {k: (quality.get("window") or {}).get(k) for k in
                             ("n", "roc_auc", "pr_auc", "calibration_error", "positive_rate")}}}
    return drift or decay, version, summary


def _episode(settings: Settings, day: date, version: str | None) -> tuple[date, date]:
    """First and last day of the run of signalled intervals of `version` around `day`."""
    def same(d: date) -> bool:
        signalled, v, _ = _signal(settings, d)
        return signalled and v == version

    start = end = day
    while (day - start).days < MAX_EPISODE_DAYS and same(start - timedelta(days=1)):
        start -= timedelta(days=1)
    while (end - day).days < MAX_EPISODE_DAYS and same(end + timedelta(days=1)):
        end += timedelta(days=1)
    return start, end


def decide(cfg: Config, settings: Settings, day: date, run_id: str | None = None) -> dict[str, Any]:
    """Retrain now? Drift or decay for `consecutive` intervals ending with `day`, outside the
    cooldown of any other trigger, and no trigger yet in this episode."""
    signalled, version, summary = _signal(settings, day)
    triggers = {n[:-5]: _read(_state(settings, "triggers", n[:-5])) or {}
                for n in storage.listdir(storage.join(drift_state_uri(settings), "triggers"))
                if n.endswith(".json")}
    start, end = _episode(settings, day, version) if signalled else (day, day)
    streak = (day - start).days + 1 if signalled else 0
    nearby = sorted(t for t in triggers if t != day.isoformat()
                    and abs((day - date.fromisoformat(t)).days) < cfg.drift.cooldown_days)
    in_episode = sorted(t for t in triggers if t != day.isoformat()
                        and start.isoformat() <= t <= end.isoformat()) if signalled else []
    already = bool(triggers.get(day.isoformat(), {}).get("emitted"))
    retrain = (signalled and streak >= cfg.drift.consecutive and not nearby and not in_episode
               and not already)
    if not signalled:
        reason = "no drift or decay"
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
    decision = {"date": day.isoformat(), "retrain": retrain, "signal": signalled, "streak": streak,
                "episode_start": start.isoformat() if signalled else None, "in_cooldown": bool(nearby),
                "reason": reason, "alert": "retrain" if retrain else
                ("episode" if signalled and streak == 1 and not already else None),
                "evidence": {"date": day.isoformat(), **summary, "streak": streak,
                             "episode_start": start.isoformat() if signalled else None,
                             "history_plot": report_uri(settings, day, "history.png")}}
    storage.write_json(_state(settings, "decisions", day), decision)
    if retrain:
        storage.write_json(_state(settings, "triggers", day), {**decision, "emitted": False})
    metrics_store.record(settings, day, "decision", [
        ("_decision", "signal", float(signalled)), ("_decision", "drift", float(summary["drift"])),
        ("_decision", "decay", float(summary["decay"])), ("_decision", "streak", float(streak)),
        ("_decision", "retrain", float(retrain)), ("_decision", "in_cooldown", float(bool(nearby)))],
        version, run_id)
    log.info("decide: %s retrain=%s (%s)", day, retrain, reason)
    return decision


def retrain_evidence(settings: Settings, day: date) -> dict[str, Any]:
    """The evidence of `day`'s trigger, marked as emitted (the asset event's extra)."""
    uri = _state(settings, "triggers", day)
    trigger = _read(uri)
    if trigger is None:
        raise FileNotFoundError(f"no retraining trigger recorded for {day}")
    storage.write_json(uri, {**trigger, "emitted": True})
    return trigger["evidence"]


def plot(cfg: Config, settings: Settings, day: date) -> str:
    """The history plot of the last `monitoring.plot_days` days, next to the Evidently report."""
    return metrics_store.plot_history(settings, day, cfg.monitoring.plot_days,
                                      report_uri(settings, day, "history.png"))
