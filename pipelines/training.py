"""Training: point-in-time training set -> fitted pipeline -> ONNX -> MLflow run with lineage."""

from __future__ import annotations

import importlib
import io
import logging
import subprocess
from datetime import date
from typing import Any

import pandas as pd

from pipelines import storage
from pipelines.config import Config
from pipelines.dataset import PREDICTION_TIME, ROW_KEY, load_events
from pipelines.dates import day_start
from pipelines.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)


def build_training_set(cfg: Config, settings: Settings, start: date, end: date,
                       out_uri: str) -> dict[str, Any]:
    """Labelled rows of [start, end) whose outcome was known by `end`, with PIT features."""
    from pipelines.features import feature_service_hash, get_store, historical_features

    label = cfg.dataset.label.name
    events = load_events(cfg, settings.landing_uri, start, end)
    if events.empty:
        raise ValueError(f"no events in the landing zone for [{start}, {end})")
    cutoff = pd.Timestamp(day_start(end))
    rows = events[events[label].notna() & (events["label_available_at"] <= cutoff)]
    if len(rows) > cfg.training.max_rows:  # keep the most recent rows
        rows = rows.iloc[-cfg.training.max_rows:]
    store = get_store(settings)
    df = historical_features(store, cfg.features.service, rows.reset_index(drop=True),
                             list(cfg.features.join_keys))
    data = io.BytesIO()
    df.to_parquet(data, index=False)
    storage.write_bytes(out_uri, data.getvalue())
    info = {
        "uri": out_uri,
        "rows": int(len(df)),
        "sha256": storage_sha256(out_uri),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "feature_service": cfg.features.service,
        "feature_service_hash": feature_service_hash(store, cfg.features.service),
        "positive_rate": float(df[label].mean()),
    }
    log.info("training set: %d rows [%s, %s) -> %s", len(df), start, end, out_uri)
    return info


def storage_sha256(uri: str) -> str:
    import hashlib

    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def model_columns(cfg: Config, df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric, categorical) model inputs: passthrough event columns + the service's features."""
    from pipelines.features import feature_columns

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
                                "feature_repo"], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_data_version() -> str:
    """The DVC hash of the landing zone as recorded in dvc.lock (if DVC tracks it)."""
    import yaml

    lock = REPO_ROOT / "dvc.lock"
    if not lock.exists():
        return "untracked"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if "landing" in out.get("path", ""):
                return str(out.get("md5", "unknown"))
    return "untracked"


def package_versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ["scikit-learn", "skl2onnx", "onnxruntime", "feast", "mlflow", "pandas", "numpy"]
    return {n: version(n) for n in names}


def fit(cfg: Config, train_df: pd.DataFrame) -> tuple[Any, list[str], list[str]]:
    from pipelines.onnx_model import to_native_frame

    numeric, categorical = model_columns(cfg, train_df)
    pipe = make_pipeline(cfg, numeric, categorical)
    y = train_df[cfg.dataset.label.name].astype(int).to_numpy()
    pipe.fit(to_native_frame(train_df, numeric, categorical), y)
    return pipe, numeric, categorical
