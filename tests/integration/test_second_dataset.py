"""The second example configuration (examples/shelter, MLOPS_EXAMPLE=shelter) through the same
DAGs as the flights demo, with no change under pipelines/ or dags/.

A synthetic intake table (examples/shelter/generate.py) made to exercise what a real export
brings: naive local times across a daylight-saving change, outcomes known on their own date
days to months later, a week without rows, intakes recorded twice, a numeric derived feature,
a request-time feature of a non-time request column, weekly intervals in America/Chicago.
Real components throughout (GX, Feast, MLflow on SQLite, onnxruntime, Evidently, `dag.test()`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "shelter"
ZONE = "America/Chicago"


def generate(out: Path) -> Path:
    """The example's table, written by its own generator script."""
    spec = importlib.util.spec_from_file_location("shelter_generate", EXAMPLE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate().to_csv(out, index=False)
    return out


def known_at(raw: pd.DataFrame) -> pd.Series:
    """When each intake's outcome is known, from the raw export alone: the end of its local
    outcome date (UTC), missing without an outcome (the test's own reading of the example)."""
    day = pd.to_datetime(raw["outcome_date"]).dt.tz_localize(ZONE)
    return (day + pd.Timedelta(days=1)).dt.tz_convert("UTC").where(raw["outcome_type"].notna())


@pytest.fixture(scope="module")
def shelter(tmp_path_factory):
    """The example's params (its table in a temporary folder), landing zone, Feast registry
    and the Airflow metadata DB; MLOPS_EXAMPLE=shelter selects feature_repo/ and expectations/."""
    tmp = tmp_path_factory.mktemp("shelter")
    table = generate(tmp / "intakes.csv")
    raw = yaml.safe_load((EXAMPLE / "params.yaml").read_text())
    raw["dataset"]["sources"]["intakes"]["uri"] = str(table)
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    isolated = ("MLOPS_PARAMS", "MLOPS_STATE_URI", "MLOPS_EXAMPLE", "FEAST_REGISTRY_PATH",
                "FEAST_ONLINE_PATH", "MLFLOW_TRACKING_URI")
    saved = {k: os.environ.pop(k, None) for k in isolated}
    os.environ.update({"MLOPS_EXAMPLE": "shelter", "MLOPS_PARAMS": str(params),
                       "MLOPS_STATE_URI": str(tmp / "state")})

    from pipelines.core.config import load_config
    from pipelines.core.dates import to_date
    from pipelines.core.settings import get_settings
    from pipelines.data.ingest import ingest
    from pipelines.features.store import apply_definitions

    cfg, settings = load_config(params), get_settings()
    ingest(cfg, settings.landing_uri, to_date(cfg.ingest.start), to_date(cfg.ingest.end))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "model_registry", "1", "alias moves"], env=env,
                   check=True, capture_output=True)
    apply_definitions(settings)
    yield cfg, settings, pd.read_csv(table)
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value


_BAG: list = []  # the DAG files parsed once, under the example's configuration


def _run(dag_id: str, **kwargs):
    from airflow.dag_processing.dagbag import DagBag

    if not _BAG:
        _BAG.append(DagBag(dag_folder=str(REPO / "dags")))
    dr = _BAG[0].dags[dag_id].test(**kwargs)
    assert str(dr.state) == "success", f"{dag_id} run ended {dr.state}"
    return dr


def _week(cfg, key: str):
    return cfg.grain.interval(key)


def _score(cfg, key: str) -> None:
    """A scheduled batch_scoring run of the week `key` (its logical date: the week's end)."""
    _run("batch_scoring", logical_date=_week(cfg, key).end)


