"""Shadow scoring on the real server: the champion answers every request, the challenger
(mirror, 100%) scores each after the response; its answer is logged beside the champion's in
the same record and its disagreement is in /metrics. A shadow that raises or hangs changes no
response and delays none; a full queue drops (and counts) shadows; every request's rows are
logged exactly once whatever happened to its shadow.

The server is the real app with one fault injected (`shadow_app`: the challenger's predict
raises or sleeps when a file says so), following champion (v1) and challenger (v2), with a
shadow queue of 2 and a 1.5 s shadow timeout.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SERVED_DAY, Server, bearer, known_events, metric, v2_request

from pipelines.model import registry
from pipelines.scoring.table import log_records
from pipelines.serving.auth import ensure_token

pytestmark = pytest.mark.integration
MODEL = "delay_model"


@pytest.fixture(scope="module")
def server(served_state):
    params = yaml.safe_load(Path(served_state["env"]["MLOPS_PARAMS"]).read_text())
    params["serving"] = {"aliases": ["champion", "challenger"], "poll_seconds": 0.3,
                         "log": {"batch_rows": 10},
                         "shadow": {"queue": 2, "timeout_seconds": 1.5},
                         "routing": {"candidates": {"champion": 100},
                                     "mirror": {"alias": "challenger", "percent": 100}}}
    path = served_state["root"] / "params-shadow.yaml"
    path.write_text(yaml.safe_dump(params))
    fault = served_state["root"] / "shadow-fault"
    fault.write_text("none")
    settings = served_state["settings"]
    client = registry.client(settings)
    client.set_registered_model_alias(MODEL, registry.CHALLENGER, served_state["v2"])
    token = Path(ensure_token(settings.token_path)).read_text().strip()
    os.environ["SHADOW_FAULT_FILE"] = str(fault)
    try:
        srv = Server(served_state, "shadow", params=path, factory="shadow_app:create_app")
    finally:
        os.environ.pop("SHADOW_FAULT_FILE")
    try:
        srv.wait()
        yield srv, token, fault
    finally:
        srv.stop()
        if registry.by_alias(client, MODEL, registry.CHALLENGER) is not None:
            client.delete_registered_model_alias(MODEL, registry.CHALLENGER)


def _post(srv, token, rows, rid: str, version: str | None = None) -> tuple[dict, float]:
    path = f"/v2/models/{MODEL}" + (f"/versions/{version}" if version else "") + "/infer"
    started = time.monotonic()
    r = srv.http.post(path, headers=bearer(token),
                      content=json.dumps({**v2_request(rows), "id": rid}).encode())
    assert r.status_code == 200, r.text
    return r.json(), time.monotonic() - started


def _records(state, ids: set[str], timeout: float = 30):
    """The log records of requests `ids`, once every one of them is written."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            log = log_records(state["settings"], SERVED_DAY).to_pandas()
            found = log[log["request_id"].isin(ids)]
            if set(found["request_id"]) == ids:
                return found
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "log records not written in time"
        time.sleep(0.2)


def _probabilities(body: dict) -> list[float]:
    return next(o for o in body["outputs"] if o["name"] == "probability")["data"]


def test_the_shadow_is_logged_beside_the_primary_and_its_disagreement_measured(
        server, served_state):
    srv, token, fault = server
    rows = known_events(served_state).head(4)
    champion, _ = _post(srv, token, rows, "pin-champion", version="champion")
    challenger, _ = _post(srv, token, rows, "pin-challenger", version="challenger")
    before = srv.metrics(token)
    ids = {f"shadow-ok-{i}" for i in range(5)}
    for rid in sorted(ids):
        body, _ = _post(srv, token, rows, rid)
        assert body["parameters"] == {"variant": "champion"} and body["model_version"] == "1"
        assert body["outputs"] == champion["outputs"]
    log = _records(served_state, ids)
    assert len(log) == len(ids) * len(rows)  # one record per request row, no more
    assert log.groupby("request_id")["row_key"].nunique().eq(len(rows)).all()
    assert set(log["shadow_status"]) == {"ok"} and set(log["variant"]) == {"champion"}
    assert set(log["shadow_variant"]) == {"challenger"}
    assert set(log["shadow_version"]) == {served_state["v2"]}
    for _, one in log.groupby("request_id"):
        by_key = one.set_index("row_key")
        keys = [k for k in champion["outputs"][1]["data"]]
        assert by_key.loc[keys, "probability"].tolist() == _probabilities(champion)
        assert by_key.loc[keys, "shadow_probability"].tolist() == _probabilities(challenger)
    after = srv.metrics(token)
    rows_scored = (metric(after, "serving_shadow_rows_total", variant="challenger")
                   - metric(before, "serving_shadow_rows_total", variant="challenger"))
    assert rows_scored == len(ids) * len(rows)
    assert (metric(after, "serving_shadow_abs_diff_count", variant="challenger")
            - metric(before, "serving_shadow_abs_diff_count", variant="challenger")) == rows_scored
    diff = np.abs(np.array(_probabilities(champion)) - np.array(_probabilities(challenger)))
    assert (metric(after, "serving_shadow_abs_diff_sum", variant="challenger")
            - metric(before, "serving_shadow_abs_diff_sum", variant="challenger")
            ) == pytest.approx(len(ids) * diff.sum())


