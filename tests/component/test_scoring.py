"""Batch scoring on real components: Feast (DuckDB offline store) point-in-time features, a real
ONNX model registered in MLflow on SQLite, onnxruntime, Parquet partitions, DuckDB.

One module-wide state folder (landing zone for a few January days, Feast registry, MLflow) keeps
the whole file at about a minute on two cores (most of it: `feast apply` and two subprocesses).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from support import register_onnx

from pipelines import scoring
from pipelines.core import locations, storage
from pipelines.core.settings import get_settings
from pipelines.model import registry
from pipelines.scoring.inputs import META, add_counts, prepare_inputs
from pipelines.scoring.io import read_table
from pipelines.scoring.parts import output_schema, stage_chunks, write_part
from pipelines.scoring.publish import publish, validate_parts
from pipelines.scoring.run import champion_at, describe_version, load_scorer, read_chunk

REPO = Path(__file__).resolve().parents[2]
DAY, DAYS = date(2013, 1, 10), [date(2013, 1, 10), date(2013, 1, 11), date(2013, 1, 12)]
EMPTY_DAY = date(2013, 1, 20)  # not in the landing zone


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A landing zone for 2013-01-01..12, Feast applied, two registered versions, v1 champion."""
    tmp = tmp_path_factory.mktemp("scoring")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["scoring"].update({"chunk_rows": 400, "batch_rows": 150})
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"MLOPS_STATE_URI": str(tmp / "state"), "MLOPS_PARAMS": str(params),
                            "FEAST_REGISTRY_PATH": str(tmp / "state/feast/registry.db"),
                            "FEAST_ONLINE_PATH": str(tmp / "state/feast/online.db")}.items():
            mp.setenv(name, value)
        from pipelines.core.config import load_config
        from pipelines.core.settings import get_settings
        from pipelines.data.events import load_events
        from pipelines.data.ingest import ingest
        from pipelines.features.retrieval import historical_features
        from pipelines.features.sources import build_feature_sources
        from pipelines.features.store import apply_definitions, get_store
        from pipelines.model.training import fit

        cfg, settings = load_config(params), get_settings()
        ingest(cfg, settings.landing_uri, date(2013, 1, 1), date(2013, 1, 13))
        for d in range(12):
            build_feature_sources(cfg, settings, date(2013, 1, 1) + timedelta(days=d))
        apply_definitions(settings)
        events = load_events(cfg, settings.landing_uri, date(2013, 1, 2), date(2013, 1, 9))
        rows = events[events[cfg.dataset.label.name].notna()].reset_index(drop=True)
        train = historical_features(get_store(settings), cfg.features.service, rows,
                                    list(cfg.features.join_keys))
        versions = []
        for n_estimators in (15, 8):
            est = cfg.training.estimator.model_copy(
                update={"params": {**cfg.training.estimator.params, "n_estimators": n_estimators}})
            small = cfg.model_copy(update={"training": cfg.training.model_copy(
                update={"estimator": est})})
            pipe, numeric, categorical = fit(small, train)
            versions.append(register_onnx(settings, cfg, pipe, numeric, categorical))
        registry.promote(settings, cfg.registry.model_name, versions[0], "test", "first", None)
        yield {"cfg": cfg, "settings": settings, "versions": versions, "train": train}


def _with(cfg, **scoring):
    return cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update=scoring)})


def _partition_files(settings, day) -> dict[str, bytes]:
    base = locations.predictions(settings, day)
    return {n: storage.read_bytes(storage.join(base, n)) for n in storage.listdir(base)
            if n != locations.MANIFEST}


def test_rerun_replaces_the_partition_with_identical_bytes(env):
    cfg, settings = env["cfg"], env["settings"]
    first = scoring.score_interval(cfg, settings, DAY, None, "run-1")
    manifest = scoring.read_manifest(settings, DAY)
    files = _partition_files(settings, DAY)
    assert first["files"] == 3 and sorted(files) == sorted(manifest["files"])  # 925 rows / 400
    assert not storage.exists(locations.staging(settings, DAY))

    scoring.score_interval(cfg, settings, DAY, None, "run-2")
    again = scoring.read_manifest(settings, DAY)
    assert again["files"] == manifest["files"] and _partition_files(settings, DAY) == files
    assert again["airflow_run_id"] == "run-2"

    preds = scoring.read_partition(settings, DAY)
    assert len(preds) == manifest["input_rows"] == manifest["output_rows"] > 900
    assert preds["row_key"].is_unique and preds["probability"].between(0, 1).all()
    assert (preds["model_version"] == env["versions"][0]).all()
    assert manifest["backfill_model"] == "current" and manifest["model_version"] == "1"
    for key in ("files", "input_rows", "output_rows", "model", "model_version", "onnx_sha256",
                "feature_service", "model_run_id"):
        assert key in manifest
    # a retried chunk task writes the same file with the same bytes
    chunks = scoring.plan_interval(cfg, settings, DAY)
    model = scoring.resolve_model(cfg, settings, DAY)
    part = scoring.score_chunk(cfg, settings, DAY, chunks[1], model)
    assert part["file"] == manifest["files"][1] and part["sha256"] == manifest["parts"][1]["sha256"]


