"""The rollout's steps on the real server under a scripted load (`pipelines.model.rollout_run`,
what the `rollout` DAG's tasks call): a healthy challenger goes shadow -> 50% -> 100% and is
promoted through the registry; a challenger whose predict fails (injected) breaches the error
SLO at its first step and is rolled back automatically. The promotion history shows each step.

The server is the real app with the challenger's predict made to raise by a file
(`shadow_app`), following champion and challenger every 0.3 s; three threads send requests
with random sticky keys throughout; holds are 5 s and a variant needs 3 requests a step (the
machine is shared).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import Server, bearer, known_events, v2_request

from pipelines.core import locations
from pipelines.core.config import load_config
from pipelines.model import registry, rollout_run, routing
from pipelines.serving.auth import ensure_token

pytestmark = pytest.mark.integration
MODEL = "delay_model"


@pytest.fixture(scope="module")
def live(served_state):
    params = yaml.safe_load(Path(served_state["env"]["MLOPS_PARAMS"]).read_text())
    params["serving"] = {"aliases": ["champion", "challenger"], "poll_seconds": 0.3,
                         "log": {"batch_rows": 10}, "shadow": {"timeout_seconds": 1.0}}
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
        srv.wait(f"/v2/models/{MODEL}/versions/champion/ready")
        for thread in threads:
            thread.start()
        yield settings, load_config(path), srv, fault, token
    finally:
        stop.set()
        for thread in threads:
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


def _events(settings, actor: str) -> list[dict]:
    return sorted((e for e in registry.history(settings) if e.get("actor") == actor),
                  key=lambda e: e["at"])


def test_a_healthy_challenger_goes_through_every_step_and_is_promoted(live, served_state):
    settings, cfg, srv, fault, _ = live
    v2 = served_state["v2"]
    _challenger(settings, srv, v2)
    steps = rollout_run.plan(cfg, "canary", ["shadow", 50, 100])
    outcome = rollout_run.run_steps(settings, cfg, v2, "canary", steps, 5.0,
                                    rollout_run.scraper(srv.url, settings.token_path),
                                    "rollout-ok", user="ada")
    assert outcome["outcome"] == "promote", (outcome["reason"], outcome["steps"][-1]["checks"])
    assert [s["step"] for s in outcome["steps"]] == ["shadow", "50%", "100%"]
    assert all(s["passed"] for s in outcome["steps"])
    # the two served events' outcomes are known (landing zone): one labelled row per key
    assert outcome["steps"][1]["labelled_rows"] == {"champion": 2, "challenger": 2}
    judged = {c["name"] for s in outcome["steps"] for c in s["checks"] if c["passed"]}
    assert {"error_rate", "p99_latency_ms", "shadow_error_rate"} <= judged
    event = rollout_run.finish(settings, cfg, outcome, "rollout-ok", user="ada")
    assert event["action"] == "promote" and event["to_version"] == v2
    c = registry.client(settings)
    assert str(registry.by_alias(c, MODEL, registry.CHAMPION).version) == v2
    assert routing.current(settings, cfg).shares == {"champion": 1.0}
    history = _events(settings, "rollout-ok")
    assert [e["action"] for e in history] == ["rollout_step"] * 3 + ["promote"]
    assert [e["rollout"]["step"] for e in history[:3]] == ["shadow", "50%", "100%"]


def test_a_failing_challenger_breaches_its_slo_and_is_rolled_back(live, served_state):
    settings, cfg, srv, fault, _ = live
    v2 = served_state["v2"]
    registry.promote(settings, MODEL, "1", "rollout-test", "v1 back for the next rollout", None)
    _challenger(settings, srv, v2)
    fault.write_text("raise")
    try:
        steps = rollout_run.plan(cfg, "canary", [25, 100])
        outcome = rollout_run.run_steps(settings, cfg, v2, "canary", steps, 5.0,
                                        rollout_run.scraper(srv.url, settings.token_path),
                                        "rollout-bad")
    finally:
        fault.write_text("none")
    assert outcome["outcome"] == "rolled_back" and len(outcome["steps"]) == 1
    assert "error_rate" in outcome["steps"][0]["breached"][0]
    assert rollout_run.finish(settings, cfg, outcome, "rollout-bad") is None
    c = registry.client(settings)
    assert str(registry.by_alias(c, MODEL, registry.CHAMPION).version) == "1"
    assert routing.current(settings, cfg).shares == {"champion": 1.0}
    history = _events(settings, "rollout-bad")
    assert [e["action"] for e in history] == ["rollout_step", "rollout_rolled_back"]
    assert history[0]["rollout"]["passed"] is False
