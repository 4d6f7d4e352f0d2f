"""The drift reference of a model version: its training sample scored by its own ONNX, with
its inputs, ONNX sha256 and evaluation metrics (the live-quality baseline); built once per
version and cached in the monitoring state.
"""

from __future__ import annotations

import tempfile
from typing import Any

import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.settings import Settings
from pipelines.model import registry
from pipelines.scoring.parts import PROBABILITY

BASELINE_METRICS = ("roc_auc", "pr_auc", "calibration_error", "brier", "positive_rate")


def save_reference(settings: Settings, model: str, version: str, frame: pd.DataFrame,
                   meta: dict[str, Any]) -> str:
    """Store a version's scored reference and its meta (inputs, onnx sha256, baseline)."""
    base = locations.drift_reference(settings, model, str(version))
    storage.write_parquet(frame, storage.join(base, "reference.parquet"))
    storage.write_json(storage.join(base, "meta.json"), meta)  # written last: the commit point
    return base


def model_reference(settings: Settings, manifest: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scored training reference + meta of the version that scored a partition (cached)."""
    model, version = manifest["model"], str(manifest["model_version"])
    base = locations.drift_reference(settings, model, version)
    meta = storage.read_json_if_exists(storage.join(base, "meta.json"))
    stale = meta is not None and manifest.get("onnx_sha256") not in (None, meta.get("onnx_sha256"))
    if meta is None or stale:
        frame, meta = _build_reference(settings, model, version)
        save_reference(settings, model, version, frame, meta)
    return storage.read_parquet(storage.join(base, "reference.parquet")), meta


def _build_reference(settings: Settings, model: str, version: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    from pipelines.model.onnx_model import OnnxScorer, to_native_frame
    from pipelines.model.registry import load_onnx

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
