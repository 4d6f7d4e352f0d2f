"""Train, export and register a challenger in MLflow with full lineage; evaluate its gates.

`train_and_register` fits the model, exports ONNX, checks parity, and registers the ONNX model
(the only artifact scoring ever loads) as a new version carrying the `challenger` alias.
`evaluate_challenger` scores challenger and champion on the challenger's evaluation set and
writes the gate report to the run.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from typing import Any

import numpy as np
import pandas as pd

from pipelines import gates, onnx_model, registry, storage, training
from pipelines.config import Config, params_hash
from pipelines.settings import Settings

log = logging.getLogger(__name__)
ONNX_PATH = "onnx/model.onnx"


def _log_bytes(mlflow: Any, data: bytes, artifact_path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, os.path.basename(artifact_path))
        with open(path, "wb") as fh:
            fh.write(data)
        mlflow.log_artifact(path, os.path.dirname(artifact_path) or None)


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def train_and_register(cfg: Config, settings: Settings, training_set: dict[str, Any],
                       context: dict[str, Any]) -> dict[str, Any]:
    """Fit on the training set, export and check ONNX, log and register; returns ids."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature
    from skops.io import dumps, get_untrusted_types

    c = registry.client(settings)
    registry.ensure_experiment(settings, cfg.registry.model_name)
    df = storage.read_parquet(training_set["uri"])
    train_df, eval_df = training.split(df, cfg.training.eval_fraction)
    pipe, numeric, categorical = training.fit(cfg, train_df)
    label = cfg.dataset.label.name
    x_eval = onnx_model.to_native_frame(eval_df, numeric, categorical)
    p_native = pipe.predict_proba(x_eval)[:, 1]
    onnx_bytes = onnx_model.export(pipe, numeric, categorical)
    scorer = onnx_model.OnnxScorer(onnx_bytes, numeric, categorical)
    parity = onnx_model.parity(p_native, scorer.predict_proba(x_eval),
                               cfg.registry.onnx_parity_tolerance)
    metrics = gates.compute_metrics(eval_df[label].to_numpy(), p_native)
    sha = onnx_model.sha256(onnx_bytes)
    lineage = {
        "training_data_sha256": training_set["sha256"],
        "training_data_uri": training_set["uri"],
        "training_window": f"{training_set['start']}..{training_set['end']}",
        "dvc_data_version": training.dvc_data_version(),
        "feature_service": training_set["feature_service"],
        "feature_service_hash": training_set["feature_service_hash"],
        "git_commit": training.git_commit(),
        "params_sha256": params_hash(settings.params_path),
        "airflow_run_id": str(context.get("run_id", "cli")),
        "trigger": str(context.get("trigger", "manual")),
        "packages": json.dumps(training.package_versions(), sort_keys=True),
    }
    with mlflow.start_run(run_name=f"train-{training_set['end']}") as run:
        mlflow.set_tags(lineage)
        if context.get("evidence"):
            mlflow.set_tag("trigger_evidence", json.dumps(context["evidence"], default=str)[:5000])
        mlflow.log_params({"estimator": cfg.training.estimator.class_,
                           **{f"est.{k}": v for k, v in cfg.training.estimator.params.items()},
                           "train_rows": len(train_df), "eval_rows": len(eval_df),
                           "window_start": training_set["start"], "window_end": training_set["end"]})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_metrics({"onnx_max_abs_diff": parity["max_abs_diff"],
                            "onnx_mean_abs_diff": parity["mean_abs_diff"]})
        signature = infer_signature(x_eval.head(5), p_native[:5])
        trusted = get_untrusted_types(data=dumps(pipe))
        mlflow.sklearn.log_model(pipe, name="sklearn_model", signature=signature,
                                 input_example=x_eval.head(3), skops_trusted_types=trusted)
        _log_bytes(mlflow, onnx_bytes, ONNX_PATH)
        _log_bytes(mlflow, _parquet_bytes(eval_df), "evaluation/eval_set.parquet")
        ref = train_df.sample(min(len(train_df), 20000), random_state=cfg.training.random_state)
        _log_bytes(mlflow, _parquet_bytes(ref), "reference/reference.parquet")
        mlflow.log_dict(parity, "evaluation/onnx_parity.json")
        info = mlflow.onnx.log_model(onnx.load_from_string(onnx_bytes), name="onnx_model",
                                     signature=signature)
        run_id = run.info.run_id
    registry.ensure_registered_model(c, cfg.registry.model_name)
    # model_id: a tracking *server* rejects a `models:/` source without it (SQLite accepts it).
    mv = c.create_model_version(cfg.registry.model_name, info.model_uri, run_id=run_id,
                                model_id=info.model_id,
                                tags={**{k: v for k, v in lineage.items() if k != "packages"},
                                      "onnx_sha256": sha,
                                      "onnx_uri": f"runs:/{run_id}/{ONNX_PATH}",
                                      "numeric_inputs": ",".join(numeric),
                                      "categorical_inputs": ",".join(categorical)})
    registry._set_alias(c, cfg.registry.model_name, registry.CHALLENGER, str(mv.version))
    registry.record(settings, {"action": "register", "model": cfg.registry.model_name,
                               "to_version": str(mv.version), "actor": lineage["airflow_run_id"],
                               "reason": "new challenger", "run_id": run_id})
    log.info("train: version %s run %s roc_auc=%.4f onnx max|diff|=%.2e (%s)", mv.version, run_id,
             metrics["roc_auc"], parity["max_abs_diff"], "ok" if parity["passed"] else "FAIL")
    return {"run_id": run_id, "version": str(mv.version), "onnx_sha256": sha,
            "metrics": metrics, "parity": parity}


