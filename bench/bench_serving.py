"""Online serving (`python -m pipelines.serving`) against the floor and the peer, same
champion, same flights, same load, in the same run.

State: two weeks of January 2013 ingested, Feast sources and `feast apply`, a model trained by
the production path (`build_training_set` -> `train_and_register`: the ONNX and, beside it, the
pickled scikit-learn pipeline) and promoted champion, the online store materialised as of
2013-01-16 00:00, 2013-01-16 scored by batch scoring (the features batch scoring joined are
what the requests without the online store carry).

The sides:
- project, online store: V2 JSON of raw flight columns; `entity_rows` (row key, prediction
  time, derived columns), the Feast online read (SQLite) + the request-time calendar, the
  missing-value policy, onnxruntime, V2 encode, prediction-log hand-off; bearer token checked.
- project, features in the request: the same plus every view's features as inputs, so the
  online store is not read (the rest of the path is the same).
- floor: in this process, per request `json.loads` of the features-in-request body, the
  float32 feed built from it and `sess.run` of the same ONNX (no HTTP, no validation); hot
  (each body 5 times in a row) and paced (one every 20 ms, as a server worker meets them at
  100 requests/s): on these machines code that ran 20 ms ago runs 2-2.5x slower than code
  run again at once, so only the paced numbers compare with a server's.
- data plane in process: the server's `DataPlane.infer_many` in this process on the
  features-in-request bodies, hot and paced, with its CPU per call (no HTTP); and each
  server's CPU per request at the fixed rate (all its processes and threads).
- peer: MLflow's scoring server (`mlflow models serve`) on the scikit-learn pipeline with the
  features in the request (`dataframe_split`), schema enforcement, `predict`. It loads a
  pickle, so it runs with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true in its own process only;
  the project never does.
- project, online store, 100% shadow: the challenger alias (the same version: the same work)
  mirrors every request after the response.
- project, online store, requests that waited while a worker was busy scored one by one
  (`serving.max_batch_requests: 1`) against together (the default), 1 row.

Servers run 2 uvicorn workers on 127.0.0.1 (ours: a listening socket each) and share the 2
cores with the load generators.
Latency at a fixed rate: an open-loop asyncio client on CALLERS keep-alive connections sends
at RATE requests/s (1 row) or RATE / 10 (100 rows) for FIXED_S seconds, after WARM_S seconds
not counted, and measures each request from its scheduled send time (a late send counts: no
coordinated omission); `connections_per_worker` says how the server's workers shared the
connections (an uneven split loads one worker more: read the p99 with it). Throughput: wrk
(Debian's) with 8 connections for WRK_S seconds. Before the load, online and batch must
agree: the flights whose prediction time is the last hour the store holds, scored by both paths.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DAY, WRK_S, FIXED_S, WARM_S, RATE = date(2013, 1, 16), 10, 20, 3, 100
CALLERS = 32  # keep-alive connections of the fixed-rate client: a worker serves the ones it
# accepted, so a few connections split unevenly over the workers (8 split 6/2 here)
MODEL = "delay_model"


def _state(root: Path) -> dict:
    """Build the state (see the module docstring) under `root`; returns cfg, settings, env."""
    env = {"MLOPS_STATE_URI": str(root / "state"), "MLOPS_PARAMS": str(root / "params.yaml"),
           "FEAST_REGISTRY_PATH": str(root / "state/feast/registry.db"),
           "FEAST_ONLINE_PATH": str(root / "state/feast/online.db")}
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    os.environ.update(env)
    from pipelines.core.config import load_config
    from pipelines.core.settings import get_settings
    from pipelines.data.ingest import ingest
    from pipelines.features.online import materialize
    from pipelines.features.sources import build_feature_sources
    from pipelines.features.store import apply_definitions
    from pipelines.model import registry
    from pipelines.model.training import train_and_register
    from pipelines.model.training_set import build_training_set
    from pipelines.scoring.run import score_interval

    cfg, settings = load_config(), get_settings()
    first = date(2013, 1, 1)
    ingest(cfg, settings.landing_uri, first, DAY + timedelta(days=1))
    for d in range((DAY - first).days + 1):
        build_feature_sources(cfg, settings, first + timedelta(days=d))
    apply_definitions(settings)
    ts = build_training_set(cfg, settings, date(2013, 1, 2), DAY - timedelta(days=1),
                            str(root / "train.parquet"))
    trained = train_and_register(cfg, settings, ts, {"run_id": "bench-serving"})
    registry.promote(settings, MODEL, trained["version"], "bench", "bench serving", None)
    as_of = materialize(cfg, settings, DAY - timedelta(days=1))["as_of"]
    score_interval(cfg, settings, DAY, None, "bench-serving")
    raw = pd.read_csv(Path(settings.landing_uri) / "flights" / f"date={DAY}" / "flights.csv")
    return {"cfg": cfg, "settings": settings, "env": env, "run_id": trained["run_id"],
            "as_of": as_of, "raw": raw, "version": trained["version"]}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout}s\n{log.read_text()[-3000:]}")


def _settled(procs: list[subprocess.Popen], quiet: float = 0.05, timeout: float = 180) -> None:
    """Until the servers' processes (workers included) use under `quiet` of a core for 2 s:
    a server answers once one worker is up while the others still import and load."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            tree = [q for p in procs for q in [psutil.Process(p.pid),
                                               *psutil.Process(p.pid).children(recursive=True)]]
            before = sum(sum(q.cpu_times()[:2]) for q in tree)
            time.sleep(2)
            if sum(sum(q.cpu_times()[:2]) for q in tree) - before < 2 * quiet:
                return
        except psutil.NoSuchProcess:  # a process came or went: look again
            continue
    raise TimeoutError(f"the servers still busy after {timeout:.0f}s")