def test_backfill_over_several_days_with_the_pinned_model(env):
    cfg, settings = env["cfg"], env["settings"]
    v1, v2 = env["versions"]
    for day in DAYS:
        scoring.score_interval(cfg, settings, day, None, f"backfill-{day}")
    assert [scoring.read_manifest(settings, d)["model_version"] for d in DAYS] == [v1, v1, v1]

    registry.promote(settings, cfg.registry.model_name, v2, "test", "newer", None)
    try:
        scoring.score_interval(cfg, settings, DAYS[1], None, "rescore")  # policy: current
        m = scoring.read_manifest(settings, DAYS[1])
        assert m["model_version"] == v2 and m["model_choice"] == "champion alias when the run started"

        # champion_at_interval: every promotion in this registry happened after January 2013
        before = scoring.read_manifest(settings, DAYS[2])
        policy = _with(cfg, backfill_model="champion_at_interval")
        with pytest.raises(registry.RegistryError, match="had no champion at 2013-01-13"):
            scoring.score_interval(policy, settings, DAYS[2], None, "too-early")
        assert scoring.read_manifest(settings, DAYS[2]) == before
        assert not storage.exists(locations.staging(settings, DAYS[2]))
        # ... and a day after the promotions gets the version that was champion then
        today = datetime.now(UTC).date()
        assert scoring.resolve_model(policy, settings, today)["version"] == v2
    finally:
        registry.rollback(settings, cfg.registry.model_name, v1, "test", "restore")

    import duckdb

    con = duckdb.connect()
    scoring.create_predictions_view(con, settings)
    by_day = con.sql("SELECT date, model_version, count(*), count(DISTINCT row_key) FROM "
                     "predictions WHERE date BETWEEN DATE '2013-01-10' AND DATE '2013-01-12' "
                     "GROUP BY ALL ORDER BY date").fetchall()
    expected = [(d, v, m["output_rows"], m["output_rows"]) for d, v, m in
                [(d, v, scoring.read_manifest(settings, d)) for d, v in zip(DAYS, [v1, v2, v1])]]
    assert by_day == expected


@pytest.mark.parametrize(("when", "version"), [
    ("2024-01-01T00:00:00+00:00", None), ("2024-01-02T00:00:00+00:00", "1"),
    ("2024-01-04T12:00:00+00:00", "2"), ("2024-01-06T00:00:00+00:00", "1"),
    ("2024-01-08T00:00:00+00:00", "3")])
def test_champion_at_follows_promotions_and_rollbacks(when, version):
    history = [
        {"at": "2024-01-02T00:00:00+00:00", "action": "promote", "model": "m", "to_version": "1"},
        {"at": "2024-01-03T00:00:00+00:00", "action": "register", "model": "m", "to_version": "2"},
        {"at": "2024-01-04T00:00:00+00:00", "action": "forced_promote", "model": "m",
         "to_version": "2"},
        {"at": "2024-01-05T00:00:00+00:00", "action": "rollback", "model": "m", "to_version": "1"},
        {"at": "2024-01-05T00:00:00+00:00", "action": "promote", "model": "other", "to_version": "7"},
        {"at": "2024-01-07T00:00:00+00:00", "action": "promote", "model": "m", "to_version": "3"},
    ]
    move = champion_at(history, "m", datetime.fromisoformat(when))
    assert (move["to_version"] if move else None) == version


def test_missing_champion_is_a_clear_error_and_writes_nothing(env):
    cfg, settings = env["cfg"], env["settings"]
    nameless = cfg.model_copy(update={"registry": cfg.registry.model_copy(
        update={"model_name": "never_promoted"})})
    day = date(2013, 1, 9)
    with pytest.raises(registry.RegistryError, match="no 'champion' alias"):
        scoring.score_interval(nameless, settings, day, None, "no-model")
    assert not storage.exists(locations.predictions(settings, day))
    assert not storage.exists(locations.staging(settings, day))


