"""Online serving (`python -m pipelines.serving`) vs `mlflow models serve`, same champion, same
flights, same load, in the same run.

State: two weeks of January 2013 ingested, Feast sources and `feast apply`, a model trained by
the production path (`build_training_set` -> `train_and_register`: the ONNX and, beside it, the
pickled scikit-learn pipeline) and promoted champion, the online store materialised as of
2013-01-16 00:00, 2013-01-16 scored by batch scoring (the peer's features).

What each side does per request:
- project: V2 JSON decode of raw flight columns, `entity_rows` (row key, prediction time,
  route), Feast online features (SQLite) + the request-time calendar, the missing-value
  policy, onnxruntime, V2 encode, prediction-log hand-off; bearer token checked.
- peer: MLflow's scoring server on the scikit-learn pipeline with the features already in the
  request (`dataframe_split` of the model inputs batch scoring used for the same rows: no
  feature lookup), schema enforcement, `predict`. It loads a pickle, so it runs with
  MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true in its own process only; the project never does.

Both run 2 uvicorn workers on 127.0.0.1; wrk (Debian's; 1 thread for 1 connection, else 2)
shares the same 2 cores.
Each shape (1 row, `rows` rows per request) is run at 1 connection (latency) and 8 connections
(throughput) for DURATION seconds per side, one side after the other. Before the load, both
sides score the flights whose prediction time is the store's as-of time: the answers must agree
to the ONNX parity tolerance.
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
DAY, DURATION = date(2013, 1, 16), 10
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
                           "-d", f"{DURATION}s", "--latency", "-s", str(script), url],
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


def run(rows: int = 100) -> dict:
    """1-row and `rows`-row requests against both servers; see the module docstring."""
    from pipelines.data.events import entity_rows
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
    ours_port, peer_port = _port(), _port()
    base_env = {**os.environ, **state["env"], "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    logs = {n: open(folder / f"{n}.log", "w") for n in ("ours", "peer")}
    ours = subprocess.Popen([sys.executable, "-m", "pipelines.serving"], cwd=REPO, env={
        **base_env, "MLOPS_SERVING_PORT": str(ours_port), "MLOPS_SERVING_WORKERS": "2"},
        stdout=logs["ours"], stderr=subprocess.STDOUT)
    mlflow = str(Path(sys.executable).parent / "mlflow")
    peer = subprocess.Popen([mlflow, "models", "serve", "-m",
                             f"runs:/{state['run_id']}/sklearn_model", "--env-manager", "local",
                             "-w", "2", "-h", "127.0.0.1", "-p", str(peer_port)], cwd=folder,
                            env={**base_env, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                                 "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",  # peer only
                                 # it runs `uvicorn` from PATH: this environment's
                                 "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
                            stdout=logs["peer"], stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{ours_port}/v2/health/ready", ours, folder / "ours.log")
        _wait(f"http://127.0.0.1:{peer_port}/ping", peer, folder / "peer.log")
        ours_url = f"http://127.0.0.1:{ours_port}/v2/models/{MODEL}/infer"
        peer_url = f"http://127.0.0.1:{peer_port}/invocations"
        auth = {"Authorization": f"Bearer {token}"}
        # the same answer first: flights whose prediction time is the store's as-of time
        at = raw[pd.to_datetime(raw["time_hour"], utc=True) - cfg.dataset.events.prediction_lead
                 == pd.Timestamp(state["as_of"])]
        got = _post(ours_url, _v2_body(at, declared), auth)["outputs"]
        online = pd.Series(got[0]["data"], index=got[1]["data"])
        # the peer's pyfunc answers `predict` (the class), which training logged as its method
        labels = np.asarray(_post(peer_url, _peer_body(features.loc[online.index], columns),
                                  {})["predictions"], dtype=float)
        result = {"rows_checked": len(at), "model_version": state["version"],
                  "ours_max_abs_diff_vs_batch": float(np.abs(
                      online.to_numpy() - features.loc[online.index, "probability"]).max()),
                  "peer_labels_agree_with_ours": int(((online.to_numpy() > 0.5) == labels).sum()),
                  "duration_s_per_run": DURATION, "workers_per_side": 2, "wrk_threads": 2}
        for shape, n in (("1_row", 1), (f"{rows}_rows", rows)):
            chunks = [raw.iloc[i:i + n] for i in range(0, min(len(raw), 200 * n), n)]
            chunks = [c for c in chunks if len(c) == n][:200]
            ours_bodies = [_v2_body(c, declared) for c in chunks]
            peer_bodies = [_peer_body(features.loc[c["row_key"]], columns) for c in chunks]
            for conns in (1, 8):
                before = _stage_sums(ours_port, auth)
                mine = _wrk(ours_url, ours_bodies, auth, conns, folder)
                mine["server_side_mean_ms"] = _stage_means(before, _stage_sums(ours_port, auth))
                theirs = _wrk(peer_url, peer_bodies, {"Content-Type": "application/json"},
                              conns, folder)
                result[f"{shape}_{conns}_conn"] = {
                    "project": {**mine, "rows_per_s": round(mine["requests_per_s"] * n)},
                    "mlflow_models_serve": {**theirs,
                                            "rows_per_s": round(theirs["requests_per_s"] * n)},
                    "ratio_project_over_peer_throughput": round(
                        mine["requests_per_s"] / theirs["requests_per_s"], 2)}
        return result
    finally:
        for proc in (ours, peer):  # the processes this benchmark started, by their pid
            proc.terminate()
            proc.wait(timeout=60)
        for fh in logs.values():
            fh.close()