def _post(url: str, body: bytes, headers: dict[str, str]) -> dict:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _v2_body(rows: pd.DataFrame, declared: dict[str, str]) -> bytes:
    inputs = [{"name": c, "datatype": d, "shape": [len(rows)],
               "data": [None if pd.isna(v) else (float(v) if d == "FP64" else str(v))
                        for v in rows[c]]} for c, d in declared.items()]
    return json.dumps({"inputs": inputs}).encode()


def _peer_body(features: pd.DataFrame, columns: list[str]) -> bytes:
    data = [[None if pd.isna(v) else (v if isinstance(v, str) else float(v)) for v in r]
            for r in features[columns].itertuples(index=False)]
    return json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()


def _wrk(url: str, bodies: list[bytes], headers: dict[str, str], connections: int,
         folder: Path) -> dict:
    """wrk POSTing `bodies` in turn; requests/s, latency p50/p99 (ms), non-2xx count."""
    script = folder / "load.lua"
    lines = [f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in headers.items()]
    lines += ["local bodies = {", *[f"[==[{b.decode()}]==]," for b in bodies], "}",
              "local i = 0", "request = function()", "  i = i % #bodies + 1",
              '  return wrk.format("POST", nil, nil, bodies[i])', "end"]
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the token
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines))
    done = subprocess.run(["wrk", "-t", str(min(2, connections)), "-c", str(connections),
                           "-d", f"{WRK_S}s", "--latency", "-s", str(script), url],
                          capture_output=True, text=True)
    script.unlink()
    if done.returncode:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    out = done.stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return round(float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit], 2)

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": ms("50%"), "p99_ms": ms("99%"), "non_2xx": int(bad.group(1)) if bad else 0}


def _stage_sums(port: int, auth: dict[str, str]) -> dict[str, float]:
    """The project server's stage histograms (sum and count), from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=auth)
    with urllib.request.urlopen(req, timeout=30) as r:
        return {s.name: s.value for f in text_string_to_metric_families(r.read().decode())
                for s in f.samples if s.name.startswith("request_")
                and s.name.endswith(("_seconds_sum", "_seconds_count"))}


def _stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean ms per request of each stage between two readings (preprocess includes the wait
    for a worker thread)."""
    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    return {stage: round(delta(f"request_{stage}_seconds_sum")
                         / delta(f"request_{stage}_seconds_count") * 1000, 2)
            for stage in ("preprocess", "predict", "postprocess")}


