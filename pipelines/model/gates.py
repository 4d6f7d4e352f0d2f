"""Evaluation gates: pure functions over scores and a metrics report.

`evaluate(...)` returns a report whose `passed` is the verdict; it never swallows a failure.
The first model (no champion) faces the absolute floors only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.core.config import BehaviourCheck, Budgets, GatesConfig, SliceGate
from pipelines.model.metrics import LOWER_IS_BETTER, METRICS, compute_metrics


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


def slice_checks(cfg: SliceGate, y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray,
                 slices: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per-slice non-regression: one check per slice large enough to measure."""
    fn = METRICS[cfg.metric]
    y, p_new, p_old = np.asarray(y, int), np.asarray(p_new, float), np.asarray(p_old, float)
    checks = []
    for column, values in slices.items():
        values = np.asarray(values).astype(str)
        for level in sorted(set(values)):
            mask = values == level
            if mask.sum() < cfg.min_size or y[mask].min() == y[mask].max():
                continue
            new, old = float(fn(y[mask], p_new[mask])), float(fn(y[mask], p_old[mask]))
            sign = -1.0 if cfg.metric in LOWER_IS_BETTER else 1.0
            drop = sign * (old - new)
            checks.append({"gate": f"slice:{column}={level}", "passed": bool(drop <= cfg.max_drop),
                           "value": -drop, "threshold": -cfg.max_drop, "n": int(mask.sum()),
                           "detail": f"{cfg.metric} {new:.4f} vs champion {old:.4f}"})
    return checks


def budget_checks(cfg: Budgets, serving: dict[str, float]) -> list[dict[str, Any]]:
    """Size and latency budgets from measurements of the ONNX model on onnxruntime."""
    return [
        {"gate": "budget:model_mb", "passed": bool(serving["model_mb"] <= cfg.max_model_mb),
         "value": serving["model_mb"], "threshold": cfg.max_model_mb},
        {"gate": "budget:single_row_p99_ms",
         "passed": bool(serving["single_row_p99_ms"] <= cfg.max_single_row_p99_ms),
         "value": serving["single_row_p99_ms"], "threshold": cfg.max_single_row_p99_ms},
        {"gate": "budget:batch_rows_per_s",
         "passed": bool(serving["batch_rows_per_s"] >= cfg.min_batch_rows_per_s),
         "value": serving["batch_rows_per_s"], "threshold": cfg.min_batch_rows_per_s},
    ]


def behaviour_results(predict: Any, frame: Any, checks: tuple[BehaviourCheck, ...]) -> list[dict[str, Any]]:
    """Perturb one input per check and measure the mean change in predicted probability.

    `predict(frame) -> probabilities`; `frame` is the model-input frame of the evaluation set.
    """
    base = np.asarray(predict(frame), float)
    out = []
    for check in checks:
        if check.column not in frame.columns:
            out.append({"gate": f"behaviour:{check.name}", "passed": False, "value": float("nan"),
                        "threshold": check.tolerance,
                        "detail": f"column {check.column!r} is not a model input"})
            continue
        moved = frame.copy()
        if check.set is not None:
            moved[check.column] = check.set
        if check.add is not None:
            moved[check.column] = moved[check.column] + np.float32(check.add)
        change = float(np.mean(np.asarray(predict(moved), float) - base))
        if check.kind == "invariance":
            ok = abs(change) <= check.tolerance
        elif check.expect == "increase":
            ok = change >= -check.tolerance
        else:
            ok = change <= check.tolerance
        out.append({"gate": f"behaviour:{check.name}", "passed": bool(ok), "value": change,
                    "threshold": check.tolerance,
                    "detail": f"{check.kind} {check.column}: mean probability change {change:+.5f}"})
    return out


def evaluate(cfg: GatesConfig, y: np.ndarray, p_challenger: np.ndarray,
             p_champion: np.ndarray | None, parity: dict[str, Any],
             slices: dict[str, np.ndarray] | None = None,
             serving: dict[str, float] | None = None,
             behaviour: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run every gate; `passed` is True only if all of them pass.

    The first model (no champion) faces the floors, parity, budgets and behaviour checks;
    the comparison and the per-slice non-regression need a champion.
    """
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
        checks += slice_checks(cfg.slices, y, p_challenger, p_champion, slices or {})
    if serving is not None:
        checks += budget_checks(cfg.budgets, serving)
    checks += behaviour or []
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
             f"**Verdict: {'PASS' if report['passed'] else 'FAIL'}**"]
    if report["failed"]:
        lines += ["", "Failed: " + ", ".join(report["failed"])]
    lines += ["", "| gate | passed | value | threshold | detail |", "|---|---|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['gate']} | {'yes' if c['passed'] else 'NO'} | {c['value']:.5g} "
                     f"| {c['threshold']:.5g} | {c.get('detail', '')} |")
    if not report["has_champion"]:
        lines += ["", "No champion yet: no comparison or slice gates; floors, ONNX parity, "
                      "budgets and behavioural checks apply."]
    return "\n".join(lines) + "\n"
