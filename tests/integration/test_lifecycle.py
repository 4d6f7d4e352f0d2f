"""The whole chain through Airflow (`dag.test()`), on a small slice of the real dataset.

Real components throughout: Great Expectations validates, Feast joins point-in-time (DuckDB
offline store, SQLite online store), MLflow on SQLite registers and holds aliases, onnxruntime
scores, Evidently computes drift, and the drift verdict emits a real Airflow asset event that
the training DAG is scheduled on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _utc(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    """Small-slice params, the landing zone, Feast registry and an Airflow metadata DB."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["training"].update({"initial_window": {"start": "2013-01-01", "end": "2013-01-15"},
                            "window_days": 10, "max_rows": 20000})
    raw["training"]["estimator"]["params"]["n_estimators"] = 40
    raw["gates"]["compare"]["n_bootstrap"] = 100
    raw["gates"]["floors"] = {"roc_auc": 0.55, "pr_auc": 0.2}  # two weeks of January data
    raw["drift"]["window_days"] = 3
    raw["drift"]["consecutive"] = 1  # one drift check in this slice: it must request the retraining
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    # Its own state: earlier tests in the session may have registered models of their own.
    # (mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, so it is reset too.)
    isolated = ("MLOPS_PARAMS", "MLOPS_STATE_URI", "FEAST_REGISTRY_PATH", "FEAST_ONLINE_PATH",
                "MLFLOW_TRACKING_URI")
    saved = {k: os.environ.pop(k, None) for k in isolated}
    os.environ["MLOPS_PARAMS"] = str(params)
    os.environ["MLOPS_STATE_URI"] = str(tmp / "state")

    from pipelines.core.config import load_config
    from pipelines.core.settings import get_settings
    from pipelines.data.ingest import ingest
    from pipelines.features.store import apply_definitions

    cfg, settings = load_config(params), get_settings()
    ingest(cfg, settings.landing_uri, date(2013, 1, 1), date(2013, 1, 16))
    ingest(cfg, settings.landing_uri, date(2013, 5, 28), date(2013, 6, 4))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "model_registry", "1", "alias moves"], env=env,
                   check=True, capture_output=True)
    apply_definitions(settings)
    yield cfg, settings
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).dags[dag_id]


def _run(dag_id: str, **kwargs):
    dr = _dag(dag_id).test(**kwargs)
    assert str(dr.state) == "success", f"{dag_id} run ended {dr.state}"
    return dr


def test_lifecycle_train_score_drift_retrain(lifecycle):
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from pipelines import scoring
    from pipelines.core import locations, storage
    from pipelines.core.orchestration import RETRAIN_ASSET
    from pipelines.model import registry

    cfg, settings = lifecycle
    name = cfg.registry.model_name

    # 1. initial training: validated, PIT features, trained, gated, promoted
    _run("training", run_conf={"train_start": "2013-01-01", "train_end": "2013-01-15"})
    champion = registry.resolve_champion(settings, name)
    assert champion["version"] == "1"
    v1 = registry.client(settings).get_model_version(name, "1")
    assert v1.tags["gate_verdict"] == "pass"
    assert v1.tags["feature_service"] == cfg.features.service
    assert len(v1.tags["training_data_sha256"]) == 64

    # 2. nightly scoring of three June days (logical date = end of the day's interval)
    for day in ("2013-06-02", "2013-06-03", "2013-06-04"):
        _run("batch_scoring", logical_date=_utc(day))
    first = date(2013, 6, 1)
    manifest = scoring.read_manifest(settings, first)
    preds = scoring.read_partition(settings, first)
    assert manifest["model_version"] == "1" and manifest["onnx_sha256"] == champion["onnx_sha256"]
    assert len(preds) == manifest["input_rows"] == manifest["output_rows"] > 500
    assert preds["row_key"].is_unique and preds["probability"].between(0, 1).all()
    assert (preds["model_version"] == "1").all()

    # a re-run of the same interval leaves byte-identical predictions and no duplicates
    part = storage.join(locations.predictions(settings, first), manifest["files"][0])
    before = storage.read_bytes(part)
    _run("batch_scoring", logical_date=_utc("2013-06-02"))
    assert scoring.read_manifest(settings, first)["files"] == manifest["files"]
    assert storage.read_bytes(part) == before

    # 3. drift: January model vs June data -> drift -> a real retraining asset event, queued
    #    for the training DAG (asset events are queued for unpaused consumers only)
    from airflow.models import DagModel

    with create_session() as session:
        session.get(DagModel, "training").is_paused = False
    _run("drift_monitor", logical_date=_utc("2013-06-04"))
    verdict = storage.read_json(storage.join(settings.registry_uri, "drift", "verdicts",
                                             "2013-06-03.json"))
    assert verdict["drift"] is True, verdict["reason"]
    assert storage.exists(verdict["report_uri"])
    with create_session() as session:
        asset = session.query(AssetModel).filter(AssetModel.uri == RETRAIN_ASSET).one()
        events = session.query(AssetEvent).filter(AssetEvent.asset_id == asset.id).all()
        queued = session.query(AssetDagRunQueue).filter(
            AssetDagRunQueue.asset_id == asset.id).all()
        extra = dict(events[-1].extra)
    assert len(events) == 1 and extra["date"] == "2013-06-03" and extra["drift"] is True
    assert [q.target_dag_id for q in queued] == ["training"]  # the scheduler would start it

    # 4. the retraining the scheduler starts from that event: same chain, same gates
    _run("training", run_conf={"evidence": extra})
    c = registry.client(settings)
    v2 = c.get_model_version(name, "2")
    run = c.get_run(v2.run_id)
    assert json.loads(run.data.tags["trigger_evidence"])["date"] == "2013-06-03"
    assert run.data.tags["trigger"] == "drift on 2013-06-03"
    report = storage.read_json(storage.join(settings.reports_uri, "gates", f"{name}-v2.json"))
    assert report["has_champion"] and report["champion_version"] == "1"
    now = registry.resolve_champion(settings, name)["version"]
    assert now == ("2" if report["passed"] else "1"), report["failed"]
    actions = [(e["action"], e.get("to_version")) for e in registry.history(settings)]
    assert actions[:3] == [("register", "1"), ("promote", "1"), ("register", "2")]
    assert (("promote", "2") in actions) == report["passed"]

    # 5. a re-run of the drift check for the same day does not request a second retraining
    _run("drift_monitor", logical_date=_utc("2013-06-04"))
    with create_session() as session:
        assert session.query(AssetEvent).filter(AssetEvent.asset_id == asset.id).count() == 1
