"""Drift check of one monitoring interval against the reference (training) data.

`check_drift` first asks whether there is enough to judge: fewer than `drift.min_rows` rows
(an empty interval included) or fewer scored days than `drift.required_days` is "insufficient
data", never drift (a PSI of a few rows is noise). Then it samples both sides
(`drift.sample_rows`, fixed seed, sizes recorded), checks the schema, computes per-feature PSI
(plus the KS statistic for numerics) against each feature's threshold and weight from config,
the weighted share of drifted features and the prediction PSI, runs the Evidently report on the
healthy columns with the same PSI and thresholds (`pipelines.monitoring.report`), saves its HTML
and returns a JSON-serialisable verdict. Bad monitoring input (missing / all-null / retyped
columns, new categories) gives a verdict, never an exception.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from pipelines.core.config import DriftConfig
from pipelines.monitoring.report import evidently_report
from pipelines.monitoring.stats import column_psi, is_drifted, ks_statistic, new_levels

__all__ = ["INSUFFICIENT", "check_drift", "schema_issues"]
INSUFFICIENT = "insufficient data"


def _num(value: Any) -> float | None:
    """A plain float for JSON, None for missing / non-finite values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _sample(df: pd.DataFrame, columns: list[str], n: int, seed: int) -> pd.DataFrame:
    """At most `n` rows drawn without replacement with a fixed seed (small frames: as they are,
    not copied; only `columns` are read)."""
    if len(df) <= n:
        return df
    positions = [df.columns.get_loc(c) for c in columns if c in df.columns]
    rows = np.sort(np.random.default_rng(seed).choice(len(df), size=n, replace=False))
    return df.iloc[rows, positions].reset_index(drop=True)


def _kind(series: pd.Series) -> str:
    if ptypes.is_bool_dtype(series):
        return "bool"
    if ptypes.is_numeric_dtype(series):
        return "numeric"
    if ptypes.is_datetime64_any_dtype(series):
        return "datetime"
    return "string"


def _retyped(ref: pd.Series, cur: pd.Series) -> str:
    note = f"dtype changed: {ref.dtype} -> {cur.dtype}"
    if _kind(ref) == "numeric" and _kind(cur) == "string":
        text = cur.dropna().astype(str).str.strip()
        text = text[~text.str.lower().isin(["", "nan", "none", "null", "<na>"])]
        if len(text) and pd.to_numeric(text, errors="coerce").notna().all():
            note += " (numbers stored as strings)"
    return note


