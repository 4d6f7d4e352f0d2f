"""Following registry aliases: readiness per alias, an optional alias (the challenger) absent,
set and removed, the versions route, an alias move while a request is in flight, a version
whose ONNX fails its sha256, the reject policy.

The server is the real app with one fault injected around it (`slow_app`: a request may ask
`predict` to sleep first), following `champion` and `challenger` (the default aliases) every
0.3 s, with `serving.unknown_entities: reject` and a 50 kB body limit. Aliases are moved by the
project's own registry functions.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import Server, bearer, known_events, metric, v2_request

from pipelines.model import registry
from pipelines.serving.auth import ensure_token

pytestmark = pytest.mark.integration
MODEL = "delay_model"


@pytest.fixture(scope="module")
def server(served_state):
    params = yaml.safe_load(Path(served_state["env"]["MLOPS_PARAMS"]).read_text())
    params["serving"] = {"poll_seconds": 0.3, "unknown_entities": "reject", "max_body_mb": 0.05,
                         "log": {"batch_rows": 10}}
    path = served_state["root"] / "params-aliases.yaml"
    path.write_text(yaml.safe_dump(params))
    token = Path(ensure_token(served_state["settings"].token_path)).read_text().strip()
    srv = Server(served_state, "aliases", params=path, factory="slow_app:create_app")
    try:
        srv.wait(f"/v2/models/{MODEL}/versions/champion/ready")
        yield srv, token
    finally:
        srv.stop()
        _restore(served_state["settings"])


def _restore(settings) -> None:
    """v1 champion and no challenger again: the other serving tests expect the fixture's state."""
    c = registry.client(settings)
    if registry.by_alias(c, MODEL, registry.CHALLENGER) is not None:
        c.delete_registered_model_alias(MODEL, registry.CHALLENGER)
    if registry.by_alias(c, MODEL, registry.CHAMPION).version != "1":
        registry.promote(settings, MODEL, "1", "serving-test", "restore v1", None)


def _infer(srv, token, rows, version: str | None = None, delay: float = 0.0):
    path = f"/v2/models/{MODEL}" + (f"/versions/{version}" if version else "") + "/infer"
    return srv.http.post(path, headers={**bearer(token), "x-test-delay": str(delay)},
                         content=json.dumps(v2_request(rows)).encode())