def test_the_second_dataset_runs_the_whole_lifecycle(shelter):
    from airflow.models import DagModel
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from pipelines import scoring
    from pipelines.core import locations, storage
    from pipelines.core.contracts import RETRAIN_ASSET
    from pipelines.data.events import LABEL_AT, load_events
    from pipelines.model import registry
    from pipelines.monitoring.checks import check_quality

    cfg, settings, raw = shelter
    name, grain = cfg.registry.model_name, cfg.grain
    assert (grain.kind, grain.timezone, grain.cron) == ("weekly", ZONE, "0 0 * * 1")

    # 1. training on the initial window: weekly batches validated, features, gates, promotion
    _run("training")
    assert registry.resolve_champion(settings, name)["version"] == "1"
    v1 = registry.client(settings).get_model_version(name, "1")
    assert v1.tags["gate_verdict"] == "pass" and v1.tags["feature_service"] == "shelter_model_v1"
    # lineage: the data and suites actually read; DVC does not track this landing zone
    assert len(v1.tags["data_sha256"]) == 64 and len(v1.tags["expectations_sha256"]) == 64
    assert v1.tags["dvc_data_version"] == "untracked"
    assert json.loads(v1.tags["request_features"])["weight_for_age"]["inputs"] == [
        "weight_kg", "age_years"]
    # the window cut by each row's own outcome time: intakes of the window whose outcome was
    # known only after its end (read from the raw export: the end of the local outcome date)
    # are not in the training set; under one fixed delay for all rows they would have been
    from pipelines.data.events import row_keys

    ts = storage.read_parquet(locations.training_set(settings, "2024-08-05", "2024-10-07"))
    end = pd.Timestamp(grain.bound("2024-10-07"))
    local = pd.to_datetime(raw["intake_time"])
    in_window = (local >= "2024-08-05") & (local < "2024-10-07")
    late = raw[in_window & (known_at(raw) > end)]
    assert len(late) > 100 and ts["row_key"].is_unique and (ts[LABEL_AT] <= end).all()
    assert not set(row_keys(late, cfg.dataset.events.key)) & set(ts["row_key"])
    known = raw[in_window & (known_at(raw) <= end)]
    assert set(row_keys(known, cfg.dataset.events.key)) == set(ts["row_key"])

    # 2. weekly scoring: the week of the daylight-saving change (169 hours, the repeated hour's
    #    intakes at their real instants), then the two weeks after the intake mix changed
    for week in ("2024-10-28", "2024-11-04", "2024-11-11"):
        _score(cfg, week)
    dst = _week(cfg, "2024-10-28")
    manifest = scoring.read_manifest(settings, dst)
    assert locations.partition(dst) == "week=2024-10-28"
    assert manifest["interval"] == ["2024-10-28T05:00:00+00:00", "2024-11-04T06:00:00+00:00"]
    preds = scoring.read_partition(settings, dst)
    in_week = raw[(local >= "2024-10-28") & (local < "2024-11-04")]
    assert len(in_week) > in_week["intake_id"].nunique()  # recorded twice in the export
    assert manifest["output_rows"] == len(preds) == in_week["intake_id"].nunique()
    at = preds["event_time"]
    night = sorted(at[(at >= pd.Timestamp("2024-11-03T05:00Z"))
                      & (at < pd.Timestamp("2024-11-03T08:00Z"))].dt.strftime("%H:%M").tolist())
    assert night == ["06:10", "06:40", "06:55"]  # 01:10, 01:40, 01:55 CDT: the first 01:xx
    assert preds["calendar__hour"].between(0, 23).all()
    assert manifest["data_version"]["dvc"] == "untracked" and manifest["data_version"]["batches"] == 3

    # 3. materialisation and the online/offline skew check, request-time features included
    _run("feature_materialization", logical_date=_week(cfg, "2024-11-11").end)

    # 4. drift: the November mix against the August-September model -> a retraining request
    with create_session() as session:
        session.get(DagModel, "training").is_paused = False
    _run("drift_monitor", logical_date=_week(cfg, "2024-11-11").end)
    verdict = storage.read_json(locations.monitoring_record(settings, "verdicts", "2024-11-11"))
    assert verdict["drift"] is True and verdict["window_days"] == ["2024-11-11", "2024-11-04"]
    assert {"animal_type", "intake_condition"} <= set(verdict["drifted"]), verdict["reason"]
    with create_session() as session:
        asset = session.query(AssetModel).filter(AssetModel.uri == RETRAIN_ASSET).one()
        events = [e for e in session.query(AssetEvent).filter(AssetEvent.asset_id == asset.id)
                  if (e.extra or {}).get("date") == "2024-11-11"]
        queued = session.query(AssetDagRunQueue).filter(
            AssetDagRunQueue.asset_id == asset.id).all()
        extra = dict(events[0].extra)
    assert len(events) == 1 and "training" in [q.target_dag_id for q in queued]

    # 5. the retraining that event starts: nine weeks ending with the drifted week
    _run("training", run_conf={"evidence": extra})
    v2 = registry.client(settings).get_model_version(name, "2")
    run = registry.client(settings).get_run(v2.run_id)
    assert run.data.tags["trigger"] == "drift on 2024-11-11"
    assert run.data.tags["training_window"] == "2024-09-16..2024-11-18"
    assert v2.tags["data_sha256"] != v1.tags["data_sha256"]
    report = storage.read_json(locations.gate_report(settings, name, "2"))
    assert report["has_champion"] and report["champion_version"] == "1"
    # most November outcomes are not known by the window's end: the retrained model does not
    # beat the champion with confidence on its evaluation set (deterministic: same data, seeds)
    assert report["failed"] == ["beats_champion:roc_auc"], report["failed"]
    assert registry.resolve_champion(settings, name)["version"] == "1"
    assert [(e["action"], e.get("to_version")) for e in registry.history(settings)] == [
        ("register", "1"), ("promote", "1"), ("register", "2"), ("rejected", "2")]

    # 6. the holiday week has no rows: a validated empty batch, an empty partition with its
    #    manifest, and drift "insufficient data" (no retraining signal)
    for week in ("2024-12-16", "2024-12-23"):
        _score(cfg, week)
    quiet = _week(cfg, "2024-12-23")
    batch = storage.read_json(locations.validation_report(settings, "intakes", quiet.label))
    assert batch["success"] is True and batch["rows"] == 0
    assert scoring.read_manifest(settings, quiet)["output_rows"] == 0
    _run("drift_monitor", logical_date=quiet.end)
    insufficient = storage.read_json(locations.monitoring_record(settings, "verdicts", quiet))
    assert insufficient["status"] == "insufficient data" and insufficient["drift"] is False
    decision = storage.read_json(locations.monitoring_record(settings, "decisions", quiet))
    assert decision["signal"] is False and decision["retrain"] is False

    # 7. live quality with outcomes known row by row: four weeks after the November weeks,
    #    only the outcomes known by then count; the others are pending, never guessed
    quality = check_quality(cfg, settings, "2024-12-09")
    assert quality["labelled_day"] == "2024-11-11" and quality["window_start"] == "2024-11-04"
    as_of = _week(cfg, "2024-12-09").end
    scored = pd.concat([scoring.read_partition(settings, _week(cfg, w))
                        for w in ("2024-11-04", "2024-11-11")])
    first_scorer = scored[scored["model_version"] == "1"]["row_key"]
    events = load_events(cfg, settings.landing_uri, grain.bound("2024-11-04"),
                         grain.bound("2024-11-18")).set_index("row_key").loc[first_scorer]
    known = events["adopted"].notna() & (events[LABEL_AT] <= pd.Timestamp(as_of))
    assert quality["window"]["n"] == int(known.sum()) and quality["pending"] == int((~known).sum())
    assert 0 < quality["pending"] < len(events)


