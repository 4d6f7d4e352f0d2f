"""Every stage with its data in an S3 object store, Feast online in Redis, history in Postgres.

Real servers on loopback, started by `stack.services`: SeaweedFS (S3 API with a generated key
pair), Redis (password), Postgres (password). The stages run in this process, as the Airflow
tasks call them, on a small slice: ingest -> training (GX, Feast PIT, MLflow, gates, promotion)
-> feature materialisation into Redis + skew check -> batch scoring -> drift check. Then the
test looks where everything went: objects in the bucket, keys in Redis, rows in Postgres, and
no data, prediction or report file in the local state folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BUCKET = "mlops-it"
TRAIN = ("2013-01-01", "2013-01-11")
DAY = date(2013, 6, 1)


@pytest.fixture(scope="module")
def stack():
    from stack import services

    # Postgres runs as the `postgres` OS user when we are root: a root it can traverse.
    root = Path(tempfile.mkdtemp(prefix="mlops-stack-"))
    root.chmod(0o755)
    started = []
    try:
        s3 = services.start_seaweedfs(root)
        started.append(s3)
        redis = services.start_redis(root)
        started.append(redis)
        pg = services.start_postgres(root)
        started.append(pg)
        services.create_bucket(s3.env, BUCKET)
        urls = {name: services.create_database(pg, name) for name in ("metrics", "mlflow")}
        yield {"root": root, "s3": s3, "redis": redis, "postgres": pg, **urls}
    finally:
        for svc in reversed(started):
            svc.stop(timeout=3)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _restored(saved: dict[str, str]):
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def env(stack, tmp_path_factory):
    """The S3/Redis/Postgres configuration, restored afterwards (Feast and MLflow export some
    variables into os.environ: they are touched first so the restore covers them)."""
    tmp = tmp_path_factory.mktemp("object-store")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["training"].update({"initial_window": {"start": TRAIN[0], "end": TRAIN[1]},
                            "window_days": 10, "max_rows": 20000})
    raw["training"]["estimator"]["params"]["n_estimators"] = 30
    raw["gates"]["compare"]["n_bootstrap"] = 50
    raw["gates"]["floors"] = {"roc_auc": 0.5, "pr_auc": 0.0}  # not a test of the model
    raw["drift"]["window_days"] = 1
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    state = tmp / "state"
    # The whole environment is restored afterwards: Feast and MLflow export variables into
    # os.environ (FEAST_REGISTRY_PATH, FEAST_S3_ENDPOINT_URL, MLFLOW_EXPERIMENT_ID, ...), and
    # monkeypatch only restores names it recorded (delenv of an absent name records nothing).
    saved = dict(os.environ)
    with _restored(saved), pytest.MonkeyPatch.context() as mp:
        for name in ("FEAST_REGISTRY_PATH", "FEAST_ONLINE_PATH", "FEAST_STATE_DIR",
                     "FEAST_S3_ENDPOINT_URL", "FEAST_FS_YAML_FILE_PATH", "MLFLOW_TRACKING_URI",
                     "MLOPS_LOCK_URL"):
            mp.delenv(name, raising=False)
        for svc in ("s3", "redis", "postgres"):
            for key, value in stack[svc].env.items():
                mp.setenv(key, value)
        mp.setenv("MLOPS_PARAMS", str(params))
        mp.setenv("MLOPS_STATE_URI", str(state))
        mp.setenv("MLOPS_DATA_URI", f"s3://{BUCKET}/data")
        mp.setenv("MLOPS_REPORTS_URI", f"s3://{BUCKET}/reports")
        mp.setenv("MLOPS_MLFLOW_ARTIFACTS_URI", f"s3://{BUCKET}/mlflow")
        mp.setenv("MLFLOW_TRACKING_URI", stack["mlflow"])
        mp.setenv("MLOPS_METRICS_DB", stack["metrics"])
        mp.setenv("FEAST_ONLINE_STORE", "redis")
        yield {"state": state, **stack}


def _keys(stack, prefix: str = "") -> list[str]:
    import boto3

    env = stack["s3"].env
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def test_stages_on_object_store_redis_postgres(env):
    import psycopg2
    import redis

    from pipelines import cli, features, monitoring, scoring
    from pipelines.core import locks
    from pipelines.core.config import load_config
    from pipelines.core.settings import get_settings
    from pipelines.data.checks import validate_interval, validate_predictions
    from pipelines.data.ingest import ingest
    from pipelines.features import online
    from pipelines.model import registry
    from pipelines.monitoring import history as metrics_store
    from pipelines.scoring.publish import part_uris, publish

    cfg, settings = load_config(), get_settings()
    assert settings.landing_uri == f"s3://{BUCKET}/data/landing"

    # landing zone straight into the bucket
    ingest(cfg, settings.landing_uri, date(2013, 1, 1), date(2013, 1, 12))
    ingest(cfg, settings.landing_uri, DAY - timedelta(days=3), DAY + timedelta(days=1))

    # training: GX on S3 batches, Feast registry on S3, PIT from S3 Parquet, MLflow on Postgres
    # with artifacts in S3, gates, promotion (alias moves under the Postgres advisory lock)
    assert locks.lock_url() == env["metrics"]
    assert cli.main(["train", "--start", TRAIN[0], "--end", TRAIN[1], "--promote"]) in (0, None)
    champion = registry.resolve_champion(settings, cfg.registry.model_name)
    assert champion["version"] == "1"

    # feature materialisation of one day into Redis, then the online/offline skew check
    validate_interval(cfg, settings, DAY)
    assert features.build_sources_for_interval(cfg, settings, DAY)
    done = online.materialize(cfg, settings, DAY)
    skew = online.check_skew(cfg, settings, done["as_of"])
    assert skew["compared"] > 0
    store = features.get_store(settings)
    assert type(store._get_provider().online_store).__name__ == "RedisOnlineStore"

    # batch scoring of that day, as the DAG's tasks do it
    model = scoring.resolve_model(cfg, settings, DAY)
    chunks = scoring.plan_interval(cfg, settings, DAY)
    parts = [scoring.score_chunk(cfg, settings, DAY, c, model) for c in chunks]
    validate_predictions(cfg, settings, DAY, part_uris(settings, DAY, parts))
    published = publish(cfg, settings, DAY, chunks, parts, model, "object-store-test")
    assert published["rows"] > 500
    preds = scoring.read_partition(settings, DAY)
    assert len(preds) == published["rows"] and preds["row_key"].is_unique

    # drift check -> history in Postgres, report and plot in the bucket
    verdict = monitoring.check_interval(cfg, settings, DAY, DAY)
    monitoring.decide(cfg, settings, DAY, "object-store-test")
    plot = monitoring.plot(cfg, settings, DAY)
    assert plot.startswith(f"s3://{BUCKET}/")
    assert not metrics_store.history(settings, DAY, DAY, "drift").empty

    # --- where everything went ---------------------------------------------------------------
    keys = _keys(env)

    def under(prefix: str) -> list[str]:
        return [k for k in keys if k.startswith(prefix)]

    assert any(k.endswith("flights.csv") for k in under("data/landing/flights/"))
    assert under("data/features/weather/") and under("data/training_sets/")
    assert under(f"data/predictions/date={DAY.isoformat()}/")
    assert "data/feast/registry.db" in keys
    assert under("reports/") and any(k.endswith(".html") for k in under("reports/"))
    assert any(k.endswith("model.onnx") for k in under("mlflow/")), "MLflow artifacts in S3"
    assert verdict.get("report_uri", "").startswith(f"s3://{BUCKET}/")

    # nothing of the data, predictions or reports on the local disk
    local = [p for p in env["state"].rglob("*") if p.is_file()] if env["state"].exists() else []
    data_like = [p for p in local if p.suffix in (".csv", ".parquet", ".html", ".json", ".md",
                                                  ".png", ".onnx", ".db")]
    assert not data_like, f"state files on the local disk: {data_like}"

    # the online store is Redis: Feast's keys are there and online reads come from it
    r = redis.Redis.from_url(os.environ["MLOPS_REDIS_URL"])
    assert r.dbsize() > 0
    resp = store.get_online_features(features=["weather_fv:temp"],
                                     entity_rows=[{"origin": "JFK"}]).to_dict()
    assert resp["temp"][0] is not None

    # monitoring history and the model registry are in Postgres
    with psycopg2.connect(env["metrics"]) as con, con.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT source) FROM metrics")
        n_rows, n_sources = cur.fetchone()
    assert n_rows > 10 and n_sources >= 2
    with psycopg2.connect(env["mlflow"]) as con, con.cursor() as cur:
        cur.execute("SELECT name, alias, version FROM registered_model_aliases")
        aliases = cur.fetchall()
    assert (cfg.registry.model_name, "champion", 1) in aliases
