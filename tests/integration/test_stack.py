"""The scale path for real: `python -m stack up` starts Postgres, Redis, SeaweedFS (S3), an
MLflow server and Airflow with the CeleryExecutor and two workers on loopback; the lifecycle
runs on a small slice through Airflow's REST API, as a user would drive it.

Checked: tasks run on the Celery workers (each worker records its own name as the task
instance's hostname), data/reports/model artifacts land in the object store and nothing in the
local state folder, the registry is in Postgres, the online store is Redis. Faults: the
scheduler is restarted in the middle of a training run, and a Celery worker is SIGKILLed while
it runs a scoring chunk; the runs complete, the chunk is retried on the other worker, and the
partition is complete and unduplicated.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
WORKERS = {"worker-1", "worker-2"}


def _stack(env: dict[str, str], *args: str, timeout: float = 400) -> str:
    out = subprocess.run([sys.executable, "-m", "stack", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"stack {args}: {out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["training"].update({"initial_window": {"start": "2013-01-01", "end": "2013-01-15"},
                            "window_days": 10, "max_rows": 20000})
    raw["training"]["estimator"]["params"]["n_estimators"] = 40
    raw["gates"]["compare"]["n_bootstrap"] = 100
    raw["gates"]["floors"] = {"roc_auc": 0.55, "pr_auc": 0.2}
    raw["orchestration"]["retry_delay_s"] = 2
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    # The test session's own embedded settings must not leak into the stack's processes.
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MLOPS_", "FEAST_", "MLFLOW_", "AIRFLOW", "AWS_"))}
    # Not under pytest's private (0700) tmp: Postgres runs as its own OS user and must reach it.
    root = Path(tempfile.mkdtemp(prefix="mlops-stack-"))
    root.chmod(0o755)
    env = {**base, "MLOPS_STACK_DIR": str(root), "MLOPS_PARAMS": str(params),
           "MLOPS_SCHEDULE_START": "2013-06-01", "MLOPS_SCHEDULE_END": "2013-06-02",
           # a SIGKILLed worker's task is failed (then retried) 15 s after its last heartbeat;
           # a live task heartbeats every 2 s, so it would have to miss seven in a row (room for
           # a loaded 2-core CI machine)
           "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
           "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
           "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
           # The killed worker may also have taken a task it had not started yet (still
           # "queued", so no heartbeat to time out): requeue such a task after 60 s instead of
           # the default 600 s. Tasks here wait for a worker slot for seconds, not minutes.
           "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
           "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5"}
    try:
        _stack(env, "up", "--workers", "2")
        saved = json.loads((root / "stack.json").read_text())
        senv = {**base, **saved["env"]}
        # The two landing slices at once (separate days; the undated reference tables are
        # the same bytes from both), while the DAGs are being parsed.
        ingests = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ingest", "--start",
                                     start, "--end", end, "--landing",
                                     f"{senv['MLOPS_DATA_URI']}/landing"], cwd=REPO, env=senv,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for start, end in (("2013-01-01", "2013-01-16"), ("2013-05-28", "2013-06-04"))]
        try:
            from stack.airflow import secrets_env
            from stack.api import AirflowClient

            client = AirflowClient(senv["AIRFLOW__API__BASE_URL"], "admin",
                                   secrets_env(root)["MLOPS_AIRFLOW_ADMIN_PASSWORD"])
            client.wait_for_dags(["training", "batch_scoring", "feature_materialization"])
            for proc in ingests:
                _, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, err[-3000:]
        finally:
            for proc in ingests:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        yield {"env": env, "senv": senv, "client": client, "root": root,
               "services": saved["services"]}
    finally:
        _stack(env, "down", "--timeout", "5", timeout=180)
        if not os.environ.get("MLOPS_KEEP_TEST_STATE"):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack_settings(stack):
    """This process pointed at the stack (for reading what the runs wrote); the whole
    environment is restored afterwards (libraries export variables of their own)."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(("MLOPS_", "FEAST_", "MLFLOW_", "AWS_")):
            del os.environ[key]
    os.environ.update({k: v for k, v in stack["senv"].items()
                       if k.startswith(("MLOPS_", "FEAST_", "MLFLOW_", "AWS_"))})
    from pipelines.core.settings import get_settings

    try:
        yield get_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _assert_success(stack, dag_id: str, run_id: str, timeout: float = 600) -> None:
    """Wait for the run; on failure, show each failed task's log (what a user would open)."""
    client = stack["client"]
    state = client.wait(dag_id, run_id, timeout=timeout)
    if state == "success":
        return
    logs = []
    for ti in client.task_instances(dag_id, run_id):
        if ti["state"] in ("failed", "upstream_failed"):
            folder = stack["root"] / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
            for f in sorted(folder.glob(f"task_id={ti['task_id']}/**/*.log")):
                errors = [ln[:1500] for ln in f.read_text().splitlines() if '"level":"error"' in ln]
                logs.append(f"--- {f}\n" + "\n".join(errors[-6:]))
    raise AssertionError(f"{dag_id} {run_id} ended {state}:\n" + "\n".join(logs))


def _hostnames(client, dag_id: str, run_id: str) -> set[str]:
    return {ti["hostname"] for ti in client.task_instances(dag_id, run_id) if ti["hostname"]}