def _supplied_body(rows: pd.DataFrame, declared: dict[str, str], features: pd.DataFrame,
                   optional: dict[str, str]) -> bytes:
    """`_v2_body` plus every view's features (the model metadata's optional inputs)."""
    body = json.loads(_v2_body(rows, declared))
    body["inputs"] += [{"name": c, "datatype": d, "shape": [len(rows)],
                        "data": [None if pd.isna(v) else (str(v) if d == "BYTES" else float(v))
                                 for v in features[c]]} for c, d in optional.items()]
    return json.dumps(body).encode()


async def _open_loop(port: int, path: str, bodies: list[bytes], headers: dict[str, str],
                     rate: float, seconds: float, connections: int = 8) -> dict:
    """Send `rate` requests/s for `seconds` on `connections` keep-alive connections; each
    latency runs from the request's scheduled time (a send delayed by busy connections
    counts). Returns p50/p99/max (ms), the rate achieved and the non-2xx count."""
    import asyncio

    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    wire = [(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
             f"application/json\r\nContent-Length: {len(b)}\r\n{extra}\r\n").encode() + b
            for b in bodies]
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    bad = 0

    async def one(request: bytes, due: float) -> None:
        nonlocal bad
        reader, writer = await pool.get()
        writer.write(request)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        latencies.append(loop.time() - due)
        bad += not 200 <= status < 300
        pool.put_nowait((reader, writer))

    total = int(rate * seconds)
    start = loop.time() + 0.1
    tasks = []
    for i in range(total):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.create_task(one(wire[i % len(wire)], due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    split = _connections_per_process(port)  # every connection has carried requests by now
    while not pool.empty():
        pool.get_nowait()[1].close()
    ms = np.asarray(latencies) * 1000
    return {"rate_asked": rate, "rate_done": round(total / elapsed, 1), "requests": total,
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2), "non_2xx": bad,
            "connections_per_worker": split}


def _connections_per_process(port: int) -> list[int]:
    """How the open connections to `port` are spread over the server's worker processes
    (`ss`), fewest first. A keep-alive connection stays with the worker that accepted it: our
    workers listen on a socket each (SO_REUSEPORT, `pipelines.serving.workers`), so the kernel
    spreads them by hash (10/22 to 16/16 on 2026-12-07); the peer's share uvicorn's socket,
    where the first worker to wake takes every connection waiting (1/31 to 15/17)."""
    from collections import Counter

    done = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ss failed ({done.returncode}): {done.stderr}")
    return sorted(Counter(re.findall(r"pid=(\d+)", done.stdout)).values())


def _fixed(port: int, path: str, bodies: list[bytes], headers: dict[str, str],
           rate: float, server: subprocess.Popen | None = None) -> dict:
    """`rate` requests/s for FIXED_S seconds on CALLERS connections, after WARM_S seconds of
    the same that are not counted; with `server`, also its CPU ms per request (every
    process of it, background threads included) over the counted phase."""
    import asyncio

    asyncio.run(_open_loop(port, path, bodies, headers, rate, WARM_S, CALLERS))
    before = _cpu_s([server]) if server else 0.0
    out = asyncio.run(_open_loop(port, path, bodies, headers, rate, FIXED_S, CALLERS))
    if server:
        out["server_cpu_ms_per_request"] = round(
            (_cpu_s([server]) - before) * 1000 / out["requests"], 2)
    return out


def _paced(call, inputs: list, gap: float) -> dict:
    """`call(x)` for each of `inputs` 5 times in a row (hot), then once each `gap` seconds
    apart (as a server worker meets them: at r requests/s on 2 workers, 2 / r apart):
    ms p50/p99 of wall and of this thread's CPU per call, for both."""
    out = {}
    for name, pause, rounds in (("hot", 0.0, 5), (f"paced_{gap * 1000:g}_ms", gap, 1)):
        wall, cpu = [], []
        for _ in range(rounds):
            for x in inputs[:max(20, int(5 / gap))] if pause else inputs:  # paced: <= ~5 s
                if pause:
                    time.sleep(pause)
                t, c = time.perf_counter(), time.thread_time()
                call(x)
                wall.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)
        w, c = np.asarray(wall) * 1000, np.asarray(cpu) * 1000
        out[name] = {"p50_ms": round(float(np.percentile(w, 50)), 3),
                     "p99_ms": round(float(np.percentile(w, 99)), 3),
                     "cpu_p50_ms": round(float(np.percentile(c, 50)), 3)}
    return out


