"""Quality metrics of predicted probabilities: the one implementation of each.

The gates judge a model on its evaluation set with these, training logs them as the model's
baseline, and live monitoring computes the same functions on labelled predictions, so a decay
check compares numbers of the same definition (same bins, same Brier). A metric that is
undefined on the given rows (an AUC with one class, anything with no rows) is None, never NaN:
NaN compares False with every threshold without saying why and is not valid JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

CALIBRATION_BINS = 10  # equal-width probability bins of the calibration error
LOWER_IS_BETTER = frozenset({"brier", "calibration_error"})


def _arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype="float64").ravel(), np.asarray(p, dtype="float64").ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    return y, p


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < y.sum() < y.size


def roc_auc(y: Any, p: Any) -> float | None:
    """Area under the ROC curve; None unless both classes are present."""
    from sklearn.metrics import roc_auc_score

    y, p = _arrays(y, p)
    return float(roc_auc_score(y, p)) if _both_classes(y) else None


def pr_auc(y: Any, p: Any) -> float | None:
    """Average precision (area under the precision-recall curve); None unless both classes are
    present (with no positives recall is undefined; with no negatives it is trivially 1)."""
    from sklearn.metrics import average_precision_score

    y, p = _arrays(y, p)
    return float(average_precision_score(y, p)) if _both_classes(y) else None


def brier_terms(y: Any, p: Any) -> np.ndarray:
    """Each row's squared error (its term of the Brier score; the A/B test's per-row loss)."""
    y, p = _arrays(y, p)
    return (p - y) ** 2


def brier(y: Any, p: Any) -> float | None:
    """Mean squared error of the probabilities; None with no rows."""
    terms = brier_terms(y, p)
    return float(np.mean(terms)) if terms.size else None


def calibration_error(y: Any, p: Any, bins: int = CALIBRATION_BINS) -> float | None:
    """Expected calibration error over equal-width probability bins, weighted by rows:
    sum over bins of |sum(y) - sum(p)| / n. None with no rows."""
    y, p = _arrays(y, p)
    if not y.size:
        return None
    idx = np.clip(np.digitize(p, np.linspace(0.0, 1.0, bins + 1)[1:-1]), 0, bins - 1)
    gap = np.abs(np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=p, minlength=bins))
    return float(gap.sum() / y.size)


METRICS: dict[str, Callable[[Any, Any], float | None]] = {
    "roc_auc": roc_auc,
    "pr_auc": pr_auc,
    "brier": brier,
    "calibration_error": calibration_error,
}


def compute_metrics(y: Any, p: Any) -> dict[str, float | int | None]:
    """Every metric of `METRICS` plus n, positive rate and mean prediction (None when undefined)."""
    y, p = _arrays(y, p)
    out: dict[str, float | int | None] = {name: fn(y, p) for name, fn in METRICS.items()}
    out.update(n=int(y.size), positive_rate=float(y.mean()) if y.size else None,
               mean_prediction=float(p.mean()) if y.size else None)
    return out


# Rates of hard labels (`probability >= threshold`): what the fairness gate compares between
# groups. fairlearn's definitions (sklearn's confusion matrix underneath); each needs rows of
# the class it divides by (`RATE_NEEDS`: 1 = positives, 0 = negatives, None = any row).
RATE_NEEDS: dict[str, int | None] = {"false_negative_rate": 1, "true_positive_rate": 1,
                                     "false_positive_rate": 0, "selection_rate": None}


def rate_function(name: str) -> Callable[[Any, Any], float]:
    """fairlearn's function of a rate of `RATE_NEEDS` (y_true, y_pred labels) -> float."""
    import fairlearn.metrics as fm

    if name not in RATE_NEEDS:
        raise ValueError(f"unknown rate {name!r}; one of {sorted(RATE_NEEDS)}")
    return getattr(fm, name)


def hard_labels(p: Any, threshold: float) -> np.ndarray:
    """The labels a probability means at `threshold` (1 when p >= threshold)."""
    return (np.asarray(p, dtype="float64").ravel() >= threshold).astype(int)