def test_a_failing_or_hanging_shadow_changes_and_delays_no_response(server, served_state):
    """A raising shadow: every response is the champion's, every record `error`. A shadow
    hanging 4 s (timeout 1.5 s, queue 2): ten requests still answer at once with the champion's
    outputs; the shadows are `timeout`, `busy` (one is still running) or `dropped` (the queue
    was full), counted in /metrics, and each request is logged exactly once."""
    srv, token, fault = server
    rows = known_events(served_state).head(3)
    champion, _ = _post(srv, token, rows, "pin-champion-2", version="champion")
    fault.write_text("raise")
    failing = {f"shadow-raise-{i}" for i in range(3)}
    for rid in sorted(failing):
        body, _ = _post(srv, token, rows, rid)
        assert body["outputs"] == champion["outputs"]
    log = _records(served_state, failing)
    assert len(log) == len(failing) * len(rows) and set(log["shadow_status"]) == {"error"}
    assert log["shadow_probability"].isna().all()

    before = srv.metrics(token)
    fault.write_text("hang 4")
    hanging = [f"shadow-hang-{i}" for i in range(10)]
    for rid in hanging:
        body, took = _post(srv, token, rows, rid)
        assert body["outputs"] == champion["outputs"] and took < 1.0, took
    log = _records(served_state, set(hanging))
    assert len(log) == len(hanging) * len(rows)
    status = log.groupby("request_id")["shadow_status"].agg(set).to_dict()
    assert all(len(s) == 1 for s in status.values())
    status = {rid: s.pop() for rid, s in status.items()}
    assert status[hanging[0]] == "timeout"
    assert set(status.values()) <= {"timeout", "busy", "dropped"}
    dropped = sum(s == "dropped" for s in status.values())
    assert dropped >= 1
    after = srv.metrics(token)
    assert (metric(after, "serving_shadow_requests_total", status="dropped")
            - metric(before, "serving_shadow_requests_total", status="dropped")) == dropped

    fault.write_text("none")
    time.sleep(4.0)  # the hung shadow ends
    body, _ = _post(srv, token, rows, "shadow-again")
    assert body["outputs"] == champion["outputs"]
    assert set(_records(served_state, {"shadow-again"})["shadow_status"]) == {"ok"}


def test_a_model_that_raises_is_a_500_naming_the_cause_and_the_server_keeps_serving(
        server, served_state):
    """The challenger's predict raising (the same fault, asked for by its versioned path): a
    500 whose `{"error": ...}` names the exception, counted as a failure of that variant, the
    traceback in the server's log; the champion answers the next request."""
    srv, token, fault = server
    rows = known_events(served_state).head(2)
    path = f"/v2/models/{MODEL}/versions/challenger/infer"
    before = srv.metrics(token)
    fault.write_text("raise")
    try:
        r = srv.http.post(path, headers=bearer(token), content=json.dumps(
            {**v2_request(rows), "id": "raises-500"}).encode())
    finally:
        fault.write_text("none")
    assert r.status_code == 500, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "internal error: RuntimeError: injected shadow failure"}
    after = srv.metrics(token)
    assert (metric(after, "model_infer_request_failure_total", status="500",
                   variant="challenger")
            - metric(before, "model_infer_request_failure_total", status="500",
                     variant="challenger")) == 1
    logged = srv.log_path.read_text()
    assert f"serving: POST {path} failed" in logged and "injected shadow failure" in logged
    body, _ = _post(srv, token, rows, "after-500", version="champion")
    assert body["model_version"] == "1"
