"""Routing between aliases on the real server: a 50/50 split sticky on a header, the variant in
the response (`parameters.variant`, `x-model-variant`) and in the prediction log, and the live
routing document followed within seconds (a canary set to 100%, a reset to the champion).

The server (`python -m pipelines.serving`, one worker) follows `champion` (v1) and
`challenger` (v2) every 0.3 s; the routing document is written and reset by the project's own
functions (`pipelines.model.routing`), and removed afterwards with the challenger alias.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from conftest import SERVED_DAY, Server, bearer, known_events, v2_request

from pipelines.core import locations
from pipelines.model import registry, routing
from pipelines.scoring.table import log_records
from pipelines.serving.auth import ensure_token

pytestmark = pytest.mark.integration
MODEL = "delay_model"
HEADER = "x-routing-key"


@pytest.fixture(scope="module")
def server(served_state):
    params = yaml.safe_load(Path(served_state["env"]["MLOPS_PARAMS"]).read_text())
    params["serving"] = {"aliases": ["champion", "challenger"], "poll_seconds": 0.3,
                         "log": {"batch_rows": 10},
                         "routing": {"candidates": {"champion": 50, "challenger": 50},
                                     "sticky": {"header": HEADER}}}
    path = served_state["root"] / "params-routing.yaml"
    path.write_text(yaml.safe_dump(params))
    settings = served_state["settings"]
    client = registry.client(settings)
    client.set_registered_model_alias(MODEL, registry.CHALLENGER, served_state["v2"])
    token = Path(ensure_token(settings.token_path)).read_text().strip()
    srv = Server(served_state, "routing", params=path)
    try:
        srv.wait()
        from pipelines.core.config import load_config

        yield srv, token, load_config(path)
    finally:
        srv.stop()
        Path(locations.routing(settings)).unlink(missing_ok=True)
        if registry.by_alias(client, MODEL, registry.CHALLENGER) is not None:
            client.delete_registered_model_alias(MODEL, registry.CHALLENGER)


def _infer(srv, token, rows, key: str | None, rid: str, version: str | None = None):
    path = f"/v2/models/{MODEL}" + (f"/versions/{version}" if version else "") + "/infer"
    headers = {**bearer(token), **({HEADER: key} if key is not None else {})}
    r = srv.http.post(path, headers=headers, content=json.dumps(
        {**v2_request(rows), "id": rid}).encode())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["parameters"]["variant"] == r.headers["x-model-variant"]
    return body


def test_the_split_is_sticky_and_the_variant_is_answered_and_logged(server, served_state):
    """40 callers: each is answered by the variant the pure split function gives its key (both
    variants answer), with that variant's version, again on a second request; the versioned
    path ignores the routing; every request's log rows carry the variant that answered."""
    srv, token, cfg = server
    rows = known_events(served_state).head(2)
    versions = {"champion": "1", "challenger": served_state["v2"]}
    split = routing.configured(cfg)
    answered: dict[str, str] = {}
    for i in range(40):
        key = f"caller-{i}"
        body = _infer(srv, token, rows, key, f"routing-{i}")
        answered[f"routing-{i}"] = body["parameters"]["variant"]
        assert body["parameters"]["variant"] == routing.choose(split, key)
        assert body["model_version"] == versions[body["parameters"]["variant"]]
        again = _infer(srv, token, rows, key, f"routing-{i}-again")
        assert again["parameters"] == body["parameters"]
        assert again["outputs"] == body["outputs"]
        answered[f"routing-{i}-again"] = body["parameters"]["variant"]
    assert set(answered.values()) == {"champion", "challenger"}
    pinned = _infer(srv, token, rows, "caller-0", "pinned", version="champion")
    assert pinned["parameters"]["variant"] == "champion"

    deadline = time.monotonic() + 30
    while True:
        log = log_records(served_state["settings"], SERVED_DAY).to_pandas()
        logged = log[log["request_id"].isin(answered)]
        if set(logged["request_id"]) == set(answered) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert set(logged["request_id"]) == set(answered)
    for rid, variant in logged.groupby("request_id")["variant"].agg(set).items():
        assert variant == {answered[rid]}
    assert set(logged.loc[logged["variant"] == "challenger", "model_version"]) == {
        served_state["v2"]}


def _until(srv, token, rows, want: set[str], timeout: float = 10.0) -> float:
    """Seconds until 20 callers in a row get only the variants `want`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        got = {_infer(srv, token, rows, f"k{i}", f"live-{i}")["parameters"]["variant"]
               for i in range(20)}
        if got == want:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"the server still answers {got}, not {want}, after {timeout}s")


def test_the_server_follows_the_live_routing_within_seconds(server, served_state):
    """A rollout sets the challenger to 100%: every caller gets it; a rollback resets routing
    to the champion only: every caller gets the champion, within seconds."""
    srv, token, cfg = server
    settings, rows = served_state["settings"], known_events(served_state).head(1)
    routing.set_routing(settings, cfg, {"champion": 0, "challenger": 100}, None, "test",
                        "canary at 100%")
    assert _until(srv, token, rows, {"challenger"}) < 5
    routing.reset_routing(settings, cfg, "test", "rollback")
    assert _until(srv, token, rows, {"champion"}) < 5
    without_key = {_infer(srv, token, rows, None, f"nokey-{i}")["parameters"]["variant"]
                   for i in range(10)}
    assert without_key == {"champion"}
