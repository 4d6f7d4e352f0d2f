"""The scale path for real: `python -m stack up` starts Postgres, Redis, SeaweedFS (S3), an
MLflow server and Airflow with the CeleryExecutor and two workers on loopback; the lifecycle
runs on a small slice through Airflow's REST API, as a user would drive it.

The stack's online model server (2 uvicorn workers) comes up before any champion exists (live,
not ready), becomes ready once training promotes one, answers a V2 client (tritonclient) with
the bearer token only, sums its metrics over both workers and logs its predictions to S3.

Checked: tasks run on the Celery workers (each worker records its own name as the task
instance's hostname), data/reports/model artifacts land in the object store and nothing in the
local state folder, the registry is in Postgres, the online store is Redis. Faults: the
scheduler is restarted in the middle of a training run, and a Celery worker is SIGKILLed while
it runs a scoring chunk; the runs complete, the chunk is retried on the other worker, and the
partition is complete and unduplicated.

The stack keeps its secrets: none is on the command line of any process it started (those
alive while tasks run, and every one `python -m stack` spawned, recorded by an audit hook), every
listening socket is on 127.0.0.1, MLflow refuses requests without the generated login, the object
store's master, volume and filer servers refuse what is not signed, each database is reached
through its own non-superuser role, and nothing in the stack folder is readable by others.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
WORKERS = {"worker-1", "worker-2"}
# `python -m stack`, recording the argv of every process it spawns (Python's audit event for
# subprocess.Popen) in $MLOPS_TEST_ARGV_LOG: short-lived ones too (psql, airflow users create).
_AUDITED_STACK = """
import json, os, runpy, sys
log = open(os.environ["MLOPS_TEST_ARGV_LOG"], "a")
def hook(event, args):
    if event == "subprocess.Popen":
        argv = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        log.write(json.dumps([os.fsdecode(a) for a in argv]) + "\\n")
        log.flush()
