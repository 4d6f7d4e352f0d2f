"""Drift check of one monitoring interval against the reference (training) data.

`check_drift` samples both sides (`drift.sample_rows`, fixed seed), checks the schema, computes
per-feature PSI (plus the KS statistic for numerics) and the prediction PSI, runs an Evidently
`DataDriftPreset` report on the healthy columns, saves its HTML and returns a JSON-serialisable
verdict. Bad monitoring input (empty interval, missing / all-null / retyped columns) gives a
verdict, never an exception.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from pipelines import storage
from pipelines.config import DriftConfig
from pipelines.drift_stats import ks_statistic, psi, psi_categorical

__all__ = ["check_drift", "psi", "psi_categorical", "schema_issues"]


def _num(value: Any) -> float | None:
    """A plain float for JSON, None for missing / non-finite values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(df) <= n:
        return df.reset_index(drop=True)
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def _kind(series: pd.Series) -> str:
    if ptypes.is_bool_dtype(series):
        return "bool"
    if ptypes.is_numeric_dtype(series):
        return "numeric"
    if ptypes.is_datetime64_any_dtype(series):
        return "datetime"
    return "string"


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
                problem = f"dtype changed: {reference[col].dtype} -> {current[col].dtype}"
        if problem:
            issues.append({"column": col, "issue": problem})
    return issues


def _feature_stats(ref: pd.Series, cur: pd.Series, is_numeric: bool, threshold: float) -> dict[str, Any]:
    if is_numeric:
        value, ks = psi(ref, cur), ks_statistic(ref, cur)
    else:
        value, ks = psi_categorical(ref, cur), None
    return {"psi": _num(value), "ks": _num(ks), "drifted": bool(value > threshold)}


def _prediction_psi(ref: pd.DataFrame, cur: pd.DataFrame, column: str | None) -> float | None:
    if not column or column not in ref.columns or column not in cur.columns:
        return None
    if ptypes.is_numeric_dtype(ref[column]) and ptypes.is_numeric_dtype(cur[column]):
        return _num(psi(ref[column], cur[column]))
    return _num(psi_categorical(ref[column].astype(str), cur[column].astype(str)))


def _run_evidently(
    ref: pd.DataFrame, cur: pd.DataFrame, numeric: list[str], categorical: list[str],
    cfg: DriftConfig, report_uri: str | None,
) -> tuple[dict[str, Any], str | None]:
    """Evidently's DataDriftPreset on the healthy columns; errors are recorded, not raised."""
    columns = [*numeric, *categorical]
    if not columns:
        return {"error": "no healthy columns to compare"}, None
    try:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        def _frame(df: pd.DataFrame) -> pd.DataFrame:
            out = df[columns].copy()
            for col in numeric:
                out[col] = out[col].to_numpy(dtype="float64", na_value=np.nan)
            for col in categorical:
                out[col] = out[col].astype(object)
            return out

        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        snapshot = Report([DataDriftPreset(columns=columns, drift_share=cfg.drift_share)]).run(
            Dataset.from_pandas(_frame(cur), data_definition=definition),
            Dataset.from_pandas(_frame(ref), data_definition=definition),
        )
        result: dict[str, Any] = {"columns": {}}
        for metric in snapshot.dict()["metrics"]:
            config, value = metric.get("config", {}), metric.get("value")
            if config.get("type", "").endswith("DriftedColumnsCount"):
                result["drifted_columns"] = int(value["count"])
                result["drift_share"] = _num(value["share"])
            elif config.get("type", "").endswith("ValueDrift"):
                result["columns"][config["column"]] = {
                    "method": config.get("method"),
                    "threshold": _num(config.get("threshold")),
                    "value": _num(value),
                }
        written = None
        if report_uri:
            html = snapshot.get_html_str(as_iframe=False)
            written = storage.write_bytes(report_uri, html.encode("utf-8"))
        return result, written
    except Exception as exc:  # noqa: BLE001 - a broken report must not hide the verdict
        return {"error": f"{type(exc).__name__}: {exc}"}, None


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    prediction_column: str | None,
    cfg: DriftConfig,
    report_uri: str | None,
) -> dict[str, Any]:
    """Compare `current` against `reference` and return a JSON-serialisable drift verdict."""
    numeric, categorical = list(numeric), list(categorical)
    verdict: dict[str, Any] = {
        "drift": False,
        "reason": "",
        "drift_share": 0.0,
        "features": {},
        "prediction_psi": None,
        "n_reference": 0,
        "n_current": 0,
        "n_reference_total": int(len(reference)),
        "n_current_total": int(len(current)),
        "schema_issues": [],
        "report_uri": None,
        "evidently": None,
        "method": cfg.method,
        "thresholds": {
            "psi": cfg.psi_threshold,
            "drift_share": cfg.drift_share,
            "prediction_psi": cfg.prediction_psi_threshold,
        },
    }
    if len(current) == 0:
        verdict["reason"] = "empty interval"
        return verdict
    if len(reference) == 0:
        verdict["reason"] = "empty reference: nothing to compare against"
        return verdict

    issues = schema_issues(reference, current, numeric, categorical)
    broken = {issue["column"] for issue in issues}
    num_ok = [c for c in numeric if c not in broken]
    cat_ok = [c for c in categorical if c not in broken]

    wanted = [*num_ok, *cat_ok]
    if prediction_column and prediction_column not in wanted:
        wanted.append(prediction_column)
    ref = _sample(reference[[c for c in wanted if c in reference.columns]], cfg.sample_rows, cfg.seed)
    cur = _sample(current[[c for c in wanted if c in current.columns]], cfg.sample_rows, cfg.seed)
    verdict["n_reference"], verdict["n_current"] = int(len(ref)), int(len(cur))
    verdict["schema_issues"] = issues

    features = {
        col: _feature_stats(ref[col], cur[col], col in num_ok, cfg.psi_threshold) for col in [*num_ok, *cat_ok]
    }
    drifted = [col for col, stats in features.items() if stats["drifted"]]
    share = len(drifted) / len(features) if features else 0.0
    pred_psi = _prediction_psi(ref, cur, prediction_column)
    verdict.update(features=features, drift_share=float(share), prediction_psi=pred_psi)

    reasons = []
    if issues:
        cols = ", ".join(f"{i['column']} ({i['issue']})" for i in issues)
        reasons.append(f"schema drift: {cols}")
    feature_drift = bool(drifted) and share >= cfg.drift_share
    if feature_drift:
        reasons.append(
            f"feature drift: {len(drifted)}/{len(features)} features with PSI > {cfg.psi_threshold} "
            f"(share {share:.2f} >= {cfg.drift_share}): {', '.join(drifted)}"
        )
    prediction_drift = pred_psi is not None and pred_psi > cfg.prediction_psi_threshold
    if prediction_drift:
        reasons.append(f"prediction drift: PSI {pred_psi:.3f} > {cfg.prediction_psi_threshold}")
    verdict["drift"] = bool(issues) or feature_drift or prediction_drift
    if not reasons:
        reasons.append(
            f"no drift: {len(drifted)}/{len(features)} features with PSI > {cfg.psi_threshold}"
            + (f" ({', '.join(drifted)})" if drifted else "")
            + (f", prediction PSI {pred_psi:.3f}" if pred_psi is not None else "")
        )
    verdict["reason"] = "; ".join(reasons)

    verdict["evidently"], verdict["report_uri"] = _run_evidently(ref, cur, num_ok, cat_ok, cfg, report_uri)
    return verdict
