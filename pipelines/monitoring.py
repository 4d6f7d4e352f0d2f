"""Drift monitoring of one scored interval, and the retraining decision.

The current data is the prediction partition (model inputs + probabilities); the reference is
the training sample logged with the model version that scored it, scored by the same ONNX.
The decision applies hysteresis (K drifting intervals in a row) and a cooldown after the last
retraining trigger, so one drift episode triggers one retraining.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import date, timedelta
from typing import Any

import pandas as pd

from pipelines import registry, storage
from pipelines.config import Config
from pipelines.drift import check_drift
from pipelines.scoring import PROBABILITY, read_manifest, read_partition
from pipelines.settings import Settings

log = logging.getLogger(__name__)


def _reference(settings: Settings, manifest: dict[str, Any]) -> pd.DataFrame:
    import mlflow

    from pipelines.onnx_model import OnnxScorer, to_native_frame
    from pipelines.tracking import load_onnx

    c = registry.client(settings)
    mv = c.get_model_version(manifest["model"], manifest["model_version"])
    tags = dict(mv.tags)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{mv.run_id}/reference/reference.parquet", dst_path=tmp)
        ref = pd.read_parquet(path)
    numeric = tags["numeric_inputs"].split(",")
    categorical = [x for x in tags["categorical_inputs"].split(",") if x]
    scorer = OnnxScorer(load_onnx(settings, tags["onnx_uri"], tags["onnx_sha256"]), numeric, categorical)
    ref[PROBABILITY] = scorer.predict_proba(to_native_frame(ref, numeric, categorical))
    return ref


def window_days(cfg: Config, day: date, first_day: date | None) -> list[date]:
    """The days a drift check of `day` covers (not before the first scheduled day)."""
    days = [day - timedelta(days=back) for back in range(cfg.drift.window_days)]
    return [d for d in days if first_day is None or d >= first_day]


def window_ready(cfg: Config, settings: Settings, day: date, first_day: date | None) -> bool:
    """True once every partition of the window is published (the sensor's condition)."""
    return all(read_manifest(settings, d) is not None for d in window_days(cfg, day, first_day))


def drift_state_uri(settings: Settings) -> str:
    return storage.join(settings.registry_uri, "drift")


def check_interval(cfg: Config, settings: Settings, day: date,
                   first_day: date | None = None) -> dict[str, Any]:
    """Drift verdict of the window ending with `day` against its model's training reference."""
    manifest = read_manifest(settings, day)
    if manifest is None:
        raise FileNotFoundError(f"no published prediction partition for {day}: run batch_scoring")
    days = window_days(cfg, day, first_day)
    current = pd.concat([read_partition(settings, d) for d in days
                         if read_manifest(settings, d) is not None], ignore_index=True)
    reference = _reference(settings, manifest)
    c = registry.client(settings)
    tags = dict(c.get_model_version(manifest["model"], manifest["model_version"]).tags)
    numeric = tags["numeric_inputs"].split(",")
    categorical = [x for x in tags["categorical_inputs"].split(",") if x]
    report_uri = storage.join(settings.reports_uri, "drift", f"date={day.isoformat()}", "evidently.html")
    verdict = check_drift(reference, current, numeric, categorical, PROBABILITY, cfg.drift, report_uri)
    verdict.update({"date": day.isoformat(), "model_version": manifest["model_version"],
                    "window_start": days[-1].isoformat()})
    storage.write_json(storage.join(drift_state_uri(settings), "verdicts", f"{day.isoformat()}.json"),
                       verdict)
    log.info("drift: %s drift=%s share=%.2f prediction_psi=%s (%s)", day, verdict["drift"],
             verdict["drift_share"], verdict.get("prediction_psi"), verdict["reason"])
    return verdict


def decide(cfg: Config, settings: Settings, day: date) -> dict[str, Any]:
    """Retrain now? Needs `consecutive` drifting days ending with `day`, outside the cooldown."""
    state = drift_state_uri(settings)
    streak = 0
    for back in range(cfg.drift.consecutive):
        uri = storage.join(state, "verdicts", f"{(day - timedelta(days=back)).isoformat()}.json")
        if storage.exists(uri) and storage.read_json(uri).get("drift"):
            streak += 1
    triggers = sorted(n[:-5] for n in storage.listdir(storage.join(state, "triggers"))
                      if n.endswith(".json"))
    earlier = [t for t in triggers if t < day.isoformat()]
    last = date.fromisoformat(earlier[-1]) if earlier else None
    in_cooldown = last is not None and (day - last).days < cfg.drift.cooldown_days
    retrain = streak >= cfg.drift.consecutive and not in_cooldown
    already = day.isoformat() in triggers  # a re-run of a triggering day does not retrain twice
    retrain = retrain and not already
    decision = {"date": day.isoformat(), "retrain": retrain, "streak": streak,
                "last_trigger": last.isoformat() if last else None, "in_cooldown": in_cooldown,
                "reason": ("drift for %d interval(s)" % streak if retrain else
                           "retraining already triggered for this interval" if already else
                           "cooldown since %s" % last if in_cooldown and streak else "no drift episode")}
    if retrain:
        storage.write_json(storage.join(state, "triggers", f"{day.isoformat()}.json"), decision)
    return decision
