"""Evaluate a registered challenger: score it and the champion on the challenger's evaluation
set with their ONNX files, measure serving budgets and behaviour, and write the gate report to
the run, the reports folder and the version's `gate_verdict` tag.
"""

from __future__ import annotations

import json
import logging
import tempfile
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.settings import Settings
from pipelines.model import card, gates, onnx_model, registry
from pipelines.model.registry import load_onnx

log = logging.getLogger(__name__)


def _version_scorer(settings: Settings, mv: Any) -> tuple[onnx_model.OnnxScorer, int]:
    model = registry.describe(mv.name, mv)
    data = load_onnx(settings, model["onnx_uri"], model["onnx_sha256"])
    scorer = onnx_model.OnnxScorer(data, model["numeric"], model["categorical"])
    return scorer, len(data)


CALENDAR = {"event_month": "month", "event_weekday": "weekday", "event_hour": "hour"}


def slice_values(eval_df: pd.DataFrame, columns: tuple[str, ...],
                 key: str = "gates.slices.columns") -> dict[str, np.ndarray]:
    """Slice (or group) columns of the evaluation set; event_month/event_weekday/event_hour
    come from the event time. `key`: the config key that named them, for the error."""
    out = {}
    for col in columns:
        if col in eval_df:
            out[col] = eval_df[col].astype(str).to_numpy()
        elif col in CALENDAR:
            out[col] = getattr(eval_df["event_time"].dt, CALENDAR[col]).astype(str).to_numpy()
        else:
            raise ValueError(f"{key}: column {col!r} is neither in the evaluation set nor one "
                             f"of {sorted(CALENDAR)}")
    return out


def measure_serving(scorer: onnx_model.OnnxScorer, frame: pd.DataFrame, model_bytes: int) -> dict:
    """Model size, single-row p99 latency and batch throughput on onnxruntime (1 thread)."""
    import time

    rows = [frame.iloc[i:i + 1] for i in range(min(len(frame), 300))]
    lat = []
    for row in rows:
        t = time.perf_counter()
        scorer.predict_proba(row)
        lat.append(time.perf_counter() - t)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        scorer.predict_proba(frame)
        best = min(best, time.perf_counter() - t)
    return {"model_mb": model_bytes / 1e6,
            "single_row_p99_ms": float(np.percentile(lat, 99) * 1e3) if lat else 0.0,
            "batch_rows_per_s": len(frame) / best if best > 0 else float("inf")}


def evaluate_challenger(cfg: Config, settings: Settings, version: str) -> dict[str, Any]:
    """Gate report for `version` against the current champion, on the same evaluation set."""
    import mlflow

    c = registry.client(settings)
    name = cfg.registry.model_name
    mv = c.get_model_version(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        eval_df = pd.read_parquet(registry.download(
            settings, f"runs:/{mv.run_id}/evaluation/eval_set.parquet", tmp))
        with open(registry.download(settings, f"runs:/{mv.run_id}/evaluation/onnx_parity.json",
                                    tmp), encoding="utf-8") as fh:
            parity = json.load(fh)
    y = eval_df[cfg.dataset.label.name].astype(int).to_numpy()
    chal, size = _version_scorer(settings, mv)
    frame = onnx_model.to_native_frame(eval_df, chal.numeric, chal.categorical)
    p_chal = chal.predict_proba(frame)
    serving = measure_serving(chal, frame, size)
    behaviour = gates.behaviour_results(chal.predict_proba, frame, cfg.gates.behaviour)
    champ_mv = registry.by_alias(c, name, registry.CHAMPION)
    p_champ = None
    if champ_mv is not None and str(champ_mv.version) != str(version):
        champ, _ = _version_scorer(settings, champ_mv)
        missing = [col for col in champ.numeric + champ.categorical if col not in eval_df]
        if missing:
            raise ValueError(f"champion v{champ_mv.version} needs inputs {missing} that the "
                             f"challenger's evaluation set lacks")
        p_champ = champ.predict_proba(
            onnx_model.to_native_frame(eval_df, champ.numeric, champ.categorical))
    report = gates.evaluate(cfg.gates, y, p_chal, p_champ, parity,
                            slices=slice_values(eval_df, cfg.gates.slices.columns),
                            serving=serving, behaviour=behaviour,
                            groups=slice_values(eval_df, cfg.gates.fairness.columns,
                                                "gates.fairness.columns"),
                            intervals=cfg.governance.card.n_bootstrap)
    report.update({"model": name, "version": str(version),
                   "champion_version": str(champ_mv.version) if champ_mv else None,
                   "card_uri": locations.model_card(settings, name, str(version))})
    uri = locations.gate_report(settings, name, version)
    storage.write_json(uri, report)
    storage.write_bytes(uri.replace(".json", ".md"), gates.render_markdown(report, version).encode())
    with mlflow.start_run(run_id=mv.run_id):
        mlflow.log_dict(report, "gates/gate_report.json")
        mlflow.log_text(gates.render_markdown(report, version), "gates/gate_report.md")
        mlflow.set_tag("gate_verdict", "pass" if report["passed"] else "fail")
    c.set_model_version_tag(name, version, "gate_verdict", "pass" if report["passed"] else "fail")
    card.write_card(cfg, settings, str(version), mv=mv)  # every gated version has one
    log.info("gates: v%s vs champion %s -> %s %s", version, report["champion_version"],
             "PASS" if report["passed"] else "FAIL", report["failed"])
    return {"passed": report["passed"], "failed": report["failed"], "report_uri": uri,
            "version": str(version), "champion_version": report["champion_version"]}
