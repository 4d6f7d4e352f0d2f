"""Training: a training set -> fitted pipeline -> ONNX + parity -> an MLflow run with full
lineage -> a registered version holding the `challenger` alias (ONNX is the only artifact
scoring ever loads).
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import subprocess
import tempfile
from typing import Any

import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config, params_hash
from pipelines.core.contracts import Trained, TrainingSet
from pipelines.core.settings import REPO_ROOT, Settings
from pipelines.data.events import PREDICTION_TIME, ROW_KEY
from pipelines.model import card, datasheet, explain, gates, onnx_model, registry

log = logging.getLogger(__name__)


def model_columns(cfg: Config, df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric, categorical) model inputs: passthrough event columns + the service's features."""
    from pipelines.features.retrieval import feature_columns

    pf = cfg.dataset.events.passthrough_features
    return list(pf.numeric) + feature_columns(df), list(pf.categorical)


def make_pipeline(cfg: Config, numeric: list[str], categorical: list[str]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    module, _, cls = cfg.training.estimator.class_.rpartition(".")
    estimator = getattr(importlib.import_module(module), cls)(**cfg.training.estimator.params)
    prep = ColumnTransformer([
        ("num", SimpleImputer(strategy="median"), numeric),
        ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
    ])
    return Pipeline([("prep", prep), ("model", estimator)])


def split(df: pd.DataFrame, eval_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time-ordered split: the evaluation set is the latest `eval_fraction` of rows."""
    df = df.sort_values([PREDICTION_TIME, ROW_KEY], kind="stable").reset_index(drop=True)
    cut = int(len(df) * (1.0 - eval_fraction))
    return df.iloc[:cut], df.iloc[cut:]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipelines", "params.yaml",
                                "feature_repo", "expectations", "examples"], cwd=REPO_ROOT,
                               capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _data_lineage(cfg: Config, settings: Settings, training_set: TrainingSet) -> dict[str, str]:
    """The training set's data lineage tags (computed here for a set that lacks them)."""
    from pipelines.data.versions import dvc_version, expectations_version

    return {"data_sha256": training_set.get("data_sha256") or "unknown",
            "expectations_sha256": (training_set.get("expectations_sha256")
                                    or expectations_version(settings)),
            "dvc_data_version": training_set.get("dvc_data_version") or dvc_version(settings)}


def package_versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ["scikit-learn", "skl2onnx", "onnxruntime", "onnx", "skops", "feast", "mlflow",
             "pandas", "numpy"]
    return {n: version(n) for n in names}


class TrainingDataError(ValueError):
    """The training data cannot train a classifier (raised before anything is fitted)."""


def check_classes(cfg: Config, train_df: pd.DataFrame, source: str = "the training split") -> None:
    """Both classes of the label must be present, or no classifier can be fitted."""
    label = cfg.dataset.label.name
    counts = train_df[label].value_counts(dropna=True)
    if len(train_df) == 0:
        raise TrainingDataError(f"{source} has no labelled rows: nothing to train on")
    if len(counts) < 2:
        only = counts.index[0] if len(counts) else "missing"
        raise TrainingDataError(
            f"{source} has one class only: all {len(train_df)} rows have {label}={only} "
            f"(dataset.label.expr {cfg.dataset.label.expr!r}); a classifier needs both classes: "
            f"widen the training window (training.window_days or the trigger form's dates) or "
            f"check the label definition")


def read_verified(training_set: TrainingSet) -> pd.DataFrame:
    """The training set's rows, if its bytes are still those that were validated (sha256)."""
    import hashlib

    data = storage.read_bytes(training_set["uri"])
    got = hashlib.sha256(data).hexdigest()
    if got != training_set["sha256"]:
        raise TrainingDataError(
            f"{training_set['uri']} changed after it was written and validated: sha256 {got}, "
            f"expected {training_set['sha256']}; rebuild the training set")
    return pd.read_parquet(io.BytesIO(data))


def fit(cfg: Config, train_df: pd.DataFrame) -> tuple[Any, list[str], list[str]]:
    from pipelines.model.onnx_model import to_native_frame

    check_classes(cfg, train_df)
    numeric, categorical = model_columns(cfg, train_df)
    pipe = make_pipeline(cfg, numeric, categorical)
    y = train_df[cfg.dataset.label.name].astype(int).to_numpy()
    pipe.fit(to_native_frame(train_df, numeric, categorical), y)
    return pipe, numeric, categorical


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


def train_and_register(cfg: Config, settings: Settings, training_set: TrainingSet,
                       context: dict[str, Any]) -> Trained:
    """Fit on the training set, export and check ONNX, log and register; returns ids."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature
    from skops.io import dumps, get_untrusted_types

    c = registry.client(settings)
    registry.ensure_experiment(settings, cfg.registry.model_name)
    df = read_verified(training_set)
    train_df, eval_df = split(df, cfg.training.eval_fraction)
    check_classes(cfg, train_df, f"the training split of {training_set['uri']}")
    pipe, numeric, categorical = fit(cfg, train_df)
    label = cfg.dataset.label.name
    x_eval = onnx_model.to_native_frame(eval_df, numeric, categorical)
    p_native = pipe.predict_proba(x_eval)[:, 1]
    onnx_bytes = onnx_model.export(pipe, numeric, categorical)
    scorer = onnx_model.OnnxScorer(onnx_bytes, numeric, categorical)
    p_onnx = scorer.predict_proba(x_eval)
    parity = onnx_model.parity(p_native, p_onnx, cfg.registry.onnx_parity_tolerance)
    # the metrics of what is served (the ONNX file), as the gates measure them: the run's
    # numbers, the gate report's and the model card's are one set
    metrics = gates.compute_metrics(eval_df[label].to_numpy(), p_onnx)
    sheet = datasheet.build(cfg, settings, training_set, df, len(train_df), numeric, categorical)
    explanation = (explain.global_importance(cfg.governance.explain, pipe, x_eval, numeric,
                                             categorical)
                   if cfg.governance.explain.enabled else None)
    sha = onnx_model.sha256(onnx_bytes)
    lineage = {
        "training_data_sha256": training_set["sha256"],
        "training_data_uri": training_set["uri"],
        "training_window": f"{training_set['start']}..{training_set['end']}",
        # the data and suites actually read (pipelines.data.versions); DVC's hash only if
        # DVC made that landing zone
        **_data_lineage(cfg, settings, training_set),
        "feature_service": training_set["feature_service"],
        "feature_service_hash": training_set["feature_service_hash"],
        "request_features": training_set.get("request_features", "{}"),  # scoring uses it
        "git_commit": git_commit(),
        "params_sha256": params_hash(settings.params_path),
        "airflow_run_id": str(context.get("run_id", "cli")),
        "trigger": str(context.get("trigger", "manual")),
        "packages": json.dumps(package_versions(), sort_keys=True),
    }
    with mlflow.start_run(run_name=f"train-{training_set['end']}") as run:
        mlflow.set_tags(lineage)
        if context.get("evidence"):
            mlflow.set_tag("trigger_evidence", json.dumps(context["evidence"], default=str)[:5000])
        mlflow.log_params({"estimator": cfg.training.estimator.class_,
                           **{f"est.{k}": v for k, v in cfg.training.estimator.params.items()},
                           "train_rows": len(train_df), "eval_rows": len(eval_df),
                           "window_start": training_set["start"], "window_end": training_set["end"]})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        mlflow.log_metrics({"onnx_max_abs_diff": parity["max_abs_diff"],
                            "onnx_mean_abs_diff": parity["mean_abs_diff"]})
        signature = infer_signature(x_eval.head(5), p_native[:5])
        trusted = get_untrusted_types(data=dumps(pipe))
        # requirements stated, not inferred, and no input example (MLflow validates one by
        # serving it): both would load the pickled model, which pickle-off refuses; the
        # signature records the inputs
        versions = package_versions()
        mlflow.sklearn.log_model(pipe, name="sklearn_model", signature=signature,
                                 skops_trusted_types=trusted,
                                 pip_requirements=[f"scikit-learn=={versions['scikit-learn']}",
                                                   f"skops=={versions['skops']}"])
        _log_bytes(mlflow, onnx_bytes, ONNX_PATH)
        _log_bytes(mlflow, _parquet_bytes(eval_df), "evaluation/eval_set.parquet")
        ref = train_df.sample(min(len(train_df), 20000), random_state=cfg.training.random_state)
        _log_bytes(mlflow, _parquet_bytes(ref), "reference/reference.parquet")
        mlflow.log_dict(parity, "evaluation/onnx_parity.json")
        info = mlflow.onnx.log_model(onnx.load_from_string(onnx_bytes), name="onnx_model",
                                     signature=signature,
                                     pip_requirements=[f"onnxruntime=={versions['onnxruntime']}",
                                                       f"onnx=={versions['onnx']}"])
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
    files = {card.DATASHEET_JSON: json.dumps(sheet, indent=1).encode(),
             card.DATASHEET_MD: datasheet.render_markdown(sheet).encode()}
    if explanation is not None:
        files.update({card.SHAP_JSON: json.dumps(explanation[0], indent=1).encode(),
                      card.SHAP_PNG: explanation[1]})
    # gates pending; rewritten after the gates and the decision
    card_uri = card.write_card(cfg, settings, str(mv.version), mv=mv, files=files)
    folder = locations.card_folder(settings, cfg.registry.model_name, str(mv.version))
    log.info("train: version %s run %s roc_auc=%s onnx max|diff|=%.2e (%s)", mv.version, run_id,
             metrics["roc_auc"], parity["max_abs_diff"], "ok" if parity["passed"] else "FAIL")
    return {"run_id": run_id, "version": str(mv.version), "onnx_sha256": sha,
            "metrics": metrics, "parity": parity, "card_uri": card_uri,
            "datasheet_uri": storage.join(folder, card.DATASHEET_MD)}
