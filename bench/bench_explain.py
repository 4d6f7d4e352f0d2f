"""The cost of per-row explanations in batch scoring (`scoring.explain_top_k`): the same chunk of
rows scored into a part file by `write_part` without contributions, then with the top 3
contributions written beside it, same model, same process.

The model is the project's pipeline (imputer + one-hot + the configured estimator, params.yaml)
fitted on real flights by bench_scoring's `fitted`, exported as training exports it (node covers
recorded in the ONNX file). Without: `OnnxScorer` (what batch scoring runs with the setting at
0); with: `ExplainingScorer` (the same session plus the encoded tensor and the trees' score,
TreeSHAP over the ONNX trees in numpy, the additivity check, the contributions file). Both write
their Parquet files; the feature retrieval before them is the same either way and not timed.
For reference, shap.TreeExplainer on the scikit-learn estimator (what the training run uses for
the global importance) on the same rows, with its one-off import cost.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_scoring import CATEGORICAL, NUMERIC, _best_of, fitted
from pipelines.core.config import load_config
from pipelines.model.onnx_model import export, to_native_frame

TOP_K = 3


def run(rows: int = 50_000) -> dict:
    import pandas as pd
    import pyarrow as pa

    from pipelines.core.settings import get_settings
    from pipelines.model.tree_shap import ExplainingScorer
    from pipelines.scoring.inputs import META
    from pipelines.scoring.parts import write_part

    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    df, pipe, scorer = fitted(cfg)
    sample = df.sample(rows, replace=True, random_state=1).reset_index(drop=True)
    times = pd.Timestamp("2013-06-01", tz="UTC") + pd.to_timedelta(np.arange(rows), unit="s")
    keys = [f"r{i:07d}" for i in range(rows)]
    chunk = pa.Table.from_pandas(pd.DataFrame({
        **dict(zip(META, [keys, times, times])), **{c: sample[c] for c in NUMERIC + CATEGORICAL}}),
        preserve_index=False)
    explainer = ExplainingScorer(export(pipe, NUMERIC, CATEGORICAL), NUMERIC, CATEGORICAL)
    model = {"model": "bench", "version": "1", "numeric": NUMERIC, "categorical": CATEGORICAL}
    off, on = cfg.scoring, cfg.scoring.model_copy(update={"explain_top_k": TOP_K})

    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        settings = dataclasses.replace(get_settings(), data_uri=tmp)
        day = pd.Timestamp("2013-06-01").date()
        write_part(settings, day, 0, chunk, model, explainer, on)  # warm both sessions
        write_part(settings, day, 0, chunk, model, scorer, off)
        t_off = _best_of(lambda: write_part(settings, day, 0, chunk, model, scorer, off))
        t_on = _best_of(lambda: write_part(settings, day, 0, chunk, model, explainer, on))
        with_part = write_part(settings, day, 0, chunk, model, explainer, on)
        without_part = write_part(settings, day, 0, chunk, model, scorer, off)

    frame = to_native_frame(sample, NUMERIC, CATEGORICAL)
    feeds = {c: frame[c].to_numpy(np.float32).reshape(-1, 1) for c in NUMERIC}
    feeds.update({c: frame[c].to_numpy(object).astype(str).reshape(-1, 1) for c in CATEGORICAL})
    probs, raw, values = explainer.explain(feeds)
    encoded = explainer.session.run([explainer.shap.encoded], feeds)[0]
    t_values = _best_of(lambda: explainer.shap.values(encoded))

    t = time.perf_counter()
    import shap  # noqa: F401 - the one-off import cost of the reference

    t_import = time.perf_counter() - t
    from pipelines.model.explain import contributions

    t_shap = _best_of(lambda: contributions(pipe, frame, NUMERIC, CATEGORICAL), repeats=1)
    return {
        "rows": rows,
        "estimator": cfg.training.estimator.class_,
        "estimator_params": cfg.training.estimator.params,
        "inputs": len(explainer.shap.inputs), "space": explainer.shap.space,
        "batch_rows": cfg.scoring.batch_rows, "top_k": TOP_K,
        "same_part_file": with_part["file"] == without_part["file"],
        "additivity_max_abs_error": float(np.max(np.abs(
            values.sum(axis=1) + explainer.shap.base_value - raw))),
        "write_part_without_rows_per_s": round(rows / t_off),
        "write_part_with_top3_rows_per_s": round(rows / t_on),
        "ratio_with_over_without_time": round(t_on / t_off, 1),
        "tree_shap_only_rows_per_s": round(rows / t_values),
        "reference_shap_tree_explainer_rows_per_s": round(rows / t_shap),
        "reference_import_shap_s": round(t_import, 2),
    }
