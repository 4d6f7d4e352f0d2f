"""Evaluation gates: pure functions over scores and a metrics report.

`evaluate(...)` returns a report whose `passed` is the verdict; it never swallows a failure.
The first model (no champion) faces the absolute floors only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from pipelines.config import GatesConfig


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(total)


METRICS = {
    "roc_auc": roc_auc_score,
    "pr_auc": average_precision_score,
    "brier": brier_score_loss,
    "calibration_error": calibration_error,
}
LOWER_IS_BETTER = {"brier", "calibration_error"}


def compute_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    out = {name: float(fn(y, p)) for name, fn in METRICS.items()}
    out["positive_rate"] = float(y.mean())
    out["n"] = int(len(y))
    return out


def paired_bootstrap(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, metric: str,
                     n_bootstrap: int, confidence: float, seed: int) -> dict[str, float]:
    """CI of metric(new) - metric(old), resampling the same rows for both models."""
    fn = METRICS[metric]
    y, p_new, p_old = np.asarray(y, int), np.asarray(p_new, float), np.asarray(p_old, float)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue  # a resample with one class has no AUC
        diffs.append(fn(y[idx], p_new[idx]) - fn(y[idx], p_old[idx]))
    arr = np.asarray(diffs)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0  # report "improvement" as positive
    arr = sign * arr
    alpha = (1.0 - confidence) / 2.0
    return {
        "metric": metric,
        "observed": float(sign * (fn(y, p_new) - fn(y, p_old))),
        "ci_low": float(np.quantile(arr, alpha)),
        "ci_high": float(np.quantile(arr, 1.0 - alpha)),
        "n_bootstrap": int(len(arr)),
    }


def evaluate(cfg: GatesConfig, y: np.ndarray, p_challenger: np.ndarray,
             p_champion: np.ndarray | None, parity: dict[str, Any]) -> dict[str, Any]:
    """Run every gate; `passed` is True only if all of them pass."""
    metrics = compute_metrics(y, p_challenger)
    checks: list[dict[str, Any]] = []
    for name, floor in cfg.floors.items():
        value = metrics[name]
        ok = value <= floor if name in LOWER_IS_BETTER else value >= floor
        checks.append({"gate": f"floor:{name}", "passed": bool(ok), "value": value,
                       "threshold": floor})
    checks.append({"gate": "onnx_parity", "passed": bool(parity["passed"]),
                   "value": parity["max_abs_diff"], "threshold": parity["tolerance"]})
    comparison = None
    if p_champion is not None:
        c = cfg.compare
        comparison = paired_bootstrap(y, p_challenger, p_champion, c.metric, c.n_bootstrap,
                                      c.confidence, c.seed)
        comparison["champion_metrics"] = compute_metrics(y, p_champion)
        checks.append({"gate": f"beats_champion:{c.metric}",
                       "passed": bool(comparison["ci_low"] > c.margin),
                       "value": comparison["ci_low"], "threshold": c.margin,
                       "detail": f"{c.confidence:.0%} CI of improvement "
                                 f"[{comparison['ci_low']:.4f}, {comparison['ci_high']:.4f}]"})
    failed = [c["gate"] for c in checks if not c["passed"]]
    return {
        "passed": not failed,
        "failed": failed,
        "checks": checks,
        "metrics": metrics,
        "comparison": comparison,
        "has_champion": p_champion is not None,
    }


def render_markdown(report: dict[str, Any], version: str | None = None) -> str:
    lines = [f"# Gate report{f' for version {version}' if version else ''}", "",
             f"**Verdict: {'PASS' if report['passed'] else 'FAIL'}**", "",
             "| gate | passed | value | threshold |", "|---|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['gate']} | {'yes' if c['passed'] else 'NO'} | {c['value']:.5g} "
                     f"| {c['threshold']:.5g} |")
    if not report["has_champion"]:
        lines += ["", "No champion yet: the model faces the absolute floors only."]
    return "\n".join(lines) + "\n"