def test_empty_interval_is_an_empty_partition_with_a_manifest(env):
    cfg, settings = env["cfg"], env["settings"]
    out = scoring.score_interval(cfg, settings, EMPTY_DAY, None, "empty")
    manifest = scoring.read_manifest(settings, EMPTY_DAY)
    assert out["rows"] == manifest["input_rows"] == manifest["output_rows"] == 0
    preds = scoring.read_partition(settings, EMPTY_DAY)
    assert preds.empty and {"row_key", "probability", "model_version"} <= set(preds.columns)
    rel = scoring.predictions_relation(settings, start=EMPTY_DAY, end=EMPTY_DAY + timedelta(1))
    assert rel.aggregate("count(*)").fetchall() == [(0,)]


@pytest.mark.parametrize("policy", ["impute", "reject"])
def test_missing_features_follow_the_policy_and_are_counted(env, policy):
    """Some planes have no row in the planes table: Feast returns no plane features for them."""
    cfg, settings = _with(env["cfg"], missing_features=policy), env["settings"]
    day = DAYS[2]
    scoring.score_interval(cfg, settings, day, None, policy)
    m = scoring.read_manifest(settings, day)
    counts, preds = m["missing_features"], scoring.read_partition(settings, day)
    assert counts["policy"] == policy and counts["rows_with_missing_features"] > 10
    assert counts["by_feature"]["plane_fv__seats"] > 10 and counts["by_reason"]["missing"] > 10
    assert preds["probability"].notna().all() and preds["probability"].between(0, 1).all()
    if policy == "impute":
        assert counts["rejected_rows"] == 0 and m["output_rows"] == m["input_rows"]
        assert preds["plane_fv__seats"].isna().sum() == counts["by_feature"]["plane_fv__seats"]
    else:
        assert counts["rejected_rows"] == counts["rows_with_missing_features"]
        assert m["output_rows"] == m["input_rows"] - counts["rejected_rows"]
        assert preds["plane_fv__seats"].notna().all()


def test_non_finite_inputs_are_counted_and_never_reach_the_model():
    frame = pd.DataFrame({"row_key": ["a", "b", "c", "d"], "event_time": pd.NaT,
                          "event_timestamp": pd.NaT, "x": [1.0, np.inf, np.nan, -np.inf],
                          "y": [1.0, 2.0, 3.0, np.nan], "cat": ["u", None, "v", "w"]})
    for rows in (frame, pa.Table.from_pandas(frame, preserve_index=False)):
        imputed, counts = prepare_inputs(rows, ["x", "y"], ["cat"], "impute")
        assert counts["by_reason"] == {"missing": 3, "non_finite": 2}
        assert counts["by_feature"] == {"x": 3, "y": 1, "cat": 1}
        assert counts["rows_with_missing_features"] == 3 and counts["rejected_rows"] == 0
        assert len(imputed) == 4 and not np.isinf(imputed.numeric32).any()
        assert np.isnan(imputed.numeric32).sum() == 4 and list(imputed.strings[0]) == ["u", "", "v", "w"]
        kept, counts = prepare_inputs(rows, ["x", "y"], ["cat"], "reject")
        assert kept.table["row_key"].to_pylist() == ["a"] and counts["rejected_rows"] == 3
        assert kept.numeric32.tolist() == [[1.0], [1.0]] and list(kept.strings[0]) == ["u"]


def test_a_nan_prediction_fails_the_chunk(env, tmp_path):
    """A model that cannot impute turns a missing feature into a NaN probability: refused."""
    import dataclasses

    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from pipelines.model.onnx_model import OnnxScorer, export, to_native_frame

    cfg, settings = env["cfg"], dataclasses.replace(env["settings"], data_uri=str(tmp_path))
    cols = ["distance", "plane_fv__year"]
    train = env["train"].dropna(subset=cols)
    bare = Pipeline([("prep", ColumnTransformer([("num", "passthrough", cols)])),
                     ("model", LogisticRegression(max_iter=500))])
    bare.fit(to_native_frame(train, cols, []), train[cfg.dataset.label.name].astype(int))
    scorer = OnnxScorer(export(bare, cols, []), cols, [])
    rows = pd.DataFrame({"row_key": ["a", "b"], "event_time": pd.Timestamp("2013-01-10", tz="UTC"),
                         "event_timestamp": pd.Timestamp("2013-01-10", tz="UTC"),
                         "distance": [500.0, 700.0], "plane_fv__year": [2001.0, np.nan]})
    model = {"model": "bare", "version": "1", "numeric": cols, "categorical": []}
    with pytest.raises(ValueError, match="1 non-finite probabilities"):
        write_part(settings, DAY, 0, rows, model, scorer, cfg.scoring)
    assert storage.listdir(locations.predictions(settings, DAY)) == []