def schema_issues(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> list[dict[str, str]]:
    """Columns that cannot be compared: missing on a side, all-null on a side, or retyped."""
    issues: list[dict[str, str]] = []
    for col in [*numeric, *categorical]:
        problem = None
        sides = {"reference": reference, "current": current}
        missing = [side for side, df in sides.items() if col not in df.columns]
        if missing:
            problem = f"missing in {' and '.join(missing)}"
        else:
            null = [side for side, df in sides.items() if not df[col].notna().any()]
            ref_kind, cur_kind = _kind(reference[col]), _kind(current[col])
            if null:
                problem = f"all null in {' and '.join(null)}"
            elif col in numeric and ref_kind == cur_kind and ref_kind not in ("numeric", "bool"):
                problem = f"not numeric on either side ({reference[col].dtype})"
            elif ref_kind != cur_kind and {ref_kind, cur_kind} != {"numeric", "bool"}:
                problem = _retyped(reference[col], current[col])
        if problem:
            issues.append({"column": col, "issue": problem})
    return issues


def _feature_stats(ref: pd.Series, cur: pd.Series, is_numeric: bool, cfg: DriftConfig) -> dict[str, Any]:
    threshold, weight = cfg.rule(str(ref.name))
    value = column_psi(ref, cur, "numeric" if is_numeric else "categorical")
    stats = {"psi": _num(value), "ks": _num(ks_statistic(ref, cur)) if is_numeric else None,
             "threshold": threshold, "weight": weight, "drifted": is_drifted(value, threshold)}
    unseen = [] if is_numeric else new_levels(ref, cur)
    if unseen:
        stats["new_levels"] = unseen
    return stats


def _too_little(cfg: DriftConfig, n_reference: int, n_current: int, days: int | None,
                what: str = "rows") -> str | None:
    """Why there is not enough data for a verdict, or None."""
    if n_current < cfg.min_rows:
        return f"{n_current} {what} in the window < drift.min_rows {cfg.min_rows}"
    if days is not None and days < cfg.required_days:
        return f"{days} scored day(s) in the window < {cfg.required_days} (drift.min_days)"
    if n_reference < cfg.min_rows:
        return f"{n_reference} reference {what} < drift.min_rows {cfg.min_rows}"
    return None


def _prediction_psi(ref: pd.DataFrame, cur: pd.DataFrame, column: str | None, cfg: DriftConfig,
                    days: int | None) -> tuple[float | None, int, str | None]:
    """(PSI, rows, why not judged) of the predictions on the rows that have one (rows scored by
    another model version: NaN); None below the same minimums as the features."""
    if not column or column not in ref.columns or column not in cur.columns:
        return None, 0, None
    n = int(cur[column].notna().sum())
    if n == 0 or not ref[column].notna().any():
        return None, n, "no predictions of this model version in the window"
    short = _too_little(cfg, int(ref[column].notna().sum()), n, days, what="predictions")
    if short:
        return None, n, f"prediction PSI not judged: {short}"
    return _num(column_psi(ref[column], cur[column], "prediction")), n, None


def _reason(features: dict[str, Any], share: float, cfg: DriftConfig, issues: list[dict[str, str]],
            pred_psi: float | None, pred_note: str | None,
            new_categories: dict[str, list[str]]) -> tuple[bool, bool, str]:
    """(drift, drift Evidently can see: features or prediction, reason)."""
    drifted = [f"{c} (PSI {s['psi']:.2f} > {s['threshold']:g}, weight {s['weight']:g})"
               for c, s in features.items() if s["drifted"]]
    reasons = []
    if issues:
        reasons.append("schema drift: " + ", ".join(f"{i['column']} ({i['issue']})" for i in issues))
    feature_drift = bool(drifted) and share >= cfg.drift_share
    if feature_drift:
        reasons.append(f"feature drift: weighted share {share:.3f} >= {cfg.drift_share:g}: "
                       + ", ".join(drifted))
    prediction_drift = is_drifted(pred_psi, cfg.prediction_psi_threshold)
    if prediction_drift:
        reasons.append(f"prediction drift: PSI {pred_psi:.3f} > {cfg.prediction_psi_threshold:g}")
    if new_categories:
        reasons.append("new categories: " + ", ".join(f"{c} {v}" for c, v in new_categories.items()))
    if pred_note:
        reasons.append(pred_note)
    drift = bool(issues) or feature_drift or prediction_drift
    if not drift:
        reasons.insert(0, f"no drift: weighted share {share:.3f} < {cfg.drift_share:g}"
                       + (f" ({', '.join(drifted)})" if drifted else "")
                       + (f", prediction PSI {pred_psi:.3f}" if pred_psi is not None else ""))
    return drift, feature_drift or prediction_drift, "; ".join(reasons)


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    prediction_column: str | None,
    cfg: DriftConfig,
    report_uri: str | None,
    *,
    report: bool = True,
    days: int | None = None,
    prediction_days: int | None = None,
) -> dict[str, Any]:
    """Compare `current` against `reference` and return a JSON-serialisable drift verdict.

    `days`: scored days in the current window, `prediction_days`: those scored by the model
    version the predictions are compared with (None: not a windowed check, rows only).
    `report=False` skips the Evidently report (the verdict does not depend on it).
    """
    numeric, categorical = list(numeric), list(categorical)
    verdict: dict[str, Any] = {
        "drift": False, "status": "ok", "reason": "", "drift_share": 0.0, "drifted": [],
        "features": {}, "prediction_psi": None, "n_prediction": 0,
        "n_reference": 0, "n_current": 0,
        "n_reference_total": len(reference), "n_current_total": len(current), "days": days,
        "sample_rows": cfg.sample_rows, "seed": cfg.seed,
        "schema_issues": [], "new_categories": {}, "report_uri": None, "evidently": None,
        "method": cfg.method,
        "thresholds": {"psi_default": cfg.psi_threshold, "drift_share": cfg.drift_share,
                       "prediction_psi": cfg.prediction_psi_threshold,
                       "min_rows": cfg.min_rows, "min_days": cfg.required_days},
    }
    short = _too_little(cfg, len(reference), len(current), days)
    if short:
        verdict.update(status=INSUFFICIENT, reason=f"{INSUFFICIENT}: {short}; no drift verdict")
        return verdict

    issues = schema_issues(reference, current, numeric, categorical)
    broken = {issue["column"] for issue in issues}
    num_ok = [c for c in numeric if c not in broken]
    cat_ok = [c for c in categorical if c not in broken]
    wanted = [*num_ok, *cat_ok]
    if prediction_column and prediction_column not in wanted:
        wanted.append(prediction_column)
    ref = _sample(reference, wanted, cfg.sample_rows, cfg.seed)
    cur = _sample(current, wanted, cfg.sample_rows, cfg.seed)

    features = {col: _feature_stats(ref[col], cur[col], col in num_ok, cfg) for col in wanted
                if col in num_ok or col in cat_ok}
    total = sum(s["weight"] for s in features.values())
    share = sum(s["weight"] for s in features.values() if s["drifted"]) / total if total else 0.0
    pred_psi, n_pred, pred_note = _prediction_psi(ref, cur, prediction_column, cfg, prediction_days)
    new_categories = {c: s["new_levels"] for c, s in features.items() if s.get("new_levels")}
    drift, seen_drift, reason = _reason(features, share, cfg, issues, pred_psi, pred_note, new_categories)
    drifted = [c for c, s in features.items() if s["drifted"]]
    verdict.update(
        drift=drift, reason=reason, features=features, drift_share=float(share), drifted=drifted,
        prediction_psi=pred_psi, n_prediction=n_pred, n_reference=len(ref),
        n_current=len(cur), schema_issues=issues, new_categories=new_categories,
        status="schema drift" if issues else "ok",
    )
    if report:
        columns = {c: ("numeric" if c in num_ok else "categorical", s["threshold"])
                   for c, s in features.items()}
        over = list(drifted)
        if pred_psi is not None:
            columns[str(prediction_column)] = ("prediction", cfg.prediction_psi_threshold)
            if is_drifted(pred_psi, cfg.prediction_psi_threshold):
                over.append(str(prediction_column))
        verdict["evidently"], verdict["report_uri"] = evidently_report(
            ref, cur, columns, over, seen_drift, report_uri)
    return verdict