def _wait_for(srv, check, what: str, timeout: float = 30,
              path: str = f"/v2/models/{MODEL}/versions/champion/ready") -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = srv.http.get(path).json()
        if check(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{what}: still {body} after {timeout}s")


def test_an_optional_alias_is_served_while_the_registry_holds_it(server, served_state):
    """No `challenger` yet (the normal state): the server is ready on its champion, the
    challenger is `absent`, not stale, its paths are a 404 naming the alias, nothing is logged
    as an error or counted as a load failure, however many polls pass. Once the registry gives
    v2 the alias, it is served under its alias and its version number; once the alias is
    removed, it is no longer served."""
    srv, token = server
    rows = known_events(served_state).head(3)
    v2 = served_state["v2"]
    assert srv.http.get("/v2/health/ready").status_code == 200
    everything = srv.http.get(f"/v2/models/{MODEL}/ready")
    assert everything.status_code == 200 and everything.json() == {
        "name": MODEL, "ready": True, "versions": {"champion": "1", "challenger": None},
        "stale": [], "absent": ["challenger"]}
    alone = srv.http.get(f"/v2/models/{MODEL}/versions/challenger/ready")
    assert alone.status_code == 503 and alone.json()["absent"] == ["challenger"]
    for r in (_infer(srv, token, rows, "challenger"),
              srv.http.get(f"/v2/models/{MODEL}/versions/challenger", headers=bearer(token))):
        assert r.status_code == 404 and "holds no 'challenger' alias now" in r.json()["error"]
    meta = srv.http.get(f"/v2/models/{MODEL}", headers=bearer(token)).json()["parameters"]
    assert meta["absent"] == ["challenger"] and meta["load_failures"] == {}
    assert meta["served"]["challenger"] is None
    assert _infer(srv, token, rows).json()["model_version"] == "1"
    time.sleep(1.0)  # three more polls: an absent optional alias is still no failure
    samples = srv.metrics(token)
    assert metric(samples, "serving_model_load_failures_total", alias="challenger") == 0
    assert metric(samples, "serving_model_stale", alias="challenger") == 0
    assert "could not be followed" not in srv.log_path.read_text()

    c = registry.client(served_state["settings"])
    c.set_registered_model_alias(MODEL, "challenger", v2)
    srv.wait(f"/v2/models/{MODEL}/versions/challenger/ready", timeout=30)
    for version in ("challenger", v2):
        body = _infer(srv, token, rows, version).json()
        assert body["model_version"] == v2
        assert body["parameters"] == {"variant": "challenger"}
    meta = srv.http.get(f"/v2/models/{MODEL}", headers=bearer(token)).json()
    assert meta["versions"] == ["1", v2] and meta["parameters"]["absent"] == []
    assert meta["parameters"]["served"]["challenger"]["onnx_sha256"]
    assert meta["parameters"]["load_failures"] == {}
    assert metric(srv.metrics(token), "serving_model_info", alias="challenger", version=v2) == 1

    c.delete_registered_model_alias(MODEL, "challenger")
    _wait_for(srv, lambda b: b["absent"] == ["challenger"], "challenger removed",
              path=f"/v2/models/{MODEL}/ready")
    r = _infer(srv, token, rows, "challenger")
    assert r.status_code == 404 and "holds no 'challenger' alias now" in r.json()["error"]
    r = _infer(srv, token, rows, v2)
    assert r.status_code == 404 and f"version '{v2}' is not served" in r.json()["error"]
    samples = srv.metrics(token)
    assert metric(samples, "serving_model_info", alias="challenger", version=v2) == 0
    assert metric(samples, "serving_model_load_failures_total", alias="challenger") == 0
    assert "could not be followed" not in srv.log_path.read_text()


def test_a_body_over_max_body_mb_is_a_413_with_or_without_a_length(server):
    srv, token = server
    body = b" " * 60_000  # serving.max_body_mb: 0.05 (52,428 bytes) here
    path = f"/v2/models/{MODEL}/infer"
    for content in (body, iter([body[:30_000], body[30_000:]])):  # Content-Length, chunked
        r = srv.http.post(path, headers=bearer(token), content=content)
        assert r.status_code == 413 and "(serving.max_body_mb)" in r.json()["error"]


def test_the_reject_policy_names_the_row_view_and_key(server, served_state):
    srv, token = server
    rows = known_events(served_state).head(2).assign(tailnum=["N0NE", "N0PE"])
    r = _infer(srv, token, rows)
    assert r.status_code == 422
    error = r.json()["error"]
    assert "serving.unknown_entities=reject" in error
    assert "plane_fv has no online value for 2 rows: row 0 (tailnum='N0NE')" in error


def test_a_moved_alias_is_swapped_in_and_requests_in_flight_finish_on_the_old_version(
        server, served_state):
    """A request that took v1 is still predicting (6 s) when v2 is promoted: the new version
    is loaded off the request path and swapped in while it runs; the next request gets v2; the
    one in flight answers with v1's session and v1's exact probabilities."""
    srv, token = server
    settings, v2 = served_state["settings"], served_state["v2"]
    rows = known_events(served_state)
    before = _infer(srv, token, rows).json()
    assert before["model_version"] == "1"
    slow: dict = {}
    thread = threading.Thread(target=lambda: slow.update(
        _infer(srv, token, rows, delay=6.0).json()))
    thread.start()
    time.sleep(1.0)  # the request has taken v1 and sleeps in predict
    registry.promote(settings, MODEL, v2, "serving-test", "alias move under load", None)
    _wait_for(srv, lambda b: b["versions"] == {"champion": v2}, "champion -> v2")
    assert thread.is_alive(), "the slow request ended before the swap: nothing was tested"
    # sent while v1's request is in flight: it takes v2 at once (and, one request at a time
    # per worker, is answered after it)
    after = _infer(srv, token, rows).json()
    thread.join()
    assert after["model_version"] == v2
    assert after["outputs"][0]["data"] != before["outputs"][0]["data"]
    assert slow["model_version"] == "1" and slow["outputs"] == before["outputs"]


def _onnx_file(settings, version: str) -> Path:
    run_id = registry.client(settings).get_model_version(MODEL, version).run_id
    (path,) = Path(settings.state_uri).rglob(f"{run_id}/artifacts/onnx/model.onnx")
    return path


def test_a_version_failing_its_sha256_is_refused_and_the_old_one_kept(server, served_state):
    """v3's ONNX file is changed after registration; promoted, it is refused (once, not on
    every poll), v2 keeps answering, and the failure shows in the ready and metadata responses,
    in /metrics and in the log. Rolling back clears it."""
    from support import register_onnx, with_params

    from pipelines.core.specs import request_spec_json
    from pipelines.model.training import fit

    srv, token = server
    cfg, settings, v2 = served_state["cfg"], served_state["settings"], served_state["v2"]
    other = with_params(cfg, training__estimator__params={"n_estimators": 5, "max_depth": 2})
    pipe, numeric, categorical = fit(other, served_state["train"])
    v3 = register_onnx(settings, cfg, pipe, numeric, categorical,
                       {"request_features": request_spec_json(cfg.features.request_time)})
    path = _onnx_file(settings, v3)
    path.write_bytes(path.read_bytes().replace(b"TreeEnsemble", b"TreeEnsemblf", 1))
    registry.promote(settings, MODEL, v3, "serving-test", "a corrupted artifact", None)

    ready = _wait_for(srv, lambda b: b["stale"] == ["champion"], "refusal of v3")
    assert ready == {"name": MODEL, "ready": True, "versions": {"champion": v2},
                     "stale": ["champion"], "absent": []}
    failure = srv.http.get(f"/v2/models/{MODEL}", headers=bearer(token)).json()[
        "parameters"]["load_failures"]["champion"]
    assert failure["version"] == v3 and "does not match the registry" in failure["error"]
    assert _infer(srv, token, known_events(served_state).head(2)).json()["model_version"] == v2
    time.sleep(1.0)  # three more polls: the same broken version is not downloaded again
    samples = srv.metrics(token)
    assert metric(samples, "serving_model_load_failures_total", alias="champion",
                  version=v3) == 1
    assert metric(samples, "serving_model_stale", alias="champion") == 1
    assert f"champion -> v{v3} could not be followed, still serving v{v2}" in \
        srv.log_path.read_text()

    registry.rollback(settings, MODEL, "previous", "serving-test", "back from the broken one")
    _wait_for(srv, lambda b: b["stale"] == [], "stale cleared")
    assert metric(srv.metrics(token), "serving_model_stale", alias="champion") == 0