def test_every_registry_user_refuses_pickled_models(tmp_path, monkeypatch):
    """Pickle loading is off in any process that talks to the registry, even if the
    environment asked for it."""
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from sklearn.linear_model import LogisticRegression

    path = str(tmp_path / "pickled")
    mlflow.sklearn.save_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), path,
                              serialization_format="cloudpickle", pip_requirements=[])
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    mlflow.sklearn.load_model(path)  # what an unguarded process would do
    registry.client(dataclasses.replace(get_settings(), mlflow_tracking_uri=f"sqlite:///{tmp_path}/m.db"))
    with pytest.raises(MlflowException, match="disallowed"):
        mlflow.sklearn.load_model(path)


_KILLED_RUN = """
import json, os, signal, sys
from datetime import date
from pipelines import scoring
from pipelines.core import locations
from pipelines.core.config import load_config
from pipelines.core.settings import get_settings
from pipelines.scoring.publish import publish

cfg, settings, day = load_config(), get_settings(), date.fromisoformat(sys.argv[2])
cfg = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"chunk_rows": 300})})
if sys.argv[1] == "after_parts":  # a whole run in this process, killed before publishing
    model = scoring.resolve_model(cfg, settings, day)
    chunks = scoring.plan_interval(cfg, settings, day)
    parts = [scoring.score_chunk(cfg, settings, day, c, model) for c in chunks]
    os.kill(os.getpid(), signal.SIGKILL)
real_replace = os.replace
def replace(src, dst):  # die with the new manifest written but not yet renamed into place
    if dst.endswith(locations.MANIFEST):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace
staged = json.load(sys.stdin)  # the publish task of a run whose chunks were scored
publish(cfg, settings, day, staged["chunks"], staged["parts"], staged["model"], "killed")
"""


@pytest.mark.parametrize("point", ["after_parts", "manifest_rename"])
def test_a_run_killed_mid_write_leaves_the_previous_partition(env, point):
    cfg, settings = env["cfg"], env["settings"]
    day, rerun = DAYS[0], _with(env["cfg"], chunk_rows=300)
    scoring.score_interval(cfg, settings, day, None, "before")
    manifest, visible = scoring.read_manifest(settings, day), scoring.read_partition(settings, day)
    parts = {f: storage.read_bytes(storage.join(locations.predictions(settings, day), f))
             for f in manifest["files"]}
    staged = "{}"
    if point == "manifest_rename":  # score the chunks here; the child only publishes
        model = scoring.resolve_model(rerun, settings, day)
        chunks = scoring.plan_interval(rerun, settings, day)
        staged = json.dumps({"model": model, "chunks": chunks, "parts": [
            scoring.score_chunk(rerun, settings, day, c, model) for c in chunks]})

    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, point, day.isoformat()],
                          input=staged, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    on_disk = storage.listdir(locations.predictions(settings, day))
    assert set(on_disk) - set(manifest["files"]) - {locations.MANIFEST}  # staged parts (and tmp)
    assert scoring.read_manifest(settings, day) == manifest
    pd.testing.assert_frame_equal(scoring.read_partition(settings, day), visible)
    for f, data in parts.items():
        assert storage.read_bytes(storage.join(locations.predictions(settings, day), f)) == data
    rel = scoring.predictions_relation(settings, start=day, end=day + timedelta(days=1))
    assert rel.aggregate("count(*)").fetchall() == [(len(visible),)]

    scoring.score_interval(rerun, settings, day, None, "rerun")
    after = scoring.read_manifest(settings, day)
    assert len(after["files"]) == 4 and after["output_rows"] == manifest["output_rows"]
    assert sorted(storage.listdir(locations.predictions(settings, day))) == sorted(
        [*after["files"], locations.MANIFEST])
    assert not storage.exists(locations.staging(settings, day))


def _damaged(env, n=400):
    """Real feature rows of the first version's inputs with missing, non-finite, unseen and
    integer values, and the model that scores them."""
    cfg, settings = env["cfg"], env["settings"]
    model = describe_version(settings, cfg.registry.model_name, env["versions"][0])
    numeric, categorical = model["numeric"], model["categorical"]
    assert categorical and len(numeric) > 3
    complete = env["train"].dropna(subset=[*numeric, *categorical])
    rows = complete.head(n).reset_index(drop=True).copy()
    assert len(rows) == n
    floats = [c for c in numeric if rows[c].dtype.kind == "f"]
    rows.loc[0:9, floats[0]] = np.nan
    rows.loc[10:14, floats[1]] = np.inf
    rows.loc[15:19, floats[1]] = -np.inf
    rows.loc[20:29, categorical[0]] = None
    rows.loc[30:34, categorical[0]] = np.nan
    rows.loc[35, categorical[0]] = "never-seen"
    if all(rows[c].dtype.kind == "f" for c in numeric):  # an integer input too
        rows[floats[2]] = rows[floats[2]].round().astype("int64")
    return model, load_scorer(settings, model), rows