sys.addaudithook(hook)
sys.argv[0] = "stack"
runpy.run_module("stack", run_name="__main__", alter_sys=True)
"""


def _stack(env: dict[str, str], *args: str, timeout: float = 400) -> str:
    out = subprocess.run([sys.executable, "-c", _AUDITED_STACK, *args], cwd=REPO, env=env,
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
           "MLOPS_TEST_ARGV_LOG": str(tmp / "argv.log"),
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
               "services": saved["services"], "argv_log": tmp / "argv.log"}
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


SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|^key$|password", re.I)


def _secrets(root: Path) -> set[str]:
    """Every secret the stack generated, read from its 0600 files (at least a dozen)."""
    found: set[str] = set()
    files = ["postgres/credentials.json", "postgres/roles.json", "redis/credentials.json",
             "seaweedfs/credentials.json", "airflow/secrets.json", "mlflow/secrets.json"]
    for name in files:
        for key, value in json.loads((root / name).read_text()).items():
            if name.endswith("roles.json") or SECRET_KEY.search(key):
                found.add(value)
    found.update(re.findall(r'^key = "([^"/][^"]*)"',  # the JWT keys (not the key file's path)
                            (root / "seaweedfs/security.toml").read_text(), re.M))
    token = root / "serving" / "token"  # the model server's bearer token (its launcher's)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    found.add(token.read_text().strip())
    assert len(found) >= 13 and all(len(v) >= 16 for v in found), sorted(map(len, found))
    return found


def _processes(stack) -> list:
    """Every process of the stack alive now: the services and all their descendants."""
    import psutil

    services = json.loads((stack["root"] / "stack.json").read_text())["services"]
    procs = []
    for service in services:
        top = psutil.Process(service["pid"])
        procs += [top, *top.children(recursive=True)]
    return procs


def _check_processes(stack) -> None:
    """No secret on any command line, nothing listening beyond loopback, no pickle loading."""
    import psutil

    secrets = _secrets(stack["root"])
    seen, leaks, exposed, pickling = 0, [], [], []
    for proc in _processes(stack):
        try:
            cmdline = "\0".join(proc.cmdline())
            listening = [c.laddr for c in proc.net_connections("inet") if c.status == "LISTEN"]
            environ = proc.environ()
        except psutil.NoSuchProcess:
            continue
        seen += 1
        leaks += [(proc.pid, cmdline[:200]) for secret in secrets if secret in cmdline]
        exposed += [(proc.pid, proc.name(), a) for a in listening if a.ip not in ("127.0.0.1", "::1")]
        if ("MLFLOW_TRACKING_URI" in environ or proc.name() == "mlflow") and \
                environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION") != "false":
            pickling.append(proc.cmdline()[:4])
    assert seen > 30, seen  # servers, their workers, Airflow's processes and a running task
    assert not leaks and not exposed and not pickling, (leaks, exposed, pickling)


def test_training_on_celery_survives_a_scheduler_restart(stack, stack_settings):
    import boto3
    import psycopg2

    client, root = stack["client"], stack["root"]
    # The model server came up without a champion: live, not ready (it follows the alias).
    server = stack["senv"]["MLOPS_SERVING_URL"]
    assert _http("GET", f"{server}/v2/health/live") == 200
    assert _http("GET", f"{server}/v2/health/ready") == 503
    client.unpause("training")
    run_id = client.trigger("training", conf={"train_start": "2013-01-01",
                                              "train_end": "2013-01-15"})
    # Restart the scheduler once the run is under way (a task of it has been handed out).
    _wait_running(client, "training", run_id, "")
    _check_processes(stack)  # while a task runs (its supervisor and process included)
    _stack(stack["env"], "restart", "scheduler")
    _assert_success(stack, "training", run_id)

    tis = client.task_instances("training", run_id)
    assert {ti["state"] for ti in tis} <= {"success", "skipped"}
    hosts = _hostnames(client, "training", run_id)
    assert hosts and hosts <= WORKERS, hosts

    # The registry is MLflow's Postgres database, reached through MLflow's own role (no
    # superuser, no way into Airflow's database); the model's files are in the object store.
    senv = stack["senv"]
    pg = next(s for s in stack["services"] if s["name"] == "postgres")["env"]
    role = {"host": "127.0.0.1", "port": pg["PGPORT"], "user": "mlflow", "password": json.loads(
        (root / "postgres" / "roles.json").read_text())["mlflow"]}
    with psycopg2.connect(**role, dbname="mlflow") as con, con.cursor() as cur:
        cur.execute("SELECT alias, version FROM registered_model_aliases")
        aliases = dict(cur.fetchall())
        cur.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                    "WHERE rolname = current_user")
        assert cur.fetchone() == (False, False, False)
    assert aliases.get("champion") == 1, aliases
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        psycopg2.connect(**role, dbname="airflow").close()
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
    # Task logs are read by the API server from the stack's log folder (no log servers).
    task = next(ti for ti in tis if ti["state"] == "success")
    path = (f"/api/v2/dags/training/dagRuns/{run_id}/taskInstances/{task['task_id']}/logs/"
            f"{task['try_number']}")
    assert task["task_id"] in json.dumps(client._request("GET", path))
    # Nothing a worker wrote went to a local folder another worker could not see.
    local = Path(senv["MLOPS_STATE_URI"])
    written = [p for p in local.rglob("*") if p.is_file()] if local.exists() else []
    assert not [p for p in written if p.suffix in {".parquet", ".csv", ".onnx", ".json"}], written


def _mlflow(senv: dict[str, str], method: str, path: str, body: dict,
            login: tuple[str, str] | None) -> int:
    headers = {"Content-Type": "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    req = urllib.request.Request(senv["MLFLOW_TRACKING_URI"] + path, method=method,
                                 data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_mlflow_takes_nothing_without_the_generated_login(stack):
    """Moving `champion` or rewriting a version's sha256 tag needs the login; with it, it works
    (a probe alias is set and removed; the champion is where training put it)."""
    senv = stack["senv"]
    login = (senv.get("MLFLOW_TRACKING_USERNAME", ""), senv.get("MLFLOW_TRACKING_PASSWORD", ""))
    alias = {"name": "delay_model", "alias": "champion", "version": "1"}
    tag = {"name": "delay_model", "version": "1", "key": "onnx_sha256", "value": "0" * 64}
    for who in (None, (login[0], login[1] + "x"), ("admin", login[1])):
        assert _mlflow(senv, "POST", "/api/2.0/mlflow/registered-models/alias", alias, who) == 401
        assert _mlflow(senv, "POST", "/api/2.0/mlflow/model-versions/set-tag", tag, who) == 401
    probe = {**alias, "alias": "probe"}
    assert _mlflow(senv, "POST", "/api/2.0/mlflow/registered-models/alias", probe, login) == 200
    assert _mlflow(senv, "DELETE", "/api/2.0/mlflow/registered-models/alias",
                   {"name": "delay_model", "alias": "probe"}, login) == 200


def _http(method: str, url: str, context: ssl.SSLContext | None = None) -> int | str:
    req = urllib.request.Request(url, data=b"x" if method in ("PUT", "POST") else None,
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError as err:  # refused while connecting
        return type(err.reason).__name__
    except ssl.SSLError as err:  # TLS 1.3: a missing client certificate is refused on first read
        return type(err).__name__


def _tls_handshake(port: int, ca: str) -> str:
    """A TLS handshake without a client certificate: the error the server answers with."""
    ctx = ssl.create_default_context(cafile=ca)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            tls.recv(64)
    except ssl.SSLError as err:
        return err.reason or str(err)
    return "accepted"


MODEL = "delay_model"
FLIGHTS = [  # raw events of 2013-06-02 (UTC), as the event feed has them
    ("2013-06-02T15:00:00Z", "UA", "1545", "EWR", "IAH", "N14228", 1400.0, 11.0),
    ("2013-06-02T16:00:00Z", "AA", "1141", "JFK", "MIA", "N619AA", 1089.0, 12.0),
    ("2013-06-02T21:00:00Z", "B6", "725", "JFK", "BQN", "N804JB", 1576.0, 17.0),
]
COLUMNS = ("time_hour", "carrier", "flight", "origin", "dest", "tailnum", "distance", "hour")


def _v2_json(request_id: str) -> dict:
    """A JSON V2 request of FLIGHTS (text as BYTES, numbers FP64)."""
    return {"id": request_id, "inputs": [
        {"name": c, "datatype": "FP64" if c in ("distance", "hour") else "BYTES",
         "shape": [len(FLIGHTS)], "data": [row[i] for row in FLIGHTS]}
        for i, c in enumerate(COLUMNS)]}


def _served(http, token: str) -> dict:
    """The model server's /metrics: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    r = http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for family in text_string_to_metric_families(r.text) for smp in family.samples}


