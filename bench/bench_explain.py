"""Per-row SHAP contributions (what an optional per-row explanation of a batch partition would
cost) vs onnxruntime scoring of the same rows, same model.

The model is the project's pipeline (imputer + one-hot + the configured estimator, params.yaml)
fitted on real flights by bench_scoring's `fitted`. The explanation is
`pipelines.model.explain.contributions` (shap.TreeExplainer on the fitted estimator, one-hot
columns summed into their input) plus `top_contributions` (each row's 3 largest); scoring is
`OnnxScorer.predict_proba`, what batch scoring runs. Reports rows/s of both and the ratio, the
one-off cost of importing shap (numba) and of building the explainer.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.bench_scoring import CATEGORICAL, NUMERIC, fitted
from pipelines.core.config import load_config
from pipelines.model.onnx_model import to_native_frame


def run(rows: int = 20_000) -> dict:
    t = time.perf_counter()
    import shap  # noqa: F401 - the one-off import cost is part of what a task pays

    t_import = time.perf_counter() - t
    from pipelines.model.explain import contributions, top_contributions

    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    df, pipe, scorer = fitted(cfg)
    frame = to_native_frame(df.sample(rows, replace=True, random_state=1), NUMERIC, CATEGORICAL)

    t = time.perf_counter()
    contributions(pipe, frame.head(10), NUMERIC, CATEGORICAL)
    t_first = time.perf_counter() - t  # explainer built, numba functions compiled
    t = time.perf_counter()
    scorer.predict_proba(frame)
    t_onnx = time.perf_counter() - t
    t = time.perf_counter()
    c = contributions(pipe, frame, NUMERIC, CATEGORICAL)
    top_contributions(c, 3)
    t_shap = time.perf_counter() - t
    return {
        "rows": rows,
        "estimator": cfg.training.estimator.class_,
        "estimator_params": cfg.training.estimator.params,
        "space": c["space"],
        "additivity_max_abs_error": c["additivity_max_abs_error"],
        "import_shap_s": round(t_import, 2),
        "first_call_s": round(t_first, 2),
        "onnxruntime_rows_per_s": round(rows / t_onnx),
        "shap_top3_rows_per_s": round(rows / t_shap),
        "ratio_shap_over_onnx_time": round(t_shap / t_onnx, 1),
    }