def _reference(rows, model, policy):
    """The rows as training's conversion path gives them to the model (`to_native_frame`),
    after the missing-feature policy: the definition the Arrow path must reproduce exactly."""
    from pipelines.model.onnx_model import to_native_frame

    numeric, categorical = model["numeric"], model["categorical"]
    out = rows[[*META, *numeric, *categorical]].copy()
    values = out[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values).any(axis=1) | np.isinf(values).any(axis=1) | out[categorical].isna(
        ).any(axis=1).to_numpy()
    out[numeric] = np.where(np.isinf(values), np.nan, values)
    if policy == "reject":
        out = out[~bad].reset_index(drop=True)
    return out, to_native_frame(out, numeric, categorical)


@pytest.mark.parametrize("policy", ["impute", "reject"])
def test_feeds_and_probabilities_are_exactly_those_of_the_training_conversion(env, policy):
    """pandas (Feast's output) or Arrow in: the same onnxruntime inputs, bit for bit, as
    `feeds(to_native_frame(...))`, and the same probabilities as `OnnxScorer.predict_proba`."""
    from pipelines.model.onnx_model import feeds

    model, scorer, rows = _damaged(env)
    numeric, categorical = model["numeric"], model["categorical"]
    out, native = _reference(rows, model, policy)
    expected_feeds = feeds(native, numeric, categorical)
    expected = scorer.predict_proba(native)
    assert len(out) == (len(rows) if policy == "impute" else len(rows) - 35)
    for source in (rows, pa.Table.from_pandas(rows, preserve_index=False)):
        inputs, counts = prepare_inputs(source, numeric, categorical, policy)
        got = inputs.feeds(0, len(inputs))
        assert list(got) == list(expected_feeds)
        for name, want in expected_feeds.items():
            assert got[name].dtype.kind == want.dtype.kind and got[name].shape == want.shape
            assert np.array_equal(got[name], want, equal_nan=want.dtype.kind == "f"), name
        assert inputs.table["row_key"].to_pylist() == list(out["row_key"])
        probs = inputs.predict(scorer, 7)  # batches of 7 rows: batching changes nothing
        assert probs.dtype == np.float64 and np.array_equal(probs, expected)
        assert counts["by_reason"] == {"missing": 25, "non_finite": 10}


def test_a_part_file_holds_the_rows_as_scored_whatever_the_input_format(env, tmp_path):
    """The part is the pandas layout of the scored rows (missing and non-finite inputs null,
    times in microseconds UTC, the model on every row), and pandas or Arrow input write the
    same bytes."""
    import dataclasses

    import pyarrow.parquet as pq

    cfg, settings = env["cfg"], dataclasses.replace(env["settings"], data_uri=str(tmp_path))
    model, scorer, rows = _damaged(env)
    out, native = _reference(rows, model, "impute")
    out["probability"] = scorer.predict_proba(native)
    out["model_name"], out["model_version"] = model["model"], str(model["version"])
    want = pa.Table.from_pandas(out, schema=output_schema(model), preserve_index=False)
    parts = [write_part(settings, DAY, 3, source, model, scorer, cfg.scoring)
             for source in (rows, pa.Table.from_pandas(rows, preserve_index=False))]
    assert parts[0]["file"] == parts[1]["file"] and parts[0]["sha256"] == parts[1]["sha256"]
    path = storage.join(locations.predictions(settings, DAY), parts[0]["file"])
    got = pq.read_table(path)
    assert got.schema.metadata is None or b"pandas" not in got.schema.metadata
    assert got.equals(want.replace_schema_metadata(None))
    assert sum(got[c].null_count for c in model["numeric"]) == 20
    assert got[model["categorical"][0]].null_count == 15


