"""The Evidently report of a drift check, computed with the verdict's own statistic and thresholds.

Left to its defaults, Evidently's `DataDriftPreset` picks a test per column (KS, chi-square,
Wasserstein, ...) with its own thresholds, so the HTML a person reads could show drift where the
verdict shows none. Here every column is tested with `project_psi`, an Evidently stat test whose
implementation is the verdict's `column_psi` on the verdict's own rows (Evidently's built-in
"psi" bins differently and drops missing values, which the verdict counts as a bin), judged by
`is_drifted` at that column's threshold from `params.yaml`.

Evidently's dataset-level test counts drifted columns unweighted ("share of drifted columns less
than X"), the verdict weighs them; X is therefore set for each report to the unweighted share
at which this window's verdict decides: the drifted share when the verdict says drift, just above
it when it does not. Both are recorded in the verdict's `evidently` summary.
"""

from __future__ import annotations

from contextvars import ContextVar
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import storage
from pipelines.monitoring.stats import column_psi, is_drifted

__all__ = ["STATTEST", "evidently_report"]

STATTEST = "project_psi"
# The rows the stat test reads while a report runs: {"ref", "cur", "kinds", "values"}.
_INPUTS: ContextVar[dict[str, Any] | None] = ContextVar("project_psi_inputs", default=None)


def _project_psi(reference: pd.Series, current: pd.Series, feature_type: Any,
                 threshold: float) -> tuple[float, bool]:
    """Evidently stat test: the verdict's PSI of this column (Evidently passes the column without
    its missing values, so the rows come from the report's inputs, by column name)."""
    inputs, name = _INPUTS.get(), reference.name
    if inputs is None or name not in inputs["kinds"]:
        raise RuntimeError(f"{STATTEST} runs only inside evidently_report, on its columns ({name!r})")
    values = inputs["values"]
    if name not in values:  # Evidently asks once per metric and widget: compute once
        values[name] = column_psi(inputs["ref"][name], inputs["cur"][name], inputs["kinds"][name])
    return values[name], is_drifted(values[name], threshold)


@cache
def _register() -> None:
    """Register `project_psi` with Evidently (once per process)."""
    from evidently.legacy.calculations.stattests.registry import (
        StatTest,
        register_stattest,
    )
    from evidently.legacy.core import ColumnType

    register_stattest(StatTest(name=STATTEST, display_name="PSI (project: quantile bins, missing bin)",
                               allowed_feature_types=[ColumnType.Numerical, ColumnType.Categorical]),
                      _project_psi)


def _dataset_share(n_drifted: int, n_columns: int, drift: bool) -> float:
    """Evidently's unweighted share threshold that gives this window the verdict's decision
    (Evidently: drift when drifted / columns >= share)."""
    return n_drifted / n_columns if drift else (n_drifted + 1) / n_columns


def evidently_report(reference: pd.DataFrame, current: pd.DataFrame,
                     columns: dict[str, tuple[str, float]], drifted: list[str], drift: bool,
                     report_uri: str | None) -> tuple[dict[str, Any], str | None]:
    """Run Evidently on `columns` (name -> (kind, PSI threshold)); `drifted` and `drift` are the
    verdict's columns over their threshold and its decision on these columns (they set the
    dataset-level share). Returns a summary and the written HTML's URI; an Evidently failure
    is recorded in the summary, not raised (the verdict does not depend on it)."""
    if not columns:
        return {"error": "no columns to compare"}, None
    names = list(columns)
    numeric = [c for c, (kind, _) in columns.items()
               if kind == "numeric" or (kind == "prediction" and pd.api.types.is_numeric_dtype(current[c]))]
    categorical = [c for c in names if c not in numeric]
    token = _INPUTS.set({"ref": reference, "cur": current, "values": {},
                         "kinds": {c: kind for c, (kind, _) in columns.items()}})
    try:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        _register()

        def frame(df: pd.DataFrame) -> pd.DataFrame:
            out = df[names].copy()
            for col in numeric:
                out[col] = out[col].to_numpy(dtype="float64", na_value=np.nan)
            for col in categorical:
                out[col] = out[col].astype(object)
            return out

        share = _dataset_share(len([c for c in drifted if c in columns]), len(names), drift)
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        preset = DataDriftPreset(columns=names, drift_share=share,
                                 per_column_method={c: STATTEST for c in names},
                                 per_column_threshold={c: thr for c, (_, thr) in columns.items()})
        snapshot = Report([preset], include_tests=True).run(
            Dataset.from_pandas(frame(current), data_definition=definition),
            Dataset.from_pandas(frame(reference), data_definition=definition))
        summary = _summary(snapshot.dict(), share)
        written = None
        if report_uri:
            html = snapshot.get_html_str(as_iframe=False)
            written = storage.write_bytes(report_uri, html.encode("utf-8"))
        return summary, written
    except Exception as exc:  # noqa: BLE001 - a broken report must not hide the verdict
        return {"error": f"{type(exc).__name__}: {exc}"}, None
    finally:
        _INPUTS.reset(token)


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(float(value)) else None


def _summary(result: dict[str, Any], share: float) -> dict[str, Any]:
    """Evidently's own per-column decisions (its test statuses) and its dataset-level test."""
    summary: dict[str, Any] = {"method": STATTEST, "columns": {}, "drift_share_threshold": share}
    for metric in result["metrics"]:
        config, value = metric.get("config", {}), metric.get("value")
        if config.get("type", "").endswith("DriftedColumnsCount"):
            summary["drifted_columns"], summary["drift_share"] = int(value["count"]), float(value["share"])
        elif config.get("type", "").endswith("ValueDrift"):
            summary["columns"][config["column"]] = {"method": config.get("method"),
                                                    "threshold": config.get("threshold"),
                                                    "value": _finite(value)}
    for test in result.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith("ValueDrift") and params.get("column") in summary["columns"]:
            summary["columns"][params["column"]]["drifted"] = test["status"] == "FAIL"
        elif params.get("type", "").endswith("DriftedColumnsCount"):
            summary["dataset_drift"] = test["status"] == "FAIL"
    summary["drifted"] = sorted(c for c, s in summary["columns"].items() if s.get("drifted"))
    return summary
