"""Fairness by group as a gate: per configured group column, a rate of the challenger's labels
(e.g. its false negative rate) in every group, with bootstrap intervals (fairlearn's
`MetricFrame`), and a check on the largest gap between the groups large enough to judge.

Groups below `min_size` rows, or without the rows the rate divides by (a false negative rate
of a group with no positives), are reported with their numbers and the reason, never gated;
a column with fewer than two groups left to compare is reported as not gated.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.core.config import FairnessGate
from pipelines.model.metrics import RATE_NEEDS, hard_labels, rate_function


def _undefined(cfg: FairnessGate, y: np.ndarray) -> str | None:
    """Why the rate has no value on these rows (None: it has one)."""
    need = RATE_NEEDS[cfg.metric]
    if len(y) == 0 or (need is not None and not (y == need).any()):
        return f"{cfg.metric} is undefined: no {'positive' if need else 'negative'} rows"
    return None


def _why_not_gated(cfg: FairnessGate, y: np.ndarray) -> str | None:
    reasons = [f"{len(y)} rows < min_size {cfg.min_size}" if len(y) < cfg.min_size else None,
               _undefined(cfg, y)]
    return "; ".join(r for r in reasons if r) or None


def _interval(frame: Any, name: str) -> tuple[Any, Any]:
    """(low, high) of a MetricFrame's bootstrap (by_group or difference), or (None, None)."""
    if not frame.n_boot:
        return None, None
    value = getattr(frame, name)
    value = value() if callable(value) else value  # difference_ci is a method
    return value[0], value[-1]


def group_report(cfg: FairnessGate, column: str, y: Any, p: Any,
                 groups: Any) -> dict[str, Any]:
    """Every group of one column: rows, positives, the rate (and its interval when gated), and
    the largest gap between the gated groups with its interval."""
    from fairlearn.metrics import MetricFrame

    fn = rate_function(cfg.metric)
    y = np.asarray(y, int).ravel()
    labels = hard_labels(p, cfg.threshold)
    groups = np.asarray(groups).astype(str)
    rows, gated = [], []
    for level in sorted(set(groups)):
        mask = groups == level
        why = _why_not_gated(cfg, y[mask])
        value = None if _undefined(cfg, y[mask]) else float(fn(y[mask], labels[mask]))
        rows.append({"group": level, "n": int(mask.sum()), "positives": int(y[mask].sum()),
                     "value": value, "ci_low": None, "ci_high": None, "gated": why is None,
                     "reason": why})
        if why is None:
            gated.append(level)
    out: dict[str, Any] = {"column": column, "metric": cfg.metric, "threshold": cfg.threshold,
                           "max_gap": cfg.max_gap, "min_size": cfg.min_size, "groups": rows,
                           "gap": None, "gap_ci_low": None, "gap_ci_high": None, "highest": None,
                           "lowest": None, "confidence": cfg.confidence,
                           "n_bootstrap": cfg.n_bootstrap, "gated": len(gated) >= 2}
    if len(gated) < 2:
        out["reason"] = (f"{len(gated)} group(s) with at least {cfg.min_size} rows and a defined "
                         f"{cfg.metric}: nothing to compare")
        return out
    keep = np.isin(groups, gated)
    alpha = (1.0 - cfg.confidence) / 2.0
    boot = {"n_boot": cfg.n_bootstrap, "ci_quantiles": [alpha, 1.0 - alpha],
            "random_state": cfg.seed} if cfg.n_bootstrap else {}
    frame = MetricFrame(metrics=fn, y_true=y[keep], y_pred=labels[keep],
                        sensitive_features=groups[keep], **boot)
    by_group = frame.by_group
    low, high = _interval(frame, "by_group_ci")
    for row in rows:
        if row["gated"]:
            row["value"] = float(by_group[row["group"]])
            if low is not None:
                row["ci_low"], row["ci_high"] = float(low[row["group"]]), float(high[row["group"]])
    gap_low, gap_high = _interval(frame, "difference_ci")
    out.update(gap=float(frame.difference()), highest=str(by_group.idxmax()),
               lowest=str(by_group.idxmin()),
               gap_ci_low=None if gap_low is None else float(gap_low),
               gap_ci_high=None if gap_high is None else float(gap_high))
    return out


def fairness_checks(cfg: FairnessGate, y: Any, p: Any,
                    groups: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(checks, evidence): one check per group column that has two groups to compare (the
    largest gap of `cfg.metric` must not exceed `cfg.max_gap`), and every column's report."""
    checks, evidence = [], []
    for column in cfg.columns:
        rep = group_report(cfg, column, y, p, groups[column])
        evidence.append(rep)
        if not rep["gated"]:
            continue
        lo, hi = rep["gap_ci_low"], rep["gap_ci_high"]
        ci = (f", {cfg.confidence:.0%} CI [{lo:.4f}, {hi:.4f}]" if lo is not None else "")
        high = next(g for g in rep["groups"] if g["group"] == rep["highest"])
        low = next(g for g in rep["groups"] if g["group"] == rep["lowest"])
        checks.append({
            "gate": f"fairness:{column}", "passed": bool(rep["gap"] <= cfg.max_gap),
            "value": rep["gap"], "threshold": cfg.max_gap,
            "detail": (f"{cfg.metric} gap {rep['gap']:.4f}{ci}: {rep['highest']} "
                       f"{high['value']:.4f} (n={high['n']}) vs {rep['lowest']} "
                       f"{low['value']:.4f} (n={low['n']}); "
                       f"{sum(not g['gated'] for g in rep['groups'])} group(s) not gated")})
    return checks, evidence