def test_stage_chunks_recuts_frames_into_identical_chunks(tmp_path):
    import dataclasses

    from pipelines.core.settings import get_settings

    settings = dataclasses.replace(get_settings(), data_uri=str(tmp_path))
    frame = pd.DataFrame({"row_key": [f"{i:016x}" for i in range(20)],
                          "event_time": pd.date_range("2013-01-10", periods=20, freq="h", tz="UTC"),
                          "origin": pd.array(["EWR", "JFK", None, "LGA"] * 5, dtype="string")})
    frame["event_timestamp"] = frame["event_time"] - pd.Timedelta(hours=2)
    pieces = [frame.iloc[:5], frame.iloc[5:17], frame.iloc[17:]]
    chunks = stage_chunks(settings, DAY, iter(pieces), 8)
    assert [c["rows"] for c in chunks] == [8, 8, 4] and [c["chunk"] for c in chunks] == [0, 1, 2]
    back = pd.concat([storage.read_parquet(c["uri"]) for c in chunks], ignore_index=True)
    us = {c: "datetime64[us, UTC]" for c in ("event_time", "event_timestamp")}  # as Feast reads
    pd.testing.assert_frame_equal(back, frame.astype(us))  # values, order and dtypes
    again = stage_chunks(settings, DAY, iter(pieces[::-1][::-1]), 8)
    assert [c["sha256"] for c in again] == [c["sha256"] for c in chunks]
    whole = stage_chunks(settings, DAY, [frame], 8)  # however the frames were cut
    assert [c["sha256"] for c in whole] == [c["sha256"] for c in chunks]


def test_validation_refuses_a_bad_partition(tmp_path):
    """Wrong row count, null or duplicated keys, probabilities outside [0, 1] or NaN, another
    model version: each is found in the files themselves, and nothing passes."""
    import pyarrow.parquet as pq

    def part(name, keys, probs, version="1"):
        path = str(tmp_path / name)
        pq.write_table(pa.table({"row_key": keys, "probability": pa.array(probs, pa.float64()),
                                 "model_version": [version] * len(keys)}), path)
        return path

    good = [part("a.parquet", ["k1", "k2"], [0.1, 0.9]), part("b.parquet", ["k3"], [0.0])]
    assert validate_parts(good, 3, "1")["rows"] == 3
    cases = {
        "4 expected": (good, 4),
        "1 duplicated row keys": ([*good, part("c.parquet", ["k2"], [0.5])], 4),
        "1 rows with null keys; 1 duplicated row keys": (  # a null key hides no duplicate
            [*good, part("h.parquet", [None, "k1"], [0.5, 0.5])], 5),
        "2 duplicated row keys": ([*good, part("i.parquet", ["k1", "k1", "k3"], [0.5] * 3)], 6),
        "1 rows with null keys": ([*good, part("d.parquet", [None], [0.5])], 4),
        "1 rows with out of range": ([*good, part("e.parquet", ["k4"], [1.5])], 4),
        "1 rows with null probabilities": ([*good, part("f.parquet", ["k5"], [float("nan")])], 4),
        "1 rows with other version": ([*good, part("g.parquet", ["k6"], [0.5], "2")], 4),
    }
    for problem, (uris, expected) in cases.items():
        with pytest.raises(ValueError, match=f"failed validation.*{problem}"):
            validate_parts(uris, expected, "1")


def test_categoricals_of_any_type_convert_as_training_does():
    """Strings through their dictionary, anything else through `to_native_frame` itself: the
    model sees the strings training's conversion gives for the frame (for an Arrow table: for
    `table.to_pandas()`, as Feast's retrieval makes it), and a missing value is stored as null."""
    from pipelines.model.onnx_model import feeds, to_native_frame

    frame = pd.DataFrame({
        "row_key": list("abcde"), "event_time": pd.NaT, "event_timestamp": pd.NaT,
        "s": ["JFK", None, "EWR", np.nan, "JFK"],
        "i": pd.array([1, 2, None, 4, 1], dtype="Int64"),
        "mixed": ["1", 1, 1.5, None, True],
        "c": pd.Categorical(["x", "y", None, "x", "y"]),
    })
    cats = ["s", "i", "mixed", "c"]
    arrow = pa.Table.from_pandas(frame[["row_key", "event_time", "event_timestamp", "s", "i",
                                        "c"]], preserve_index=False)
    dictionary = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 0, 1], pa.int32()),
                                                pa.array(["JFK", None, "EWR"]))
    arrow = arrow.append_column("d", dictionary)
    for source, names in ((frame, cats), (arrow, ["s", "i", "c", "d"])):
        plain = [n for n in names if n != "d"]  # pandas cannot hold a null category
        as_pandas = source if isinstance(source, pd.DataFrame) else source.select(plain).to_pandas()
        want = feeds(to_native_frame(as_pandas, [], plain), [], plain)
        want["d"] = np.array(["JFK", "", "EWR", "JFK", ""]).reshape(-1, 1)
        inputs, counts = prepare_inputs(source, [], names, "impute")
        got = inputs.feeds(0, 5)
        for name in names:
            expected = want[name]
            assert got[name].dtype.kind == "U" and np.array_equal(got[name], expected), name
            stored = inputs.categorical[names.index(name)]
            assert stored.type == pa.string()
            assert stored.is_null().to_pylist() == [v == "" for v in expected.ravel()], name
        assert counts["by_feature"]["s"] == 2