def test_the_model_server_serves_the_champion(stack, stack_settings):
    """After training promoted v1: the stack's server (2 workers) is ready with v1 in both
    workers, answers tritonclient with the bearer token and 401 without it, /metrics sums the
    requests of both workers, and the prediction log is in S3 under the data URI."""
    import httpx
    import numpy as np
    import tritonclient.http as triton

    from pipelines.core import locations
    from pipelines.scoring.table import read_log

    senv = stack["senv"]
    url, token_file = senv["MLOPS_SERVING_URL"], Path(senv["MLOPS_SERVING_TOKEN_FILE"])
    assert token_file.parent == stack["root"] / "serving"
    token = token_file.read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}

    def fresh() -> httpx.Client:  # a new connection: either worker may answer
        return httpx.Client(base_url=url, timeout=30)

    # Ready once both workers have loaded the champion (each polls the registry every 2 s).
    deadline, loaded = time.monotonic() + 90, set()
    while time.monotonic() < deadline:
        with fresh() as http:
            ready = http.get("/v2/health/ready").status_code
            samples = _served(http, token)
        loaded = {dict(ls)["pid"] for (n, ls), v in samples.items()
                  if n == "serving_model_info" and v == 1 and dict(ls)["version"] == "1"}
        if ready == 200 and len(loaded) == 2:
            break
        time.sleep(1)
    assert ready == 200 and len(loaded) == 2, (ready, loaded)

    with fresh() as http:
        denied = http.post(f"/v2/models/{MODEL}/infer", json=_v2_json("no-token"))
    assert denied.status_code == 401, denied.text

    # A V2 client (binary tensors) with the token.
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    inputs = []
    for i, c in enumerate(COLUMNS):
        numeric = c in ("distance", "hour")
        tensor = triton.InferInput(c, [len(FLIGHTS)], "FP64" if numeric else "BYTES")
        tensor.set_data_from_numpy(np.array([row[i] for row in FLIGHTS],
                                            dtype=np.float64 if numeric else object))
        inputs.append(tensor)
    # (a copy: tritonclient adds its own headers to the dict it is given)
    result = client.infer(MODEL, inputs, headers=dict(auth), request_id="stack-triton")
    response = result.get_response()
    assert response["model_version"] == "1" and response["parameters"]["variant"] == "champion"
    probability = result.as_numpy("probability")
    assert probability.shape == (len(FLIGHTS),) and ((probability >= 0) & (probability <= 1)).all()
    row_keys = {k.decode() if isinstance(k, bytes) else k for k in result.as_numpy("row_key")}
    assert len(row_keys) == len(FLIGHTS)
    # More requests, each on a new connection (JSON this time).
    ids = ["stack-triton"]
    for i in range(5):
        with fresh() as http:
            r = http.post(f"/v2/models/{MODEL}/infer", headers=auth, json=_v2_json(f"stack-{i}"))
        assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
        ids.append(f"stack-{i}")

    # Whichever worker answers /metrics, it counts the requests of both.
    for _ in range(4):
        with fresh() as http:
            samples = _served(http, token)
        success = sum(v for (n, ls), v in samples.items()
                      if n == "model_infer_request_success_total" and dict(ls)["model_version"] == "1")
        rows = sum(v for (n, ls), v in samples.items() if n == "model_infer_rows_total")
        assert success == len(ids) and rows == len(ids) * len(FLIGHTS), (success, rows)

    # The prediction log (each worker flushes every 5 s) is in the bucket, under the data URI:
    # every row of every request written (by whichever worker took it), and read back as one
    # row per row key, the latest answer's.
    day = date(2013, 6, 2)
    assert stack_settings.data_uri.startswith("s3://")
    assert locations.prediction_log(stack_settings, day).startswith(
        f"{stack_settings.data_uri}/prediction_log/")
    deadline, logged, written = time.monotonic() + 45, None, 0.0
    while time.monotonic() < deadline:
        with fresh() as http:
            written = sum(v for (n, ls), v in _served(http, token).items()
                          if n == "serving_prediction_log_rows_total"
                          and dict(ls)["status"] == "written")
        try:
            logged = read_log(stack_settings, day, extra=True)
        except FileNotFoundError:
            logged = None
        if written == len(ids) * len(FLIGHTS) and logged is not None and \
                set(logged["request_id"]) == {ids[-1]}:
            break
        time.sleep(1)
    assert written == len(ids) * len(FLIGHTS), written
    assert logged is not None and set(logged["request_id"]) == {ids[-1]}, \
        None if logged is None else logged[["row_key", "request_id", "served_at"]]
    assert set(logged["row_key"]) == row_keys and len(logged) == len(FLIGHTS)
    assert (logged["model_version"] == "1").all() and (logged["variant"] == "champion").all()


