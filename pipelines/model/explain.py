"""Global explanations: SHAP values of the fitted estimator (`shap.TreeExplainer`) on a sample
of the evaluation set, summed back from the encoded columns to the model's inputs, and a plot.

The space of the values is measured, not assumed: each row's contributions plus the base value
must equal the estimator's raw output, which for a gradient-boosting classifier is the log-odds
(`decision_function`) and for a forest the probability; the space that adds up is the one
stated, with the largest error seen. shap (and numba under it) is imported only here.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.config import ExplainConfig

ADDITIVITY_TOLERANCE = 1e-6  # |sum(contributions) + base - raw output|, in the stated space


def encoded_owners(prep: Any, numeric: list[str], categorical: list[str]) -> list[str]:
    """The model input each encoded column comes from (a one-hot column: its categorical)."""
    owners = list(numeric)
    if categorical:
        encoder = prep.named_transformers_["cat"]
        for col, cats in zip(categorical, encoder.categories_, strict=True):
            owners += [col] * len(cats)
    return owners


def _raw_outputs(estimator: Any, z: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    if hasattr(estimator, "decision_function"):
        out["log-odds"] = np.asarray(estimator.decision_function(z), float).ravel()
    out["probability"] = np.asarray(estimator.predict_proba(z), float)[:, 1]
    return out


def contributions(pipe: Any, frame: pd.DataFrame, numeric: list[str],
                  categorical: list[str]) -> dict[str, Any]:
    """Per-row SHAP contributions of each model input (one-hot columns summed into their
    categorical), the base value, the raw output they add up to and its space."""
    import shap

    prep, estimator = pipe.named_steps["prep"], pipe.named_steps["model"]
    z = prep.transform(frame)
    z = np.asarray(z.toarray() if hasattr(z, "toarray") else z, dtype=float)
    try:
        explainer = shap.TreeExplainer(estimator)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the setting that asked for it
        raise ValueError(f"governance.explain: shap.TreeExplainer cannot explain "
                         f"{type(estimator).__name__} ({type(exc).__name__}: {exc}); use a tree "
                         f"estimator or set governance.explain.enabled: false") from exc
    values = np.asarray(explainer.shap_values(z, check_additivity=False), float)
    base = np.asarray(explainer.expected_value, float).ravel()
    if values.ndim == 3:  # one matrix per class (forests): the positive class
        values, base = values[..., 1], base[1:]
    owners = encoded_owners(prep, numeric, categorical)
    if len(owners) != values.shape[1]:
        raise ValueError(f"{values.shape[1]} encoded columns but {len(owners)} known owners")
    inputs = list(dict.fromkeys(owners))
    mapping = np.zeros((len(owners), len(inputs)))
    mapping[np.arange(len(owners)), [inputs.index(o) for o in owners]] = 1.0
    per_input = values @ mapping
    total = per_input.sum(axis=1) + float(base[-1])
    errors = {space: float(np.max(np.abs(total - raw))) if len(raw) else 0.0
              for space, raw in _raw_outputs(estimator, z).items()}
    space = min(errors, key=errors.get)
    return {"inputs": inputs, "values": per_input, "base_value": float(base[-1]),
            "feature_perturbation": str(getattr(explainer, "feature_perturbation", "unknown")),
            "space": space, "raw_output": _raw_outputs(estimator, z)[space],
            "additivity_max_abs_error": errors[space]}


def global_importance(cfg: ExplainConfig, pipe: Any, frame: pd.DataFrame, numeric: list[str],
                      categorical: list[str]) -> tuple[dict[str, Any], bytes]:
    """(summary, PNG plot): mean |SHAP| per model input on a sample of `frame` (the evaluation
    set's model inputs), largest first."""
    sample = frame.sample(min(len(frame), cfg.sample_rows), random_state=cfg.seed)
    c = contributions(pipe, sample, numeric, categorical)
    if c["additivity_max_abs_error"] > ADDITIVITY_TOLERANCE:
        raise ValueError(f"SHAP values do not add up to the model's output in any space "
                         f"(max error {c['additivity_max_abs_error']:.3g} > "
                         f"{ADDITIVITY_TOLERANCE:g}): not an explanation of this model")
    mean_abs = np.abs(c["values"]).mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")
    summary = {
        "method": f"shap.TreeExplainer ({c['feature_perturbation']})",
        "space": c["space"], "base_value": c["base_value"], "sample_rows": len(sample),
        "seed": cfg.seed, "additivity_max_abs_error": c["additivity_max_abs_error"],
        "additivity_tolerance": ADDITIVITY_TOLERANCE,
        "importance": [{"feature": c["inputs"][i], "mean_abs_shap": float(mean_abs[i]),
                        "mean_shap": float(c["values"][:, i].mean())} for i in order]}
    return summary, plot(summary, cfg.top)


def plot(summary: dict[str, Any], top: int) -> bytes:
    """A horizontal bar chart of the `top` inputs by mean |SHAP| (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["importance"][:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    ax.barh([r["feature"] for r in rows], [r["mean_abs_shap"] for r in rows], color="#3b6ea8")
    ax.set_xlabel(f"mean |SHAP value| ({summary['space']}), {summary['sample_rows']} rows")
    ax.set_title("Global feature importance (SHAP)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
