"""Evaluation gates: pure functions over scores and a metrics report.

`evaluate(...)` returns a report whose `passed` is the verdict; it never swallows a failure.
The first model (no champion) faces the absolute floors only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.core.config import BehaviourCheck, Budgets, GatesConfig, SliceGate
from pipelines.model.metrics import LOWER_IS_BETTER, METRICS, compute_metrics

NEEDS_BOTH_CLASSES = {"roc_auc", "pr_auc"}  # undefined with one class (metrics returns None)


def _defined(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def paired_bootstrap(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, metric: str,
                     n_bootstrap: int, confidence: float, seed: int) -> dict[str, Any]:
    """CI of metric(new) - metric(old), resampling the same rows for both models.

    Resamples in which the metric is undefined (one class) are skipped and counted; when the
    metric is undefined on the whole set, or no resample is usable, the interval is None and
    `undefined` says why: the comparison gate then rejects, it never passes by default.
    """
    fn = METRICS[metric]
    y, p_new, p_old = np.asarray(y, int), np.asarray(p_new, float), np.asarray(p_old, float)
    out: dict[str, Any] = {"metric": metric, "observed": None, "ci_low": None, "ci_high": None,
                           "n_bootstrap": 0, "skipped": 0, "undefined": None}
    if metric in NEEDS_BOTH_CLASSES and len(np.unique(y)) < 2:
        out["undefined"] = (f"{metric} is undefined: the evaluation set has one class only "
                            f"({len(y)} rows, all {int(y[0]) if len(y) else '-'})")
        return out
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(y), len(y))
        if metric in NEEDS_BOTH_CLASSES and y[idx].min() == y[idx].max():
            out["skipped"] += 1  # a resample with one class has no AUC
            continue
        diffs.append(fn(y[idx], p_new[idx]) - fn(y[idx], p_old[idx]))
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0  # report "improvement" as positive
    out["observed"] = float(sign * (fn(y, p_new) - fn(y, p_old)))
    if not diffs:
        out["undefined"] = f"no bootstrap resample had both classes ({out['skipped']} skipped)"
        return out
    arr = sign * np.asarray(diffs)
    alpha = (1.0 - confidence) / 2.0
    out.update(ci_low=float(np.quantile(arr, alpha)), ci_high=float(np.quantile(arr, 1.0 - alpha)),
               n_bootstrap=int(len(arr)))
    return out


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
            out.append({"gate": f"behaviour:{check.name}", "passed": False, "value": None,
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
        if not _defined(value):
            checks.append({"gate": f"floor:{name}", "passed": False, "value": None,
                           "threshold": floor, "detail": _undefined(name, y)})
            continue
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
        if comparison["undefined"]:
            checks.append({"gate": f"beats_champion:{c.metric}", "passed": False, "value": None,
                           "threshold": c.margin, "detail": comparison["undefined"]})
        else:
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


def _undefined(metric: str, y: np.ndarray) -> str:
    y = np.asarray(y, int)
    if len(y) == 0:
        return f"{metric} is undefined: the evaluation set is empty"
    if len(np.unique(y)) < 2:
        return (f"{metric} is undefined: the evaluation set has one class only "
                f"({len(y)} rows, all {int(y[0])})")
    return f"{metric} is undefined on the evaluation set"


def _num(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.5g}"


def render_markdown(report: dict[str, Any], version: str | None = None) -> str:
    lines = [f"# Gate report{f' for version {version}' if version else ''}", "",
             f"**Verdict: {'PASS' if report['passed'] else 'FAIL'}**"]
    if report["failed"]:
        lines += ["", "Failed: " + ", ".join(report["failed"])]
    lines += ["", "| gate | passed | value | threshold | detail |", "|---|---|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['gate']} | {'yes' if c['passed'] else 'NO'} | {_num(c['value'])} "
                     f"| {_num(c['threshold'])} | {c.get('detail', '')} |")
    if not report["has_champion"]:
        lines += ["", "No champion yet: no comparison or slice gates; floors, ONNX parity, "
                      "budgets and behavioural checks apply."]
    return "\n".join(lines) + "\n"