def test_the_model_server_restarts_on_its_url_and_serves_the_champion_again(stack):
    """`stack restart model-server` (as a person would run it): the server stops gracefully and
    comes back on the same URL (stack.env stays right) with the same token, both new workers
    ready with v1; a name that is no process of the stack is refused, naming the ones that are."""
    import httpx

    senv = stack["senv"]
    url, token = senv["MLOPS_SERVING_URL"], Path(senv["MLOPS_SERVING_TOKEN_FILE"]).read_text().strip()

    def loaded() -> set[str]:
        with httpx.Client(base_url=url, timeout=30) as http:
            if http.get("/v2/health/ready").status_code != 200:
                return set()
            return {dict(ls)["pid"] for (n, ls), v in _served(http, token).items()
                    if n == "serving_model_info" and v == 1 and dict(ls)["version"] == "1"}

    before = loaded()
    assert len(before) == 2, before
    out = _stack(stack["env"], "restart", "model-server")
    assert "restarted model-server" in out
    deadline, after = time.monotonic() + 90, set()
    while time.monotonic() < deadline and len(after) < 2:
        try:
            after = loaded() - before  # the new workers' (the old ones' files are gone)
        except httpx.TransportError:
            after = set()
        time.sleep(1)
    assert len(after) == 2, (before, after)
    assert json.loads((stack["root"] / "stack.json").read_text())["env"][
        "MLOPS_SERVING_URL"] == url
    refused = subprocess.run([sys.executable, "-m", "stack", "restart", "no-such-process"],
                             cwd=REPO, env=stack["env"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0 and "model-server" in refused.stderr, refused.stderr


def test_the_object_store_takes_nothing_unsigned(stack):
    """SeaweedFS's master, volume and filer servers listen on loopback beside the S3 gateway:
    without the JWT keys or the client certificate that only the server holds, nothing in."""
    s3 = next(s for s in stack["services"] if s["name"] == "seaweedfs")["extra"]
    filer, master = s3["filer"], s3["master"]
    for method, url in [("PUT", f"{filer}/buckets/mlops/data/evil.txt"),
                        ("GET", f"{filer}/buckets/mlops/")]:
        assert _http(method, url) == 401, (method, url)
    volume = s3["volume"]
    for method, url in [("POST", f"{volume}/1,0123456789"), ("GET", f"{volume}/1,0123456789")]:
        assert _http(method, url) == 401, (method, url)
    ca = str(Path(s3["tls"]) / "ca.pem")
    plain = master.replace("https://", "http://")
    assert _http("GET", f"{plain}/dir/assign") == 400  # "an HTTP request to an HTTPS server"
    assert _http("GET", f"{master}/dir/assign",
                 ssl.create_default_context(cafile=ca)) == "SSLError"
    for port in s3["grpc"].split(","):
        assert _tls_handshake(int(port), ca) == "TLSV13_ALERT_CERTIFICATE_REQUIRED", port
    # The S3 gateway itself still serves the key pair (the stack test's runs depend on it).
    from stack.services import s3_client

    assert "mlops" in {b["Name"] for b in s3_client(stack["senv"]).list_buckets()["Buckets"]}


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


def test_the_stack_keeps_its_secrets_to_itself(stack):
    """Last: no secret was ever on the command line of a process `python -m stack` started
    (up, the restarts), and nothing in the stack folder is readable or writable by others."""
    secrets = _secrets(stack["root"])
    argvs = [json.loads(line) for line in stack["argv_log"].read_text().splitlines()]
    assert len(argvs) > 20 and any("users" in argv for argv in argvs), len(argvs)
    leaks = [argv for argv in argvs for secret in secrets if secret in " ".join(argv)]

    exposed = []
    for dirpath, dirnames, filenames in os.walk(stack["root"]):
        for name in (*dirnames, *filenames):
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o066:
                exposed.append((os.path.join(dirpath, name), oct(mode)))
        # what others cannot even enter is not exposed (SeaweedFS writes its .vif files 0644)
        dirnames[:] = [d for d in dirnames
                       if os.lstat(os.path.join(dirpath, d)).st_mode & 0o011]
    assert stat.S_IMODE(stack["root"].stat().st_mode) == 0o711
    assert not leaks and not exposed, (leaks, exposed[:20])
