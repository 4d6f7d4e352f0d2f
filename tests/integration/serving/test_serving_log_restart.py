"""The prediction log after a load run and a restart: exactly one record per answered request
row, none lost on a clean shutdown and none written twice.

The server (two workers) flushes only on shutdown here (a flush interval and a row threshold it
never reaches), so every answered request's rows are still waiting in a worker when it is
stopped: a clean stop must write them all.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import SERVED_DAY, Server, bearer, events, v2_request

from pipelines.scoring.table import log_records
from pipelines.serving.auth import ensure_token

pytestmark = pytest.mark.integration
MODEL = "delay_model"


def _run(state, params: Path, token: str, prefix: str, n: int) -> set[str]:
    """Start a 2-worker server, send `n` requests from 4 threads, stop it cleanly; the ids of
    the requests it answered (200)."""
    rows = events(state)
    srv = Server(state, f"restart-{prefix}", params=params, workers=2,
                 env_extra={"MLOPS_SERVING_LOG_FLUSH_SECONDS": "3600"})
    try:
        srv.wait()

        def send(i: int) -> str | None:
            body = {"id": f"{prefix}-{i}", **v2_request(rows)}
            r = srv.http.post(f"/v2/models/{MODEL}/infer", headers=bearer(token),
                              content=json.dumps(body).encode())
            return body["id"] if r.status_code == 200 else None

        with ThreadPoolExecutor(4) as pool:
            answered = {rid for rid in pool.map(send, range(n)) if rid}
    finally:
        srv.stop()  # SIGTERM: uvicorn's graceful shutdown, each worker flushes its log
    return answered


def test_one_record_per_answered_row_after_a_load_run_and_a_restart(served_state):
    params = yaml.safe_load(Path(served_state["env"]["MLOPS_PARAMS"]).read_text())
    params["serving"] = {**params.get("serving", {}), "log": {"batch_rows": 1_000_000}}
    path = served_state["root"] / "params-log-restart.yaml"
    path.write_text(yaml.safe_dump(params))
    token = Path(ensure_token(served_state["settings"].token_path)).read_text().strip()
    rows = len(events(served_state))

    first = _run(served_state, path, token, "load", 60)
    second = _run(served_state, path, token, "after-restart", 20)
    assert len(first) == 60 and len(second) == 20  # every request answered

    log = log_records(served_state["settings"], SERVED_DAY).to_pandas()
    ours = log[log["request_id"].str.startswith(("load-", "after-restart-"))]
    per_request = ours.groupby("request_id").size()
    assert set(per_request.index) == first | second  # none lost
    assert (per_request == rows).all()  # each request's rows once: none written twice
    assert not ours.duplicated(["request_id", "row_key"]).any()
