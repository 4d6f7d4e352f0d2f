"""The `rollout` DAG run through Airflow (`dag.test()`) on the real server under a scripted load:
a healthy challenger goes shadow -> 50% -> 100% and is promoted through the registry (the run
succeeds, the champion asset is emitted); a challenger whose predict fails (injected) breaches
the error SLO at its first step and is rolled back automatically (routing back to the
champion, `finish_rollout` failed with the step and the breach, the run red). The promotion
history shows each step, its evidence, the roll-back and the promotion.

The server is the real app with the challenger's predict made to raise by a file
(`shadow_app`), following the default aliases (champion, and the challenger once the registry
holds it) every 0.3 s; three threads send requests with random sticky keys throughout; holds
are 5 s and a variant needs 3 requests a step (the machine is shared). The DAG's tasks run in
this process (`dag.test`), reading the server's /metrics at MLOPS_SERVING_HOST/PORT.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import REPO, Server, bearer, known_events, v2_request

from pipelines.core import locations
from pipelines.core.config import load_config
from pipelines.core.contracts import CHAMPION_ASSET, REGISTRY_POOL
from pipelines.model import registry, routing
from pipelines.serving.auth import ensure_token

pytestmark = pytest.mark.integration
MODEL = "delay_model"


def _airflow_db(env: dict[str, str]) -> None:
    """This session's Airflow metadata DB (AIRFLOW_HOME: tests/conftest.py) and the registry
    pool `finish_rollout` runs in, as `make init` sets them up."""
    airflow = str(Path(sys.executable).parent / "airflow")
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    from airflow.models.pool import Pool

    Pool.create_or_update_pool(REGISTRY_POOL, 1, "alias moves", include_deferred=False)


@pytest.fixture(scope="module")
def live(served_state):
    params = yaml.safe_load(Path(served_state["env"]["MLOPS_PARAMS"]).read_text())
    params["serving"] = {"poll_seconds": 0.3, "log": {"batch_rows": 10},
                         "shadow": {"timeout_seconds": 1.0}}  # aliases: the default
    params["rollout"] = {"slo": {"min_requests": 3, "max_error_rate": 0.05,
                                 "max_p99_latency_ms": 5000, "max_mean_abs_diff": 1.0,
                                 "max_label_disagreement": 1.0}}
    path = served_state["root"] / "params-rollout.yaml"
    path.write_text(yaml.safe_dump(params))
    fault = served_state["root"] / "rollout-fault"
    fault.write_text("none")
    settings = dataclasses.replace(served_state["settings"], serving_log_flush_seconds=0.3)
    token = Path(ensure_token(settings.token_path)).read_text().strip()
    os.environ["SHADOW_FAULT_FILE"] = str(fault)
    try:
        srv = Server(served_state, "rollout", params=path, factory="shadow_app:create_app")
    finally:
        os.environ.pop("SHADOW_FAULT_FILE")
    stop = threading.Event()
    body = json.dumps(v2_request(known_events(served_state).head(2))).encode()

    def load() -> None:  # the scripted traffic: random callers (three of these at once)
        with httpx.Client(base_url=srv.url, timeout=30) as http:  # its own connection
            while not stop.is_set():
                try:
                    http.post(f"/v2/models/{MODEL}/infer", content=body,
                              headers={**bearer(token), "x-routing-key": uuid.uuid4().hex})
                except httpx.TransportError:
                    pass  # counted by nobody; the next request tries again

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    try:
        with pytest.MonkeyPatch.context() as mp:  # what the DAG's tasks read, in this process
            for key, value in {**served_state["env"], "MLOPS_PARAMS": str(path),
                               "MLOPS_SERVING_HOST": "127.0.0.1",
                               "MLOPS_SERVING_PORT": str(srv.port),
                               "MLOPS_SERVING_LOG_FLUSH_SECONDS": "0.3"}.items():
                mp.setenv(key, value)
            _airflow_db(dict(os.environ))
            from airflow.dag_processing.dagbag import DagBag

            dag = DagBag(dag_folder=str(REPO / "dags")).dags["rollout"]
            srv.wait(f"/v2/models/{MODEL}/versions/champion/ready")
            for thread in threads:
                thread.start()
            yield settings, load_config(path), srv, fault, dag
    finally:
        stop.set()
        for thread in threads:
            if thread.ident is not None:  # started
                thread.join(timeout=30)
        srv.stop()
        Path(locations.routing(settings)).unlink(missing_ok=True)
        c = registry.client(settings)
        if registry.by_alias(c, MODEL, registry.CHALLENGER) is not None:
            c.delete_registered_model_alias(MODEL, registry.CHALLENGER)
        if registry.by_alias(c, MODEL, registry.CHAMPION).version != "1":
            registry.promote(settings, MODEL, "1", "serving-test", "restore v1", None)


def _challenger(settings, srv, version: str) -> None:
    registry.client(settings).set_registered_model_alias(MODEL, registry.CHALLENGER, version)
    srv.wait(f"/v2/models/{MODEL}/versions/challenger/ready", timeout=30)


def _ready_when(srv, check, what: str, timeout: float = 30) -> dict:
    """The server's model ready body, once `check` holds for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = srv.http.get(f"/v2/models/{MODEL}/ready").json()
        if check(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{what}: still {body} after {timeout}s")


def _events(settings, actor: str) -> list[dict]:
    return sorted((e for e in registry.history(settings) if e.get("actor") == actor),
                  key=lambda e: e["at"])


def _run(dag, conf: dict):
    """One rollout run, and its tasks' states and return values."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dr = dag.test(run_conf=conf)
    with create_session() as session:
        states = {ti.task_id: str(ti.state) for ti in session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dr.run_id))}
        values = {x.task_id: XComModel.deserialize_value(x) for x in session.scalars(
            XComModel.get_many(run_id=dr.run_id, dag_ids=dag.dag_id, key="return_value"))}
    return dr, states, values


def _champion_events(version: str) -> int:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return sum(e.extra.get("version") == version for e in session.scalars(
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == CHAMPION_ASSET)))


def test_a_healthy_challenger_goes_through_every_step_and_is_promoted(live, served_state):
    settings, cfg, srv, _, dag = live
    v2 = served_state["v2"]
    _challenger(settings, srv, v2)
    before = _champion_events(v2)
    dr, states, values = _run(dag, {"version": "challenger", "mode": "canary",
                                    "steps": ["shadow", "50", "100"], "hold_seconds": 5})
    outcome = values["run_steps"]
    assert str(dr.state) == "success", (states, outcome)
    assert states == {"plan_rollout": "success", "run_steps": "success",
                      "finish_rollout": "success"}
    assert outcome["outcome"] == "promote" and outcome["version"] == v2
    assert values["finish_rollout"]["action"] == "promote"
    assert values["finish_rollout"]["to_version"] == v2
    c = registry.client(settings)
    assert str(registry.by_alias(c, MODEL, registry.CHAMPION).version) == v2
    assert routing.current(settings, cfg).shares == {"champion": 1.0}
    assert _champion_events(v2) == before + 1  # the champion asset, for the scoring DAGs
    # the promotion took the challenger alias off v2: the server serves v2 as its champion and
    # follows no challenger, which is no failure
    ready = _ready_when(srv, lambda b: b["versions"]["champion"] == v2
                        and b["absent"] == ["challenger"], "champion v2, no challenger")
    assert ready["ready"] is True and ready["stale"] == []

    history = _events(settings, dr.run_id)  # the run's id is the actor of its events
    assert [e["action"] for e in history] == ["rollout_step"] * 3 + ["promote"]
    steps = [e["rollout"] for e in history[:3]]
    assert [s["step"] for s in steps] == ["shadow", "50%", "100%"]
    assert all(s["passed"] for s in steps), [s["breached"] for s in steps]
    assert [s["served_percent"] for s in steps] == [0.0, 50.0, 100.0]
    # the two served events' outcomes are known (landing zone): one labelled row per key
    assert steps[1]["labelled_rows"] == {"champion": 2, "challenger": 2}
    judged = {c["name"] for s in steps for c in s["checks"] if c["passed"]}
    assert {"error_rate", "p99_latency_ms", "shadow_error_rate"} <= judged
    assert history[3]["to_version"] == v2 and "rollout (canary)" in history[3]["reason"]


def test_a_failing_challenger_breaches_its_slo_and_is_rolled_back(live, served_state, caplog):
    settings, cfg, srv, fault, dag = live
    v2 = served_state["v2"]
    registry.promote(settings, MODEL, "1", "rollout-test", "v1 back for the next rollout", None)
    _challenger(settings, srv, v2)
    before = _champion_events(v2)
    fault.write_text("raise")
    try:
        dr, states, values = _run(dag, {"version": v2, "mode": "canary", "steps": ["25", "100"],
                                        "hold_seconds": 5})
    finally:
        fault.write_text("none")
    outcome = values["run_steps"]
    # rolled back: the steps ran and were recorded; the last task fails, the run is red
    assert str(dr.state) == "failed", (states, outcome)
    assert states == {"plan_rollout": "success", "run_steps": "success",
                      "finish_rollout": "failed"}
    assert outcome["outcome"] == "rolled_back" and len(outcome["steps"]) == 1
    assert outcome["reason"].startswith("25%: ") and "error_rate" in outcome["reason"]
    assert "finish_rollout" not in values and _champion_events(v2) == before
    c = registry.client(settings)
    assert str(registry.by_alias(c, MODEL, registry.CHAMPION).version) == "1"
    assert routing.current(settings, cfg).shares == {"champion": 1.0}

    history = _events(settings, dr.run_id)
    assert [e["action"] for e in history] == ["rollout_step", "rollout_rolled_back"]
    step = history[0]["rollout"]
    assert step["step"] == "25%" and step["passed"] is False
    assert step["served_percent"] == 25.0
    assert "error_rate" in step["breached"][0]
    error_rate = next(c for c in step["checks"] if c["name"] == "error_rate")
    assert error_rate["passed"] is False and error_rate["variant"] == "challenger"
    assert error_rate["observed"] > error_rate["limit"] == 0.05  # the evidence
    assert history[1]["to_version"] == v2 and history[1]["reason"] == outcome["reason"]
    # what an operator is told: the failed task's alert names the version, step and breach
    alert = next(r.getMessage() for r in caplog.records
                 if "ALERT [error] task failure (rollout.finish_rollout" in r.getMessage())
    assert f"v{v2} was rolled back automatically at {outcome['reason']}" in alert