def test_no_feature_of_a_row_uses_an_outcome_known_after_its_prediction_time(shelter, tmp_path):
    """Change every outcome that became known after a cut-off X (flip adoptions, drop
    others), rebuild the features of the initial window's intakes from scratch, and compare:
    every feature of every row predicted at or before X is the same; rows after X do change
    (so the test can fail)."""
    from pipelines.core.config import Config
    from pipelines.core.dates import to_date
    from pipelines.data.events import PREDICTION_TIME, ROW_KEY, load_events
    from pipelines.data.ingest import ingest
    from pipelines.features import pit
    from pipelines.features.request import compute
    from pipelines.features.sources import build_feature_sources
    from pipelines.features.store import get_store
    from pipelines.model.windows import window_intervals

    cfg, settings, raw = shelter
    grain = cfg.grain
    window = {"start": "2024-08-05", "end": "2024-10-07"}
    rows = load_events(cfg, settings.landing_uri, grain.bound(window["start"]),
                       grain.bound(window["end"]))
    specs = pit.service_views(get_store(settings), cfg.features.service)
    reach = timedelta(days=max(a.window_days for a in cfg.dataset.aggregates.values()))

    def features(table: Path, root: Path) -> pd.DataFrame:
        """Every feature of `rows`, from the table at `table` alone (own landing, sources)."""
        data = cfg.model_dump(by_alias=True)
        data["dataset"]["sources"]["intakes"]["uri"] = str(table)
        local = Config.model_validate(data)
        here = dataclasses.replace(settings, data_uri=str(root))
        ingest(local, here.landing_uri, to_date("2024-07-01"), to_date("2024-10-14"))
        for iv in window_intervals(local, window, reach):
            build_feature_sources(local, here, iv)
        moved = [dataclasses.replace(s, path=s.path.replace(settings.features_uri,
                                                             here.features_uri)) for s in specs]
        entities = rows[[ROW_KEY, PREDICTION_TIME, *cfg.features.join_keys]]
        stored = pit.retrieve(entities, moved, PREDICTION_TIME, cutoff=True).to_pandas()
        inputs = rows[list(dict.fromkeys([ROW_KEY, PREDICTION_TIME, *cfg.features.request_inputs]))]
        request = compute(cfg.features.request_time, inputs)
        return pd.concat([stored, request], axis=1).set_index(rows[ROW_KEY].to_numpy())

    base = features(Path(cfg.dataset.sources["intakes"].uri), tmp_path / "base")
    assert base.notna().all(axis=0).any() and len(base) > 1000
    later = known_at(raw)
    for i, cut in enumerate(["2024-08-26", "2024-09-09", "2024-09-23"]):
        x = pd.Timestamp(cut, tz=ZONE).tz_convert("UTC")
        changed = raw.copy()
        after = later > x  # outcomes nobody knew at X
        flip = after & (raw["outcome_type"] == "Adoption")
        changed.loc[flip, "outcome_type"] = "Transfer"
        changed.loc[after & ~flip, ["outcome_type", "outcome_date"]] = None
        table = tmp_path / f"changed-{i}.csv"
        changed.to_csv(table, index=False)
        got = features(table, tmp_path / f"changed-{i}")
        before = (rows[PREDICTION_TIME] <= x).to_numpy()
        pd.testing.assert_frame_equal(got[before], base[before], check_exact=True,
                                      obj=f"features of the rows predicted by {cut}")
        assert before.any() and not got[~before].equals(base[~before]), \
            f"changing outcomes known after {cut} changed no later row: the test proves nothing"
