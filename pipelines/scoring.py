"""Batch scoring of one data interval with onnxruntime, published atomically.

A partition is `<predictions>/date=YYYY-MM-DD/` holding content-addressed Parquet part files and
`_manifest.json`. The manifest is written last and names the part files: readers trust only
what it names, so a run killed mid-write leaves the previous partition (or none) visible, and
a re-run of the same interval replaces it with byte-identical rows.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from pipelines import storage
from pipelines.config import Config
from pipelines.dataset import PREDICTION_TIME, ROW_KEY, load_events
from pipelines.settings import Settings

log = logging.getLogger(__name__)
MANIFEST = "_manifest.json"
PROBABILITY = "probability"


def partition_uri(settings: Settings, day: date) -> str:
    return storage.join(settings.predictions_uri, f"date={day.isoformat()}")


def read_manifest(settings: Settings, day: date) -> dict[str, Any] | None:
    uri = storage.join(partition_uri(settings, day), MANIFEST)
    return storage.read_json(uri) if storage.exists(uri) else None


def read_partition(settings: Settings, day: date) -> pd.DataFrame:
    """The published predictions of `day` (only the files its manifest names)."""
    manifest = read_manifest(settings, day)
    if manifest is None:
        raise FileNotFoundError(f"no published prediction partition for {day}")
    base = partition_uri(settings, day)
    frames = [storage.read_parquet(storage.join(base, f)) for f in manifest["files"]]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _clean_inputs(frame: pd.DataFrame, numeric: list[str], policy: str) -> tuple[pd.DataFrame, dict]:
    """Non-finite numerics become missing; 'impute' lets the model's imputer fill them,
    'reject' drops the row. Either way the counts go to the manifest."""
    values = frame[numeric].to_numpy(dtype=np.float64)
    nonfinite = ~np.isfinite(values)
    counts = {"rows_with_missing_features": int(nonfinite.any(axis=1).sum()),
              "missing_values": int(nonfinite.sum()), "policy": policy, "rejected_rows": 0}
    frame = frame.copy()
    frame[numeric] = np.where(nonfinite, np.nan, values)
    if policy == "reject":
        keep = ~nonfinite.any(axis=1)
        counts["rejected_rows"] = int((~keep).sum())
        frame = frame[keep]
    return frame, counts


def validate_output(out: pd.DataFrame, expected_rows: int) -> None:
    problems = []
    if len(out) != expected_rows:
        problems.append(f"{len(out)} output rows for {expected_rows} scored input rows")
    if out[PROBABILITY].isna().any():
        problems.append(f"{int(out[PROBABILITY].isna().sum())} null probabilities")
    if ((out[PROBABILITY] < 0) | (out[PROBABILITY] > 1)).any():
        problems.append("probabilities outside [0, 1]")
    if out[ROW_KEY].duplicated().any():
        problems.append("duplicate row keys")
    if problems:
        raise ValueError("prediction partition failed validation: " + "; ".join(problems))


def score_interval(cfg: Config, settings: Settings, day: date, model: dict[str, Any],
                   run_id: str) -> dict[str, Any]:
    """Score every event of [day, day+1) with the pinned model; publish the partition."""
    from pipelines.features import get_store, historical_features
    from pipelines.onnx_model import OnnxScorer, to_native_frame
    from pipelines.tracking import load_onnx

    t0 = time.perf_counter()
    events = load_events(cfg, settings.landing_uri, day, day + timedelta(days=1))
    base = partition_uri(settings, day)
    numeric, categorical = model["numeric"], model["categorical"]
    counts: dict[str, Any] = {"policy": cfg.scoring.missing_features, "rejected_rows": 0}
    parts: list[pd.DataFrame] = []
    if not events.empty:
        store = get_store(settings)
        feats = historical_features(store, model["feature_service"], events,
                                    list(cfg.features.join_keys))
        scorer = OnnxScorer(load_onnx(settings, model["onnx_uri"], model["onnx_sha256"]),
                            numeric, categorical)
        cleaned, counts = _clean_inputs(feats, numeric, cfg.scoring.missing_features)
        for start in range(0, len(cleaned), cfg.scoring.chunk_rows):
            chunk = cleaned.iloc[start:start + cfg.scoring.chunk_rows]
            frame = to_native_frame(chunk, numeric, categorical)
            out = chunk[[ROW_KEY, "event_time", PREDICTION_TIME, *numeric, *categorical]].copy()
            out[PROBABILITY] = scorer.predict_proba(frame)
            parts.append(out)
    out = (pd.concat(parts, ignore_index=True) if parts else
           pd.DataFrame({ROW_KEY: pd.Series(dtype="object"), PROBABILITY: pd.Series(dtype="float64")}))
    out["model_name"] = model["model"]
    out["model_version"] = model["version"]
    validate_output(out, len(events) - counts["rejected_rows"])
    out = out.sort_values(ROW_KEY, kind="stable").reset_index(drop=True)
    buf = io.BytesIO()
    out.to_parquet(buf, index=False)
    data = buf.getvalue()
    name = f"part-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
    storage.write_bytes(storage.join(base, name), data)
    manifest = {
        "date": day.isoformat(), "files": [name], "input_rows": int(len(events)),
        "output_rows": int(len(out)), "model": model["model"], "model_version": model["version"],
        "onnx_sha256": model["onnx_sha256"], "feature_service": model["feature_service"],
        "model_run_id": model["run_id"], "airflow_run_id": run_id, "missing_features": counts,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    storage.write_json(storage.join(base, MANIFEST), manifest)  # the commit point
    for stale in storage.listdir(base):
        if stale.startswith("part-") and stale != name:
            storage.remove(storage.join(base, stale))
    log.info("score: %s -> %d rows with %s v%s into %s", day, len(out), model["model"],
             model["version"], base)
    return {"partition_uri": base, "rows": int(len(out)), "model_version": model["version"]}