@pytest.mark.parametrize("values", [
    ["JFK", None, "EWR", np.nan, "JFK", ""], pd.array(["JFK", None, "EWR"], dtype="string"),
    [None, None], [None, pd.NA, float("nan")], ["JFK", pd.NaT], [np.str_("JFK"), "EWR"],
    [b"JFK", "EWR"], ["1", 1, 1.5, None, True]], ids=str)
def test_a_few_rows_convert_as_many_rows_do(values, monkeypatch):
    """A request's few categorical values skip pandas' factorize: the model and the log get
    what the dictionary path gives them."""
    from pipelines.scoring import inputs as scoring_inputs

    def categorical(few_rows):
        monkeypatch.setattr(scoring_inputs, "FEW_ROWS", few_rows)
        return scoring_inputs._categorical({"c": pd.Series(values)}, "c")

    (fast, fast_stored), (dictionary, stored) = categorical(64), categorical(0)
    assert fast.dtype == dictionary.dtype and np.array_equal(fast, dictionary)
    assert fast_stored.type == stored.type == pa.string() and fast_stored.equals(stored)


def _pandas_chunk_path(cfg, settings, day, chunk, model, out_settings):
    """`score_chunk` as it was before the Arrow retrieval: the chunk read into pandas, Feast
    features as pandas (`historical_features`, training's retrieval), the frame into
    `write_part`."""
    from pipelines.features.retrieval import historical_features
    from pipelines.features.store import get_store

    rows = storage.read_parquet(chunk["uri"])
    assert len(rows) == chunk["rows"]
    feats = historical_features(get_store(settings),
                                model.get("feature_service") or cfg.features.service, rows,
                                list(cfg.features.join_keys))
    return feats, write_part(out_settings, day, chunk["chunk"], feats, model,
                                     load_scorer(settings, model), cfg.scoring)


@pytest.mark.parametrize("policy", ["impute", "reject"])
def test_the_arrow_chunk_path_publishes_what_the_pandas_path_did(env, tmp_path, policy):
    """Production's `score_chunk` (Arrow chunk, Arrow retrieval, Arrow into `write_part`) on
    real Feast features (missing plane rows included) publishes the same part files, byte for
    byte, as the pandas path did: the same feature values, model inputs and probabilities."""
    import dataclasses

    from pipelines.features.retrieval import historical_features_table
    from pipelines.features.store import get_store

    cfg, settings = _with(env["cfg"], missing_features=policy), env["settings"]
    day = DAYS[2]
    old = dataclasses.replace(settings, data_uri=str(tmp_path))
    model = scoring.resolve_model(cfg, settings, day)
    chunks = scoring.plan_interval(cfg, settings, day)
    assert len(chunks) == 2  # 752 rows / 400
    before = []
    for chunk in chunks:
        feats, part = _pandas_chunk_path(cfg, settings, day, chunk, model, old)
        before.append(part)
        arrow = historical_features_table(get_store(settings), cfg.features.service,
                                          read_chunk(chunk), list(cfg.features.join_keys))
        assert arrow.column_names == list(feats.columns)
        pd.testing.assert_frame_equal(arrow.to_pandas(), feats)  # the retrieval itself

    scoring.score_interval(cfg, settings, day, model, f"arrow-{policy}")
    manifest = scoring.read_manifest(settings, day)
    assert manifest["files"] == [p["file"] for p in before]
    assert [p["sha256"] for p in manifest["parts"]] == [p["sha256"] for p in before]
    for key in ("input_rows", "rows"):
        assert [p[key] for p in manifest["parts"]] == [p[key] for p in before]
    counts = {}
    for p in before:
        counts = add_counts(counts, {k: v for k, v in p["missing_features"].items()
                                             if k != "policy"})
    assert manifest["missing_features"] == {"policy": policy, **counts}
    assert counts["rows_with_missing_features"] > 10
    published = _partition_files(settings, day)
    for p in before:
        old_bytes = storage.read_bytes(storage.join(locations.predictions(old, day), p["file"]))
        assert published[p["file"]] == old_bytes
    probs = scoring.read_partition(settings, day)["probability"].to_numpy()
    old_probs = np.concatenate([read_table(storage.join(
        locations.predictions(old, day), p["file"]), ["probability"])["probability"].to_numpy()
        for p in before])
    assert np.array_equal(probs, old_probs) and len(probs) == manifest["output_rows"]


