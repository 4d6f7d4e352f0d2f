"""The online server as `make serve` runs it (`python -m pipelines.serving`, two workers), driven
by tritonclient, Triton's V2 client: online scores equal batch scores, the prediction log reads
as a partition, the bearer token, bad requests, unknown entities, metrics summed over workers.
"""

from __future__ import annotations

import json
import stat
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from conftest import REPO, SERVED_DAY, Server, bearer, events, metric, v2_request
from tritonclient.utils import InferenceServerException

from pipelines.core import locations, storage
from pipelines.scoring.table import read_log, read_partition

pytestmark = pytest.mark.integration
MODEL = "delay_model"


@pytest.fixture(scope="module")
def server(served_state):
    srv = Server(served_state, "launcher", workers=2)
    try:
        srv.wait()
        token_file = Path(served_state["settings"].token_path)
        yield srv, token_file.read_text().strip(), token_file
    finally:
        srv.stop()


def infer_inputs(client, token: str, rows: pd.DataFrame, binary: bool = True) -> list:
    """One tritonclient input per model input (text as BYTES, "" for missing; numbers FP64)."""
    meta = client.get_model_metadata(MODEL, headers=bearer(token))
    out = []
    for spec in meta["inputs"]:
        col = rows[spec["name"]]
        if spec["datatype"] == "BYTES":
            values = np.array(["" if pd.isna(v) else str(v) for v in col], dtype=object)
        else:
            values = col.to_numpy(dtype=np.float64)
        tensor = triton.InferInput(spec["name"], [len(values)], spec["datatype"])
        out.append(tensor.set_data_from_numpy(values, binary_data=binary))
    return out


def test_online_scores_are_batch_scores_and_the_log_reads_as_their_partition(server,
                                                                               served_state):
    """The flights whose prediction time is the last hour the online store holds, scored
    through the server (binary tensors, then JSON), get exactly the probabilities batch scoring published
    for them, under the same row keys; the prediction log reads back as `read_partition` reads
    those rows (every column, dtype and value)."""
    srv, token, _ = server
    rows = events(served_state)
    assert len(rows) >= 20  # the evening departures of 8 January, local time
    client = triton.InferenceServerClient(srv.url.removeprefix("http://"))
    result = client.infer(MODEL, infer_inputs(client, token, rows), headers=bearer(token),
                          request_id="parity-binary")
    as_json = client.infer(MODEL, infer_inputs(client, token, rows, binary=False),
                           headers=bearer(token),
                           outputs=[triton.InferRequestedOutput("probability", binary_data=False),
                                    triton.InferRequestedOutput("row_key", binary_data=False)])
    response = result.get_response()
    assert response["id"] == "parity-binary" and response["model_version"] == "1"
    assert response["parameters"] == {"variant": "champion"}
    keys = [k.decode() for k in result.as_numpy("row_key")]
    online = pd.Series(result.as_numpy("probability"), index=keys)
    batch = read_partition(served_state["settings"], SERVED_DAY).set_index("row_key")
    assert set(keys) <= set(batch.index) and len(set(keys)) == len(rows)
    assert (online.to_numpy() == batch.loc[keys, "probability"].to_numpy()).all()
    assert (as_json.as_numpy("probability") == online.to_numpy()).all()

    served = _logged(served_state, set(keys))
    published = read_partition(served_state["settings"], SERVED_DAY)
    expected = published[published["row_key"].isin(keys)].reset_index(drop=True)
    pd.testing.assert_frame_equal(served, expected)
    extra = read_log(served_state["settings"], SERVED_DAY, extra=True)
    assert set(extra["variant"]) == {"champion"} and (extra["latency_ms"] > 0).all()


