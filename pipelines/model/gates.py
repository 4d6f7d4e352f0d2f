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


def paired_bootstrap(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray | None, metric: str,
                     n_bootstrap: int, confidence: float, seed: int) -> dict[str, Any]:
    """CI of metric(new) - metric(old), resampling the same rows for both models; with `p_old`
    None, the CI of metric(new) itself (the same resamples and rules: the card's intervals).

    Resamples in which the metric is undefined (one class) are skipped and counted; when the
    metric is undefined on the whole set, or no resample is usable, the interval is None and
    `undefined` says why: the comparison gate then rejects, it never passes by default.
    """
    fn = METRICS[metric]
    y, p_new = np.asarray(y, int), np.asarray(p_new, float)
    p_old = None if p_old is None else np.asarray(p_old, float)
    out: dict[str, Any] = {"metric": metric, "observed": None, "ci_low": None, "ci_high": None,
                           "n_bootstrap": 0, "skipped": 0, "undefined": None}
    if len(y) == 0 or (metric in NEEDS_BOTH_CLASSES and len(np.unique(y)) < 2):
        out["undefined"] = _undefined(metric, y)
        return out

    def stat(idx: Any) -> float:
        new = fn(y[idx], p_new[idx])
        return new if p_old is None else new - fn(y[idx], p_old[idx])

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(y), len(y))
        if metric in NEEDS_BOTH_CLASSES and y[idx].min() == y[idx].max():
            out["skipped"] += 1  # a resample with one class has no AUC
            continue
        diffs.append(stat(idx))
    # a difference is reported as "improvement" (positive = better); a metric as itself
    sign = -1.0 if metric in LOWER_IS_BETTER and p_old is not None else 1.0
    out["observed"] = float(sign * stat(slice(None)))
    if not diffs:
        if n_bootstrap:  # asked for an interval and none could be made
            out["undefined"] = f"no bootstrap resample had both classes ({out['skipped']} skipped)"
        return out
    arr = sign * np.asarray(diffs)
    alpha = (1.0 - confidence) / 2.0
    out.update(ci_low=float(np.quantile(arr, alpha)), ci_high=float(np.quantile(arr, 1.0 - alpha)),
               n_bootstrap=int(len(arr)))
    return out


def metric_intervals(cfg: GatesConfig, y: np.ndarray, p: np.ndarray,
                     n_bootstrap: int) -> dict[str, Any]:
    """Every metric of one model with its bootstrap CI (`n_bootstrap` resamples; gates.compare's
    confidence and seed): what the model card reports beside each number."""
    c = cfg.compare
    out = {}
    for name in METRICS:
        b = paired_bootstrap(y, p, None, name, n_bootstrap, c.confidence, c.seed)
        out[name] = {"value": b["observed"], "ci_low": b["ci_low"], "ci_high": b["ci_high"],
                     "confidence": c.confidence, "n_bootstrap": b["n_bootstrap"],
                     "undefined": b["undefined"]}
    return out


def slice_metrics(cfg: GatesConfig, y: np.ndarray, p: np.ndarray,
                  slices: dict[str, np.ndarray], n_bootstrap: int) -> list[dict[str, Any]]:
    """The challenger's slice metric in every slice, with its CI when the slice has at least
    `gates.slices.min_size` rows; smaller slices are listed with `below_min_size` (a known
    limitation: too few rows to judge)."""
    s, c = cfg.slices, cfg.compare
    y, p = np.asarray(y, int), np.asarray(p, float)
    out = []
    for column, values in slices.items():
        values = np.asarray(values).astype(str)
        for level in sorted(set(values)):
            mask = values == level
            small = int(mask.sum()) < s.min_size
            b = paired_bootstrap(y[mask], p[mask], None, s.metric, 0 if small else n_bootstrap,
                                 c.confidence, c.seed)
            out.append({"slice": f"{column}={level}", "column": column, "level": level,
                        "n": int(mask.sum()), "metric": s.metric, "value": b["observed"],
                        "ci_low": b["ci_low"], "ci_high": b["ci_high"],
                        "below_min_size": small, "undefined": b["undefined"]})
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
             behaviour: list[dict[str, Any]] | None = None,
             groups: dict[str, np.ndarray] | None = None,
             intervals: int = 0) -> dict[str, Any]:
    """Run every gate; `passed` is True only if all of them pass.

    The first model (no champion) faces the floors, parity, budgets, behaviour and fairness
    checks; the comparison and the per-slice non-regression need a champion. `groups`: the
    values of each `gates.fairness.columns` column on the evaluation set. With `intervals` (a
    number of resamples) the report also holds the challenger's metrics with their bootstrap
    intervals, overall and per slice (the model card's numbers; evaluation.py asks for
    governance.card.n_bootstrap).
    """
    from pipelines.model.fairness import fairness_checks

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
    missing = [c for c in cfg.fairness.columns if c not in (groups or {})]
    if missing:
        raise ValueError(f"gates.fairness.columns {missing}: no values given for the group "
                         f"column(s)")
    fair_checks, fairness = fairness_checks(cfg.fairness, y, p_challenger, groups or {})
    checks += fair_checks
    failed = [c["gate"] for c in checks if not c["passed"]]
    return {
        "passed": not failed,
        "failed": failed,
        "checks": checks,
        "metrics": metrics,
        "comparison": comparison,
        "has_champion": p_champion is not None,
        "fairness": fairness,
        "metric_intervals": (metric_intervals(cfg, y, p_challenger, intervals)
                             if intervals else None),
        "slice_metrics": (slice_metrics(cfg, y, p_challenger, slices or {}, intervals)
                          if intervals else None),
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
    if report.get("card_uri"):
        lines += ["", f"Model card: `{report['card_uri']}` (numbers with intervals, per slice, "
                      f"explanations, datasheet)"]
    lines += ["", "| gate | passed | value | threshold | detail |", "|---|---|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['gate']} | {'yes' if c['passed'] else 'NO'} | {_num(c['value'])} "
                     f"| {_num(c['threshold'])} | {c.get('detail', '')} |")
    if not report["has_champion"]:
        lines += ["", "No champion yet: no comparison or slice gates; floors, ONNX parity, "
                      "budgets, behavioural and fairness checks apply."]
    lines += fairness_markdown(report.get("fairness") or [])
    return "\n".join(lines) + "\n"


def _ci(low: float | None, high: float | None) -> str:
    return "" if low is None else f"[{low:.4f}, {high:.4f}]"


def fairness_markdown(evidence: list[dict[str, Any]]) -> list[str]:
    """The fairness evidence: every group of every column, gated or not, and why not."""
    lines: list[str] = []
    for rep in evidence:
        head = (f"{rep['metric']} at threshold {rep['threshold']:g}; largest gap "
                f"{_num(rep['gap'])} {_ci(rep['gap_ci_low'], rep['gap_ci_high'])} "
                f"(max {rep['max_gap']:g})" if rep["gated"] else f"not gated: {rep['reason']}")
        lines += ["", f"## Fairness by {rep['column']}", "", head, "",
                  f"| group | rows | positives | {rep['metric']} | "
                  f"{rep['confidence']:.0%} CI | gated |", "|---|---|---|---|---|---|"]
        for g in rep["groups"]:
            lines.append(f"| {g['group']} | {g['n']} | {g['positives']} | {_num(g['value'])} | "
                         f"{_ci(g['ci_low'], g['ci_high'])} | "
                         f"{'yes' if g['gated'] else 'no: ' + str(g['reason'])} |")
    return lines