def _wait_running(client, dag_id: str, run_id: str, prefix: str, timeout: float = 300) -> dict:
    """The first task instance whose task id starts with `prefix` seen running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in client.task_instances(dag_id, run_id):
            if ti["task_id"].startswith(prefix) and ti["state"] == "running" and ti["hostname"]:
                return ti
        time.sleep(0.3)
    raise AssertionError(f"no {prefix}* task of {dag_id} {run_id} seen running")


def test_training_on_celery_survives_a_scheduler_restart(stack, stack_settings):
    import boto3
    import psycopg2

    client, root = stack["client"], stack["root"]
    client.unpause("training")
    run_id = client.trigger("training", conf={"train_start": "2013-01-01",
                                              "train_end": "2013-01-15"})
    # Restart the scheduler once the run is under way (a task of it has been handed out).
    _wait_running(client, "training", run_id, "")
    _stack(stack["env"], "restart", "scheduler")
    _assert_success(stack, "training", run_id)

    tis = client.task_instances("training", run_id)
    assert {ti["state"] for ti in tis} <= {"success", "skipped"}
    hosts = _hostnames(client, "training", run_id)
    assert hosts and hosts <= WORKERS, hosts

    # The registry is MLflow's Postgres database; the model's files are in the object store.
    senv = stack["senv"]
    pg = next(s for s in stack["services"] if s["name"] == "postgres")["env"]
    with psycopg2.connect(host="127.0.0.1", port=pg["PGPORT"], user=pg["PGUSER"],
                          password=pg["PGPASSWORD"], dbname="mlflow") as con, con.cursor() as cur:
        cur.execute("SELECT alias, version FROM registered_model_aliases")
        aliases = dict(cur.fetchall())
    assert aliases.get("champion") == 1, aliases
    # A session of its own: boto3's default session keeps the first credentials it resolved.
    s3 = boto3.session.Session(aws_access_key_id=senv["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=senv["AWS_SECRET_ACCESS_KEY"],
                               region_name=senv["AWS_DEFAULT_REGION"]).client(
        "s3", endpoint_url=senv["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlops")
            for o in page.get("Contents", [])]
    assert any(k.startswith("mlflow/") and k.endswith(".onnx") for k in keys), keys[:50]
    assert any(k.startswith("data/landing/") for k in keys)
    assert any(k.startswith("data/training_sets/") for k in keys)
    assert any(k.startswith("reports/gates/") for k in keys)
    # Nothing a worker wrote went to a local folder another worker could not see.
    local = Path(senv["MLOPS_STATE_URI"])
    written = [p for p in local.rglob("*") if p.is_file()] if local.exists() else []
    assert not [p for p in written if p.suffix in {".parquet", ".csv", ".onnx", ".json"}], written


def test_scoring_survives_a_killed_worker(stack, stack_settings):
    import redis

    from pipelines import scoring
    from pipelines.core import locations

    client, senv = stack["client"], stack["senv"]
    # Catch-up: two nightly intervals (2013-06-01, 2013-06-02) start once unpaused.
    client.unpause("feature_materialization")
    client.unpause("batch_scoring")
    run_ids: list[str] = []
    deadline = time.monotonic() + 120
    while len(run_ids) < 2 and time.monotonic() < deadline:
        time.sleep(1)
        runs = client._request("GET", "/api/v2/dags/batch_scoring/dagRuns?limit=10")["dag_runs"]
        run_ids = sorted(r["dag_run_id"] for r in runs)
    assert len(run_ids) == 2, run_ids

    # SIGKILL the worker running a scoring chunk (the task and its supervisor die with it).
    victim_ti = _wait_running(client, "batch_scoring", run_ids[0], "score")
    victim = victim_ti["hostname"]
    services = json.loads((stack["root"] / "stack.json").read_text())["services"]
    pid = next(s["pid"] for s in services if s["name"] == victim)
    os.killpg(pid, signal.SIGKILL)

    for run_id in run_ids:
        _assert_success(stack, "batch_scoring", run_id)
    tries = client.tries("batch_scoring", run_ids[0], victim_ti["task_id"],
                         victim_ti["map_index"])
    assert tries[0]["hostname"] == victim and tries[0]["state"] != "success", tries
    assert tries[-1]["state"] == "success" and tries[-1]["hostname"] == (WORKERS - {victim}).pop()

    # Back to two workers, while the outputs are checked.
    restart = subprocess.Popen([sys.executable, "-m", "stack", "restart", victim], cwd=REPO,
                               env=stack["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        for day in (date(2013, 6, 1), date(2013, 6, 2)):
            manifest = scoring.read_manifest(stack_settings, day)
            preds = scoring.read_partition(stack_settings, day)
            assert manifest["input_rows"] == manifest["output_rows"] == len(preds) > 500
            assert preds["row_key"].is_unique and (preds["model_version"] == "1").all()
            assert locations.predictions(stack_settings, day).startswith("s3://")

        # The online store is Redis (db 1; Celery's broker is db 0).
        for run in client._request("GET", "/api/v2/dags/feature_materialization/dagRuns")[
                "dag_runs"]:
            _assert_success(stack, "feature_materialization", run["dag_run_id"], timeout=300)
        r = redis.Redis.from_url(senv["MLOPS_REDIS_URL"])
        assert r.dbsize() > 0
    finally:
        out, err = restart.communicate(timeout=400)
    assert restart.returncode == 0, f"stack restart {victim}: {out[-3000:]}\n{err[-5000:]}"
    assert f"restarted {victim}" in out