def _logged(state, keys: set[str], timeout: float = 30) -> pd.DataFrame:
    """The log's rows of `keys`, once every one of them is written (workers flush every 0.3 s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            log = read_log(state["settings"], SERVED_DAY)
            if keys <= set(log["row_key"]):
                return log[log["row_key"].isin(keys)].reset_index(drop=True)
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "prediction log rows not written in time"
        time.sleep(0.2)


def test_everything_but_health_needs_the_bearer_token(server, served_state):
    srv, token, token_file = server
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) >= 32
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        assert srv.http.get(path).status_code == 200, path
    ready = srv.http.get(f"/v2/models/{MODEL}/ready").json()
    # the default aliases: champion, and the challenger once the registry holds one (not yet)
    assert ready == {"name": MODEL, "ready": True, "versions": {"champion": "1",
                                                                 "challenger": None},
                     "stale": [], "absent": ["challenger"]}
    for method, path in (("GET", "/v2"), ("GET", f"/v2/models/{MODEL}"), ("GET", "/metrics"),
                         ("POST", f"/v2/models/{MODEL}/infer")):
        for headers in ({}, {"Authorization": "Bearer " + "x" * 43},
                        {"Authorization": f"Basic {token}"}):
            r = srv.http.request(method, path, headers=headers, content=b"{}")
            assert r.status_code == 401 and r.json() == {"error": "missing or wrong bearer token"}
    assert srv.http.get("/v2", headers=bearer(token)).json()["extensions"] == ["binary_tensor_data"]
    client = triton.InferenceServerClient(srv.url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready(MODEL)  # no token needed
    with pytest.raises(InferenceServerException, match="missing or wrong bearer token"):
        client.get_model_metadata(MODEL)
    assert token not in srv.log_path.read_text()  # never logged


def _post(srv: Server, token: str, body: dict, path: str = f"/v2/models/{MODEL}/infer"):
    return srv.http.post(path, headers=bearer(token), content=json.dumps(body).encode())


def test_a_bad_request_gets_a_4xx_naming_the_field(server, served_state):
    srv, token, _ = server
    rows = events(served_state).head(3)
    naive = {"data": ["2013-01-09 02:00:00"] * 3}
    cases = [
        (v2_request(rows, tailnum=None), 400, "input 'tailnum' is missing"),
        (v2_request(rows, time_hour=naive), 400, "time_hour: 3 timestamps without a UTC offset"),
        (v2_request(rows, distance={"datatype": "BYTES", "data": ["1"] * 3}), 400,
         "input 'distance': datatype 'BYTES', expected FP64"),
        (v2_request(rows, carrier={"shape": [4]}), 400, "input 'carrier': shape [4] but 3 values"),
        (v2_request(rows, flight={"data": [1, 2, 3]}), 400, "input 'flight': BYTES data must be"),
        ({"inputs": "x"}, 400, "'inputs' list"),
    ]
    for body, status, message in cases:
        r = _post(srv, token, body)
        assert r.status_code == status and message in r.json()["error"], (message, r.text)
    day = events(served_state, None)
    big = pd.concat([day] * (1001 // len(day) + 1)).head(1001)
    r = _post(srv, token, v2_request(big))
    assert r.status_code == 413 and "at most 1000 (serving.max_rows)" in r.json()["error"]
    r = _post(srv, token, v2_request(rows), path="/v2/models/other_model/infer")
    assert r.status_code == 404 and "'other_model' is not served here" in r.json()["error"]
    for path in ("/v2/models/other_model", "/v2/models/other_model/ready"):
        r = srv.http.get(path, headers=bearer(token))
        assert r.status_code == 404 and "'other_model' is not served here" in r.json()["error"]
    r = _post(srv, token, v2_request(rows), path=f"/v2/models/{MODEL}/versions/9/infer")
    assert r.status_code == 404 and "version '9' is not served" in r.json()["error"]
    r = srv.http.get(f"/v2/models/{MODEL}/infer", headers=bearer(token))
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "inference takes POST" in r.json()["error"]


def _at_once(srv: Server, token: str, bodies: list[dict]) -> list:
    """Each body POSTed from its own thread, all released together."""
    start, answers = threading.Barrier(len(bodies)), [None] * len(bodies)

    def send(i: int) -> None:
        start.wait()
        answers[i] = _post(srv, token, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_requests_that_wait_together_are_scored_together_each_with_its_own_answer(
        server, served_state):
    """Requests sent at once queue while a worker is busy and go through in one pass
    (`serving_batch_requests` counts a pass of more than one); each still gets exactly the
    answer it gets alone; a bad request among them gets its own 400 and fails nobody else."""
    srv, token, _ = server
    rows = events(served_state)
    picks = [i % len(rows) for i in range(24)]
    alone = {i: _post(srv, token, v2_request(rows.iloc[[i]])).json()["outputs"]
             for i in set(picks)}
    before = srv.metrics(token)
    answers = _at_once(srv, token, [v2_request(rows.iloc[[i]]) for i in picks])
    assert [a.json()["outputs"] for a in answers] == [alone[i] for i in picks]
    after = srv.metrics(token)
    grown = {k: metric(after, f"serving_batch_requests_{k}", **({"le": "1.0"} if k == "bucket"
                                                                else {}))
             - metric(before, f"serving_batch_requests_{k}", **({"le": "1.0"} if k == "bucket"
                                                                 else {}))
             for k in ("bucket", "count", "sum")}
    assert grown["sum"] == len(picks)  # every request answered in exactly one pass
    assert grown["count"] - grown["bucket"] >= 1, grown  # and a pass of several requests

    bad = v2_request(rows.iloc[[0]], time_hour={"data": ["2013-01-09 02:00:00"]})
    answers = _at_once(srv, token, [bad] + [v2_request(rows.iloc[[i]]) for i in picks])
    assert answers[0].status_code == 400 and "without a UTC offset" in answers[0].json()[
        "error"]
    assert [a.json()["outputs"] for a in answers[1:]] == [alone[i] for i in picks]


def test_a_request_may_carry_a_views_features_instead_of_the_online_store(server,
                                                                          served_state):
    """Every feature of every view given in the request (the values batch scoring joined for
    these rows): the same probabilities as the store's path, bit for bit; other values change
    them; a view given in part is a 400 naming what is missing. Model metadata lists them."""
    srv, token, _ = server
    rows = events(served_state).head(5)
    meta = srv.http.get(f"/v2/models/{MODEL}", headers=bearer(token)).json()
    optional = {i["name"]: i["datatype"] for i in meta["parameters"]["optional_inputs"]}
    assert "weather_fv__temp" in optional and "route_stats_fv__label_rate" in optional
    assert set(optional.values()) <= {"FP64", "BYTES"}
    stored = _post(srv, token, v2_request(rows)).json()["outputs"]
    keys = stored[1]["data"]
    batch = read_partition(served_state["settings"], SERVED_DAY).set_index("row_key").loc[keys]

    def given(frame: pd.DataFrame) -> list[dict]:
        return [{"name": c, "datatype": d, "shape": [len(frame)],
                 "data": [None if pd.isna(v) else (str(v) if d == "BYTES" else float(v))
                          for v in frame[c]]} for c, d in optional.items()]

    body = v2_request(rows)
    body["inputs"] += given(batch)
    r = _post(srv, token, body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == stored[0]["data"]
    assert r.json()["outputs"][1]["data"] == keys
    other = batch.assign(route_stats_fv__label_rate=1.0, carrier_stats_fv__label_rate=1.0)
    body = v2_request(rows)
    body["inputs"] += given(other)
    changed = _post(srv, token, body).json()["outputs"][0]["data"]
    assert all(a != b for a, b in zip(changed, stored[0]["data"]))
    body = v2_request(rows)
    body["inputs"] += [i for i in given(batch) if i["name"] != "weather_fv__temp"]
    r = _post(srv, token, body)
    assert r.status_code == 400 and "weather_fv" in r.json()["error"] \
        and "weather_fv__temp" in r.json()["error"].split("but not")[1], r.text
    # the store's answer last: the prediction log keeps a row's latest record, and the
    # monitoring test below reads these rows' features from it
    assert _post(srv, token, v2_request(rows)).json()["outputs"] == stored


def test_an_unknown_entity_is_scored_as_batch_scores_it_and_counted(server, served_state):
    """serving.unknown_entities=impute (the default): a plane the online store does not know
    is scored with the plane features missing (the model's imputer, as batch scoring does),
    logged with them null and counted per view in /metrics; the real flight gets its batch
    score."""
    srv, token, _ = server
    before = srv.metrics(token)
    row = events(served_state).head(1)
    known = _post(srv, token, v2_request(row)).json()
    unknown = _post(srv, token, v2_request(row.assign(tailnum="N0NE", flight=99999))).json()
    (p_known, key_known), (p_unknown, key_unknown) = (
        [o["data"][0] for o in r["outputs"]] for r in (known, unknown))
    batch = read_partition(served_state["settings"], SERVED_DAY).set_index("row_key")
    assert p_known == batch.loc[key_known, "probability"] and 0 < p_unknown < 1
    logged = _logged(served_state, {key_known, key_unknown}).set_index("row_key")
    plane = [c for c in logged.columns if c.startswith("plane_fv__")]
    assert logged.loc[key_unknown, plane].isna().all() and logged.loc[key_known, plane].notna().any()
    after = srv.metrics(token)
    counted = [metric(m, "serving_unknown_entity_rows_total", view="plane_fv", policy="impute")
               for m in (before, after)]
    assert counted[1] - counted[0] == 1


def test_metrics_are_summed_over_both_workers(server, served_state):
    """Requests on fresh connections from several threads land on both workers (their
    prediction-log files carry their pid); /metrics, answered by either worker, counts every
    request, row and latency observation once."""
    srv, token, _ = server
    rows = events(served_state).head(2)
    body = json.dumps(v2_request(rows)).encode()
    before, sent = srv.metrics(token), 0
    log_dir = Path(locations.prediction_log(served_state["settings"], SERVED_DAY))

    def fire(n: int) -> None:
        import httpx

        for _ in range(n):
            with httpx.Client(base_url=srv.url, timeout=30) as c:  # a new connection each time
                assert c.post(f"/v2/models/{MODEL}/infer", headers=bearer(token),
                              content=body).status_code == 200

    def pids() -> set[str]:  # <stamp>-<host>-<pid>-<seq>.parquet: the worker that wrote it
        return {n.split("-")[-2] for n in set(storage.listdir(str(log_dir))) - earlier
                if n.endswith(".parquet")}

    earlier = set(storage.listdir(str(log_dir)))
    for _ in range(10):  # rounds of 4 x 5 requests until both workers have logged rows
        threads = [threading.Thread(target=fire, args=(5,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent += 20
        time.sleep(0.5)  # a flush interval
        if len(pids()) >= 2:
            break
    assert len(pids()) == 2, f"the workers that logged rows: {pids()}"
    after = srv.metrics(token)
    labels = {"model_name": MODEL, "model_version": "1", "variant": "champion"}
    for name, per_request in (("model_infer_request_success_total", 1),
                              ("model_infer_rows_total", 2),
                              ("request_predict_seconds_count", 1)):
        grown = metric(after, name, **({} if "seconds" in name else labels)) - metric(
            before, name, **({} if "seconds" in name else labels))
        assert grown == sent * per_request, name
    served_by = {dict(ls)["pid"] for (n, ls), v in after.items()
                 if n == "serving_model_info" and v == 1}
    assert len(served_by) == 2  # each worker loaded the champion itself


def test_monitoring_reads_the_prediction_log_as_it_reads_a_partition(server, served_state):
    """With `monitoring.predictions: online` the drift check reads what the server logged for
    the interval's events: the model version that answered, and a verdict equal, statistic for
    statistic, to the one made from batch scoring's partition cut to the same rows. Without a
    log for an interval the check says so (not "run batch_scoring")."""
    from support import with_params

    from pipelines.monitoring.checks import check_interval, scored
    from pipelines.monitoring.drift import check_drift
    from pipelines.monitoring.reference import model_reference, save_reference
    from pipelines.scoring.io import read_manifest
    from pipelines.scoring.parts import PROBABILITY

    srv, token, _ = server
    rows = events(served_state)
    settings = served_state["settings"]
    published = read_partition(settings, SERVED_DAY)
    answered = srv.http.post(f"/v2/models/{MODEL}/infer", headers=bearer(token),
                             content=json.dumps(v2_request(rows)).encode()).json()
    keys = next(o["data"] for o in answered["outputs"] if o["name"] == "row_key")
    _logged(served_state, set(keys))
    logged = read_log(settings, SERVED_DAY)  # every row the champion answered for the day
    # rows other tests made up (unknown entities) are in the log and in no partition
    made_up = logged[~logged["row_key"].isin(published["row_key"])]
    assert len(made_up) < 5 and set(keys) <= set(published["row_key"])
    # the reference drift compares with: this test's own (the fixture's model was registered
    # without training's reference), the model's inputs over the published day
    numeric, categorical = served_state["fit"]
    manifest = read_manifest(settings, SERVED_DAY)
    save_reference(settings, MODEL, "1", published, {
        "model": MODEL, "version": "1", "numeric": numeric, "categorical": categorical,
        "onnx_sha256": manifest["onnx_sha256"], "baseline": {}})
    knobs = {"min_rows": 10, "window_days": 1, "min_days": 1, "sample_rows": 100_000}
    online = with_params(served_state["cfg"], monitoring__predictions="online",
                         **{f"drift__{k}": v for k, v in knobs.items()})
    iv = online.grain.interval(SERVED_DAY)
    frame, made = scored(online, settings, iv)
    assert made["model_version"] == "1" and made["source"] == "prediction_log"
    assert sorted(frame["row_key"]) == sorted(logged["row_key"])

    verdict = check_interval(online, settings, SERVED_DAY, SERVED_DAY, "log-test")
    assert verdict["predictions"] == "online" and verdict["model_version"] == "1"
    assert verdict["n_current_total"] == len(logged) >= 20
    same_rows = pd.concat([published[published["row_key"].isin(logged["row_key"])], made_up],
                          ignore_index=True)
    reference, meta = model_reference(settings, manifest)
    batch = check_drift(reference, same_rows, meta["numeric"], meta["categorical"], PROBABILITY,
                        online.drift, None, report=False, days=1, prediction_days=1)
    assert verdict["status"] == batch["status"] == "ok"
    for key in ("drift", "drift_share", "drifted", "prediction_psi", "n_current"):
        assert verdict[key] == batch[key], key
    assert verdict["features"] == batch["features"]

    with pytest.raises(FileNotFoundError, match="no online predictions logged"):
        check_interval(online, settings, date(2013, 1, 3), date(2013, 1, 3), "log-test")


def test_connections_opened_at_once_are_spread_over_both_workers(server):
    """32 keep-alive connections opened together (a client pool starting): each worker listens
    on a socket of its own (SO_REUSEPORT), so the kernel spreads them over both, rather than
    the first worker to wake accepting all that wait (a shared socket gave splits of 32/0,
    31/1 and 28/4 in `bench serving`)."""
    import http.client
    import socket

    import psutil

    srv, _, _ = server

    def on_port(status: str) -> list[int]:  # per worker process: its sockets on the port
        counts = (sum(1 for s in p.net_connections("tcp") if s.laddr.port == srv.port
                      and s.status == status)
                  for p in psutil.Process(srv.proc.pid).children(recursive=True))
        return sorted(n for n in counts if n)

    deadline = time.monotonic() + 120  # ready is one worker up; the other may still load
    while on_port(psutil.CONN_LISTEN) != [1, 1]:
        assert time.monotonic() < deadline, f"listening sockets: {on_port(psutil.CONN_LISTEN)}"
        time.sleep(0.5)
    conns = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30) for _ in range(32)]
    try:
        for c in conns:
            c.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        for c in conns:  # answered: each connection is accepted by the worker that owns it
            c.request("GET", "/v2/health/live")
            answer = c.getresponse()
            answer.read()
            assert answer.status == 200
        per_worker = on_port(psutil.CONN_ESTABLISHED)
    finally:
        for c in conns:
            c.close()
    # both workers, neither with fewer than 4 (a fair split: less than 1 in 10^5 to fail)
    assert len(per_worker) == 2 and sum(per_worker) >= 32 and per_worker[0] >= 4, per_worker


def test_a_second_server_on_a_port_in_use_fails_at_start(server, served_state):
    """The workers share their port with SO_REUSEPORT, which would also let a second server of
    the same user join it and take half its connections unseen: the launcher checks first that
    nothing else holds the port, so a second one fails at start, naming the address."""
    import os
    import subprocess
    import sys

    srv, _, _ = server
    env = {**os.environ, **served_state["env"], "MLOPS_SERVING_PORT": str(srv.port),
           "MLOPS_SERVING_WORKERS": "2"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    second = subprocess.run([sys.executable, "-m", "pipelines.serving"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode != 0, second.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{srv.port}" in second.stderr
    assert "Address already in use" in second.stderr
    assert srv.http.get("/v2/health/ready").status_code == 200  # the first one still serves
