"""Pure drift statistics: PSI (numeric, categorical), the KS statistic, and the drifted rule.

The verdict and the Evidently report both compute a column's PSI with `column_psi` and judge it
with `is_drifted`, so the two cannot disagree on a column. Quality metrics (ROC AUC, calibration,
Brier) are in `pipelines.model.metrics`, shared with the gates.

PSI = sum_i (p_cur_i - p_ref_i) * ln(p_cur_i / p_ref_i) over bins. Numeric bins are quantiles of
the reference (ties collapse), missing values are a bin of their own, and empty bins are floored
at `EPS` so a bin present on one side only gives a large but finite contribution.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

EPS = 1e-4
_MISSING = "__missing__"


def _as_float(values: Any) -> np.ndarray:
    if isinstance(values, (pd.Series, pd.Index)):
        return values.to_numpy(dtype="float64", na_value=np.nan)
    return np.asarray(values, dtype="float64").ravel()


def _psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    ref_p = np.clip(ref_counts / max(ref_counts.sum(), 1), EPS, None)
    cur_p = np.clip(cur_counts / max(cur_counts.sum(), 1), EPS, None)
    return float(np.sum((cur_p - ref_p) * np.log(cur_p / ref_p)))


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Interior bin edges: the reference's quantiles, deduplicated (point masses collapse)."""
    ref = _as_float(reference)
    finite = ref[np.isfinite(ref)]
    if finite.size == 0 or bins < 2:
        return np.empty(0)
    return np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin (len(edges) + 1 value bins, then one bin for NaN)."""
    nan = np.isnan(values)
    idx = np.searchsorted(edges, values[~nan], side="left")
    counts = np.bincount(idx, minlength=edges.size + 1).astype("float64")
    return np.append(counts, float(nan.sum()))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of a numeric feature; NaN when either side has no rows at all."""
    ref, cur = _as_float(reference), _as_float(current)
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    edges = quantile_edges(ref, bins)
    return _psi_from_counts(_bin_counts(ref, edges), _bin_counts(cur, edges))


def psi_categorical(reference: Any, current: Any) -> float:
    """PSI over the union of levels; levels unseen in the reference are categories of their own."""
    ref = pd.Series(np.asarray(reference, dtype=object).ravel(), dtype=object)
    cur = pd.Series(np.asarray(current, dtype=object).ravel(), dtype=object)
    if ref.empty or cur.empty:
        return float("nan")
    ref_counts = ref.where(ref.notna(), _MISSING).value_counts()
    cur_counts = cur.where(cur.notna(), _MISSING).value_counts()
    both = pd.concat([ref_counts.rename("ref"), cur_counts.rename("cur")], axis=1).fillna(0.0)
    return _psi_from_counts(both["ref"].to_numpy(float), both["cur"].to_numpy(float))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic on the non-missing values (NaN if a side has none).

    The statistic `scipy.stats.ks_2samp` reports (max |F_ref - F_cur| over all values), without
    its p-value: at monitoring sample sizes every p-value is tiny, the distance is what counts.
    """
    ref, cur = _as_float(reference), _as_float(current)
    ref, cur = np.sort(ref[~np.isnan(ref)]), np.sort(cur[~np.isnan(cur)])
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    values = np.unique(np.concatenate([ref, cur]))  # the gap only changes at a value: ties once
    gap = (np.searchsorted(ref, values, side="right") / ref.size
           - np.searchsorted(cur, values, side="right") / cur.size)
    return float(np.abs(gap).max())


def new_levels(reference: Any, current: Any, limit: int = 10) -> list[str]:
    """Levels of a categorical column present in `current` but never in `reference`."""
    ref = set(pd.Series(np.asarray(reference, dtype=object).ravel()).dropna().astype(str))
    cur = pd.Series(np.asarray(current, dtype=object).ravel()).dropna().astype(str)
    return sorted(set(cur.unique()) - ref)[:limit]


def column_psi(reference: pd.Series, current: pd.Series, kind: str) -> float:
    """PSI of one column as the drift verdict computes it.

    kind: `numeric` (reference quantile bins, missing values a bin of their own), `categorical`
    (levels, missing a level), or `prediction` (the rows without a prediction are left out:
    another model version scored them; numeric or not by dtype).
    """
    if kind == "prediction":
        reference, current = reference.dropna(), current.dropna()
        if not (ptypes.is_numeric_dtype(reference) and ptypes.is_numeric_dtype(current)):
            return psi_categorical(reference.astype(str), current.astype(str))
        kind = "numeric"
    if kind == "numeric":
        return psi(reference, current)
    if kind == "categorical":
        return psi_categorical(reference, current)
    raise ValueError(f"unknown column kind {kind!r}: numeric, categorical or prediction")


def is_drifted(value: float | None, threshold: float) -> bool:
    """A column drifts when its PSI exceeds its threshold (an undefined PSI never drifts)."""
    return value is not None and math.isfinite(value) and value > threshold
