"""The datasheet of a training set (after Gebru et al., "Datasheets for Datasets"): what the
rows are, when they happened, how the classes balance, what is missing, each feature's
summary, the hashes of the sources read and the validation result. Written by the training
run beside the model card (which links it), from the very bytes the model was fitted on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.contracts import TrainingSet
from pipelines.core.settings import Settings
from pipelines.data.events import EVENT_TIME, LABEL_AT, PREDICTION_TIME, ROW_KEY

TOP_VALUES = 5  # most frequent values listed per categorical


def _role(col: str, label: str, numeric: list[str], categorical: list[str]) -> str:
    if col == label:
        return "label"
    if col in numeric:
        return "numeric input"
    if col in categorical:
        return "categorical input"
    if col == ROW_KEY:
        return "row key"
    if col in (EVENT_TIME, PREDICTION_TIME, LABEL_AT):
        return "time"
    return "carried (not a model input)"


def _iso(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).isoformat()


def _summary(s: pd.Series, role: str) -> dict[str, Any]:
    if role == "numeric input" or (role.startswith("carried") and pd.api.types.is_numeric_dtype(s)
                                   and not pd.api.types.is_bool_dtype(s)):
        v = pd.to_numeric(s, errors="coerce").astype(float)
        v = v[np.isfinite(v)]
        if v.empty:
            return {"kind": "numeric", "count": 0}
        q = v.quantile([0.05, 0.5, 0.95])
        return {"kind": "numeric", "count": int(v.size), "mean": float(v.mean()),
                "std": float(v.std(ddof=0)), "min": float(v.min()), "p05": float(q[0.05]),
                "median": float(q[0.5]), "p95": float(q[0.95]), "max": float(v.max())}
    if role == "row key":
        return {"kind": "key", "distinct": int(s.nunique(dropna=True))}
    if role == "time":
        return {"kind": "time", "min": _iso(s.min()), "max": _iso(s.max())}
    counts = s.astype("string").value_counts(dropna=True)
    return {"kind": "categorical", "distinct": int(counts.size),
            "top": [{"value": str(k), "rows": int(n)} for k, n in counts.head(TOP_VALUES).items()]}


def validation_result(settings: Settings, training_set: TrainingSet) -> dict[str, Any]:
    """The training-set suite's result for these bytes (pipelines.data.checks), if it ran."""
    from pipelines.data.checks import TRAINING_SET

    uri = locations.validation_report(settings, TRAINING_SET,
                                      f"{training_set['start']}_{training_set['end']}")
    report = storage.read_json_if_exists(uri)
    if report is None:
        return {"status": "not validated", "report_uri": uri,
                "detail": "no training-set validation report at this location"}
    same = report.get("batch_uri") == training_set["uri"]
    return {"status": ("passed" if report.get("success") else "FAILED") if same else "other data",
            "report_uri": uri, "suite": report.get("suite"),
            "suite_sha256": report.get("suite_sha256"), "validated_at": report.get("validated_at"),
            "checks": report.get("n_checks"), "failures": len(report.get("failures") or []),
            "warnings": len(report.get("warnings") or []),
            "data_docs_uri": report.get("data_docs_uri")}


def build(cfg: Config, settings: Settings, training_set: TrainingSet, df: pd.DataFrame,
          train_rows: int, numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    """The datasheet of `df`, the rows of `training_set` (the first `train_rows` by time fit the
    model, the rest is the evaluation set)."""
    label = cfg.dataset.label.name
    y = df[label]
    columns = []
    for col in df.columns:
        role = _role(col, label, numeric, categorical)
        columns.append({"name": col, "dtype": str(df[col].dtype), "role": role,
                        "missing": int(df[col].isna().sum()),
                        "missing_rate": float(df[col].isna().mean()) if len(df) else 0.0,
                        "summary": _summary(df[col], role) if role != "label" else None})
    times = df[EVENT_TIME] if EVENT_TIME in df else df[PREDICTION_TIME]
    return {
        "name": f"training set {training_set['start']}..{training_set['end']}",
        "uri": training_set["uri"], "sha256": training_set["sha256"],
        "window": {"start": training_set["start"], "end": training_set["end"]},
        "time_span": {"column": times.name, "first": _iso(times.min()), "last": _iso(times.max())},
        "rows": {"total": int(len(df)), "train": int(train_rows),
                 "evaluation": int(len(df) - train_rows)},
        "label": {"name": label, "definition": cfg.dataset.label.expr,
                  "positives": int(y.sum()), "negatives": int(len(y) - y.sum()),
                  "positive_rate": float(y.mean()) if len(y) else None},
        "columns": columns,
        "sources": {"training_data_sha256": training_set["sha256"],
                    "landing_batches_sha256": training_set.get("data_sha256"),
                    "expectations_sha256": training_set.get("expectations_sha256"),
                    "dvc_data_version": training_set.get("dvc_data_version"),
                    "feature_service": training_set["feature_service"],
                    "feature_service_hash": training_set["feature_service_hash"]},
        "validation": validation_result(settings, training_set),
    }


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_markdown(sheet: dict[str, Any]) -> str:
    rows, lab, span, val = sheet["rows"], sheet["label"], sheet["time_span"], sheet["validation"]
    lines = [f"# Datasheet: {sheet['name']}", "",
             f"- file: `{sheet['uri']}` (sha256 `{sheet['sha256']}`)",
             f"- window: [{sheet['window']['start']}, {sheet['window']['end']}); events from "
             f"{span['first']} to {span['last']} (`{span['column']}`)",
             f"- rows: {rows['total']} ({rows['train']} training, {rows['evaluation']} "
             f"evaluation: the latest by time)",
             f"- label `{lab['name']}` = `{lab['definition']}`: {lab['positives']} positive, "
             f"{lab['negatives']} negative (positive rate {_num(lab['positive_rate'])})",
             f"- validation: **{val['status']}**"
             + (f" ({val['checks']} checks, {val['failures']} failures, {val['warnings']} "
                f"warnings; suite sha256 `{val['suite_sha256']}`)" if "checks" in val else
                f" ({val['detail']})") + f"; report `{val['report_uri']}`",
             "", "## Sources", ""]
    lines += [f"- {k}: `{v}`" for k, v in sheet["sources"].items()]
    lines += ["", "## Columns", "", "| column | dtype | role | missing | summary |",
              "|---|---|---|---|---|"]
    for c in sheet["columns"]:
        s = c["summary"] or {}
        if s.get("kind") == "numeric" and s.get("count"):
            text = (f"mean {_num(s['mean'])}, sd {_num(s['std'])}, min {_num(s['min'])}, "
                    f"median {_num(s['median'])}, max {_num(s['max'])}")
        elif s.get("kind") == "categorical":
            text = f"{s['distinct']} distinct; top " + ", ".join(
                f"{t['value']} ({t['rows']})" for t in s["top"])
        elif s.get("kind") == "key":
            text = f"{s['distinct']} distinct"
        elif s.get("kind") == "time":
            text = f"{s['min']} .. {s['max']}"
        else:
            text = "" if c["role"] != "label" else "see above"
        lines.append(f"| {c['name']} | {c['dtype']} | {c['role']} | {c['missing']} "
                     f"({c['missing_rate']:.2%}) | {text} |")
    return "\n".join(lines) + "\n"