def load_onnx(settings: Settings, onnx_uri: str, expected_sha256: str) -> bytes:
    """Download a version's ONNX file and refuse it unless its sha256 matches the registry."""
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.download(settings, onnx_uri, tmp)
        with open(path, "rb") as fh:
            data = fh.read()
    got = onnx_model.sha256(data)
    if got != expected_sha256:
        raise registry.RegistryError(f"{onnx_uri}: sha256 {got} does not match the registry's "
                                     f"{expected_sha256}; refusing to load")
    return data


def _version_scorer(settings: Settings, mv: Any) -> tuple[onnx_model.OnnxScorer, int]:
    model = registry.describe(mv.name, mv)
    data = load_onnx(settings, model["onnx_uri"], model["onnx_sha256"])
    scorer = onnx_model.OnnxScorer(data, model["numeric"], model["categorical"])
    return scorer, len(data)


CALENDAR = {"event_month": "month", "event_weekday": "weekday", "event_hour": "hour"}


def slice_values(eval_df: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Slice columns of the evaluation set; event_month/event_weekday/event_hour come from
    the event time."""
    out = {}
    for col in columns:
        if col in eval_df:
            out[col] = eval_df[col].astype(str).to_numpy()
        elif col in CALENDAR:
            out[col] = getattr(eval_df["event_time"].dt, CALENDAR[col]).astype(str).to_numpy()
        else:
            raise ValueError(f"slice column {col!r} is neither in the evaluation set nor one of "
                             f"{sorted(CALENDAR)}")
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
                            serving=serving, behaviour=behaviour)
    report.update({"model": name, "version": str(version),
                   "champion_version": str(champ_mv.version) if champ_mv else None})
    uri = storage.join(settings.reports_uri, "gates", f"{name}-v{version}.json")
    storage.write_json(uri, report)
    storage.write_bytes(uri.replace(".json", ".md"), gates.render_markdown(report, version).encode())
    with mlflow.start_run(run_id=mv.run_id):
        mlflow.log_dict(report, "gates/gate_report.json")
        mlflow.log_text(gates.render_markdown(report, version), "gates/gate_report.md")
        mlflow.set_tag("gate_verdict", "pass" if report["passed"] else "fail")
    c.set_model_version_tag(name, version, "gate_verdict", "pass" if report["passed"] else "fail")
    log.info("gates: v%s vs champion %s -> %s %s", version, report["champion_version"],
             "PASS" if report["passed"] else "FAIL", report["failed"])
    return {"passed": report["passed"], "failed": report["failed"], "report_uri": uri,
            "version": str(version), "champion_version": report["champion_version"]}