# -- integrity on the scoring path: the ONNX file, the pinned payload, the staged parts ---------

def _onnx_file(env, version: str) -> Path:
    run_id = registry.describe("delay_model", registry.client(env["settings"]).get_model_version(
        "delay_model", version))["run_id"]
    (path,) = Path(env["settings"].state_uri).rglob(f"{run_id}/artifacts/onnx/model.onnx")
    return path


def test_scoring_refuses_a_tampered_onnx_file_and_publishes_nothing(env, tmp_path):
    cfg, settings, day = env["cfg"], env["settings"], date(2013, 1, 11)
    path = _onnx_file(env, env["versions"][0])
    original = path.read_bytes()
    before = scoring.read_manifest(settings, day)
    try:
        path.write_bytes(original.replace(b"TreeEnsemble", b"TreeEnsemblf", 1))
        with pytest.raises(registry.RegistryError, match="sha256 .* does not match"):
            scoring.score_interval(cfg, settings, day, None, "tampered")
    finally:
        path.write_bytes(original)
    assert scoring.read_manifest(settings, day) == before  # the earlier partition (or none)
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from sklearn.linear_model import LogisticRegression

    pickled = str(tmp_path / "pickled")  # and this scoring process unpickles nothing
    mlflow.sklearn.save_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), pickled,
                              serialization_format="cloudpickle", pip_requirements=[])
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    with pytest.raises(MlflowException, match="disallowed"):
        mlflow.sklearn.load_model(pickled)


@pytest.mark.parametrize("field", ["onnx_sha256", "onnx_uri", "numeric"])
def test_a_pinned_payload_that_disagrees_with_the_registry_is_refused(env, field):
    """The task payload (XCom) is not trusted: location, hash and inputs come from the
    registry by name and version."""
    cfg, settings = env["cfg"], env["settings"]
    model = dict(scoring.resolve_model(cfg, settings, DAY))
    model[field] = {"onnx_sha256": "0" * 64, "onnx_uri": "file:///tmp/evil.onnx",
                    "numeric": ["only_this"]}[field]
    chunk = scoring.plan_interval(cfg, settings, DAY)[0]
    with pytest.raises(registry.RegistryError, match=f"pinned {field}=.*registry holds"):
        scoring.score_chunk(cfg, settings, DAY, chunk, model)


@pytest.mark.parametrize("fault", ["part deleted", "part rewritten", "other version",
                                   "chunk missing", "other policy"])
def test_publish_refuses_staged_parts_it_cannot_trust(env, fault):
    """What `publish` checks before the commit point, each alone: the previously published
    partition stays exactly as it was."""
    cfg, settings, day = env["cfg"], env["settings"], date(2013, 1, 12)
    scoring.score_interval(cfg, settings, day, None, "published")
    published = scoring.read_manifest(settings, day)
    files = _partition_files(settings, day)
    model = scoring.resolve_model(cfg, settings, day)
    chunks = scoring.plan_interval(cfg, settings, day)
    parts = [scoring.score_chunk(cfg, settings, day, c, model) for c in chunks]
    staged = Path(locations.predictions(settings, day)) / parts[0]["file"]
    expect = {"part deleted": (FileNotFoundError, "is gone"),
              "part rewritten": (ValueError, "does not hold the bytes"),
              "other version": (ValueError, "scored by v9"),
              "chunk missing": (ValueError, "parts for chunks"),
              "other policy": (ValueError, "scored under missing_features")}[fault]
    if fault == "part deleted":
        parts[0] = {**parts[0], "file": "part-gone.parquet"}
    elif fault == "part rewritten":
        parts[0] = {**parts[0], "sha256": "f" * 64}
    elif fault == "other version":
        parts[0] = {**parts[0], "model_version": "9"}
    elif fault == "chunk missing":
        parts = parts[1:]
    else:
        parts[0] = {**parts[0], "missing_features": {**parts[0]["missing_features"],
                                                     "policy": "reject"}}
    assert staged.exists()
    with pytest.raises(expect[0], match=expect[1]):
        publish(cfg, settings, day, chunks, parts, model, "untrusted")
    assert scoring.read_manifest(settings, day) == published
    assert {n: b for n, b in _partition_files(settings, day).items() if n in files} == files