def _floor(onnx: bytes, bodies: list[bytes], numeric: list[str], categorical: list[str],
           gap: float) -> dict:
    """Per request in this process: `json.loads` of a features-in-request body, the float32
    and string feeds from its inputs, `sess.run` (see `_paced`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
    feeds_names = {i.name for i in sess.get_inputs()}
    probability = sess.get_outputs()[1].name

    def one(body: bytes) -> None:
        by_name = {i["name"]: i["data"] for i in json.loads(body)["inputs"]}
        n = len(next(iter(by_name.values())))
        feeds = {}
        for c in numeric:
            feeds[c] = np.array([np.nan if v is None else v for v in by_name.get(
                c, [None] * n)], dtype=np.float32).reshape(-1, 1)
        for c in categorical:
            feeds[c] = np.array([v or "" for v in by_name[c]], dtype=object).reshape(-1, 1)
        sess.run([probability], {k: v for k, v in feeds.items() if k in feeds_names})

    return _paced(one, bodies, gap)


def _data_plane(bodies: list[bytes], gap: float) -> dict:
    """The server's data plane in this process, without HTTP: `DataPlane.infer_many` of each
    body alone, as a worker runs it (decode, features, model, encode, prediction log), see
    `_paced`. Against the floor: the work of the path; against the server: HTTP and the
    hand-over to the inference thread."""
    from pipelines.core.config import load_config
    from pipelines.core.settings import get_settings
    from pipelines.serving.dataplane import Call, DataPlane

    plane = DataPlane(get_settings(), load_config())
    plane.start()
    try:
        served = plane.served(MODEL, None)

        def one(body: bytes) -> None:
            (answer,) = plane.infer_many([Call(served, True, body, None, None,
                                               time.perf_counter())])
            if isinstance(answer, Exception):
                raise answer

        return _paced(one, bodies, gap)
    finally:
        plane.stop()


def _cpu_s(procs: list[subprocess.Popen]) -> float:
    """User + system CPU seconds of the processes and their children so far."""
    import psutil

    return sum(sum(q.cpu_times()[:2]) for p in procs for q in [
        psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)])


def _server(state: dict, folder: Path, name: str, port: int, params: Path | None = None
            ) -> tuple[subprocess.Popen, object]:
    log = open(folder / f"{name}.log", "w")
    env = {**os.environ, **state["env"], "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "MLOPS_SERVING_PORT": str(port), "MLOPS_SERVING_WORKERS": "2"}
    if params is not None:
        env["MLOPS_PARAMS"] = str(params)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.serving"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def _variant(state: dict, folder: Path, name: str, procs: list, logs: list,
             serving: dict) -> tuple[subprocess.Popen, int]:
    """Our server with `serving` settings changed in its params.yaml (merged key by key),
    started and settled (its process and log kept in `procs` and `logs`); the process and its
    port."""
    import yaml

    def merged(base: dict, over: dict) -> dict:
        return {**base, **{k: merged(base[k], v) if isinstance(v, dict)
                           and isinstance(base.get(k), dict) else v for k, v in over.items()}}

    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["serving"] = merged(params["serving"], serving)
    (folder / f"params-{name}.yaml").write_text(yaml.safe_dump(params))
    port = _port()
    proc, log = _server(state, folder, name, port, folder / f"params-{name}.yaml")
    procs.append(proc)
    logs.append(log)
    _wait(f"http://127.0.0.1:{port}/v2/health/ready", proc, folder / f"{name}.log")
    _settled([proc])
    return proc, port


def run(rows: int = 100) -> dict:
    """1-row and `rows`-row requests on every side; see the module docstring."""
    from pipelines.data.events import entity_rows
    from pipelines.model import registry
    from pipelines.scoring.table import read_partition
    from pipelines.serving.auth import ensure_token
    from pipelines.serving.inference import declared_inputs

    folder = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    state = _state(folder)
    cfg, settings, raw = state["cfg"], state["settings"], state["raw"]
    features = read_partition(settings, DAY).set_index("row_key")
    raw = raw.assign(row_key=entity_rows(cfg, raw)["row_key"].to_numpy())
    raw = raw[raw["row_key"].isin(features.index)].reset_index(drop=True)
    declared = declared_inputs(cfg)
    columns = [c for c in features.columns if c not in (
        "event_time", "event_timestamp", "probability", "model_name", "model_version")]
    token = Path(ensure_token(settings.token_path)).read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    path = f"/v2/models/{MODEL}/infer"
    ours_port, peer_port = _port(), _port()
    ours, ours_log = _server(state, folder, "ours", ours_port)
    mlflow = str(Path(sys.executable).parent / "mlflow")
    peer_log = open(folder / "peer.log", "w")
    peer = subprocess.Popen([mlflow, "models", "serve", "-m",
                             f"runs:/{state['run_id']}/sklearn_model", "--env-manager", "local",
                             "-w", "2", "-h", "127.0.0.1", "-p", str(peer_port)], cwd=folder,
                            env={**os.environ, **state["env"],
                                 "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                                 "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",  # peer only
                                 # it runs `uvicorn` from PATH: this environment's
                                 "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
                            stdout=peer_log, stderr=subprocess.STDOUT)
    procs, logs = [ours, peer], [ours_log, peer_log]
    try:
        _wait(f"http://127.0.0.1:{ours_port}/v2/health/ready", ours, folder / "ours.log")
        _wait(f"http://127.0.0.1:{peer_port}/ping", peer, folder / "peer.log")
        _settled([ours, peer])  # one worker answering is not both started
        ours_url = f"http://127.0.0.1:{ours_port}{path}"
        peer_url = f"http://127.0.0.1:{peer_port}/invocations"
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{ours_port}/v2/models/{MODEL}", headers=auth),
                timeout=30) as r:
            meta = json.loads(r.read())
        optional = {i["name"]: i["datatype"] for i in meta["parameters"]["optional_inputs"]}
        # the same answer first: flights whose prediction time is the last the store holds
        predicted = pd.to_datetime(raw["time_hour"], utc=True) - cfg.dataset.events.prediction_lead
        at = raw[predicted == predicted[predicted <= pd.Timestamp(state["as_of"])].max()]
        got = _post(ours_url, _v2_body(at, declared), auth)["outputs"]
        online = pd.Series(got[0]["data"], index=got[1]["data"])
        given = _post(ours_url, _supplied_body(at, declared, features.loc[at["row_key"]],
                                               optional), auth)["outputs"]
        # the peer's pyfunc answers `predict` (the class), which training logged as its method
        labels = np.asarray(_post(peer_url, _peer_body(features.loc[online.index], columns),
                                  {})["predictions"], dtype=float)
        result: dict = {
            "rows_checked": len(at), "model_version": state["version"],
            "ours_max_abs_diff_vs_batch": float(np.abs(
                online.to_numpy() - features.loc[online.index, "probability"]).max()),
            "ours_features_in_request_equal_store": given[0]["data"] == got[0]["data"],
            "peer_labels_agree_with_ours": int(((online.to_numpy() > 0.5) == labels).sum()),
            "fixed_rate_s": FIXED_S, "wrk_s": WRK_S, "workers_per_server": 2,
            "fixed_rate_connections": CALLERS, "wrk_connections": 8}
        described = registry.describe(MODEL, registry.client(settings).get_model_version(
            MODEL, state["version"]))
        onnx = registry.load_onnx(settings, described["onnx_uri"], described["onnx_sha256"])
        for shape, n, rate in (("1_row", 1, RATE), (f"{rows}_rows", rows, RATE / 10)):
            chunks = [raw.iloc[i:i + n] for i in range(0, min(len(raw), 200 * n), n)]
            chunks = [c for c in chunks if len(c) == n][:200]
            servers = {"project_online_store": ours, "project_features_in_request": ours,
                       "mlflow_models_serve": peer}
            sides = {
                "project_online_store": (ours_port, path, [_v2_body(c, declared)
                                                           for c in chunks], auth),
                "project_features_in_request": (ours_port, path, [_supplied_body(
                    c, declared, features.loc[c["row_key"]], optional) for c in chunks], auth),
                "mlflow_models_serve": (peer_port, "/invocations", [_peer_body(
                    features.loc[c["row_key"]], columns) for c in chunks], {})}
            out: dict = {}
            for side, (port, route, bodies, headers) in sides.items():
                fixed = _fixed(port, route, bodies, headers, rate, servers[side])
                url = f"http://127.0.0.1:{port}{route}"
                top = _wrk(url, bodies, {**headers, "Content-Type": "application/json"}, 8,
                           folder)
                out[side] = {f"at_{rate:g}_per_s": fixed, "max_throughput": {
                    **top, "rows_per_s": round(top["requests_per_s"] * n)}}
            out["floor_json_loads_sess_run"] = _floor(
                onnx, sides["project_features_in_request"][2], described["numeric"],
                described["categorical"], 2 / rate)
            out["data_plane_in_process_features_in_request"] = _data_plane(
                sides["project_features_in_request"][2], 2 / rate)
            peer_rps = out["mlflow_models_serve"]["max_throughput"]["requests_per_s"]
            for side in ("project_online_store", "project_features_in_request"):
                out[f"{side}_throughput_over_peer"] = round(
                    out[side]["max_throughput"]["requests_per_s"] / peer_rps, 2)
            result[shape] = out
        # a 100% shadow: the challenger alias (the same version) mirrors every request
        client = registry.client(settings)
        client.set_registered_model_alias(MODEL, registry.CHALLENGER, state["version"])
        shadowed, shadow_port = _variant(state, folder, "shadow", procs, logs, {
            "aliases": ["champion", "challenger"],
            "routing": {"mirror": {"alias": "challenger", "percent": 100}}})
        chunks = [raw.iloc[i:i + 1] for i in range(200)]
        bodies = [_v2_body(c, declared) for c in chunks]
        with_shadow = _fixed(shadow_port, path, bodies, auth, RATE)
        without = _fixed(ours_port, path, bodies, auth, RATE)  # again, beside it
        result["shadow_100_percent_1_row"] = {
            "without": without, "with": with_shadow,
            "p99_ratio": round(with_shadow["p99_ms"] / without["p99_ms"], 2)}
        shadowed.terminate()
        shadowed.wait(timeout=60)
        # requests that wait together scored one by one (serving.max_batch_requests: 1)
        _, one_port = _variant(state, folder, "one-by-one", procs, logs,
                               {"max_batch_requests": 1})
        sides = {}
        for name, port in (("one_by_one", one_port), ("together", ours_port)):
            top = _wrk(f"http://127.0.0.1:{port}{path}", bodies,
                       {**auth, "Content-Type": "application/json"}, 8, folder)
            sides[name] = {f"at_{RATE:g}_per_s": _fixed(port, path, bodies, auth, RATE),
                           "max_throughput": top}
        sides["throughput_ratio"] = round(sides["together"]["max_throughput"]["requests_per_s"]
                                          / sides["one_by_one"]["max_throughput"][
                                              "requests_per_s"], 2)
        result["waiting_requests_1_row_online_store"] = sides
        return result
    finally:
        for proc in procs:  # the processes this benchmark started, by their pid
            proc.terminate()
            proc.wait(timeout=60)
        for fh in logs:
            fh.close()
