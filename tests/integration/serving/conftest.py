"""State and server processes the serving tests share.

`served_state` (once per session): a landing zone for 2013-01-01..09, Feast sources and
`feast apply`, a model with the request-time calendar registered as v1 and promoted champion,
a second model registered as v2, the online store materialised for 2013-01-08 (as of
2013-01-09 00:00) and batch scoring's partition of 2013-01-09. Everything is real: MLflow on
SQLite, Feast's SQLite online store, onnxruntime; servers are real processes on free loopback
ports, stopped by their own pid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.core import locations

REPO = Path(__file__).resolve().parents[3]
SERVED_DAY = date(2013, 1, 9)  # scored by batch and online
# events whose prediction time (2 hours before) is the last hour the online store holds: it is
# materialised for 8 January, as of its last instant (2013-01-08T23:59:59.999999; a row stamped
# at midnight is the next interval's), so batch scoring's offline join sees the same rows
AS_OF_TIME = "2013-01-09T01:00:00Z"
ENV_KEYS = ("MLOPS_STATE_URI", "MLOPS_PARAMS", "FEAST_REGISTRY_PATH", "FEAST_ONLINE_PATH",
            "MLFLOW_TRACKING_URI")


@pytest.fixture(scope="session")
def served_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The state every serving test reads (see the module docstring)."""
    from support import register_onnx, scoring_state, with_params

    from pipelines.core.specs import request_spec_json
    from pipelines.features.online import materialize
    from pipelines.model.training import fit
    from pipelines.scoring.run import score_interval

    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        for key in ENV_KEYS:  # scoring_state sets them; restored at once (servers get `env`)
            mp.setenv(key, os.environ.get(key, ""))
        state = scoring_state(root, date(2013, 1, 1), SERVED_DAY, (date(2013, 1, 2),
                                                                    date(2013, 1, 8)),
                              request_features=True)
        cfg, settings = state["cfg"], state["settings"]
        other = with_params(cfg, training__estimator__params={
            **cfg.training.estimator.params, "n_estimators": 8, "max_depth": 2})
        pipe, numeric, categorical = fit(other, state["train"])
        state["v2"] = register_onnx(settings, cfg, pipe, numeric, categorical, {
            "request_features": request_spec_json(cfg.features.request_time)})
        state["as_of"] = materialize(cfg, settings, date(2013, 1, 8))["as_of"]
        score_interval(cfg, settings, SERVED_DAY, None, "serving-test")
        state["root"] = root
        state["env"] = {key: os.environ[key] for key in ENV_KEYS}
    return state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process: the launcher (`python -m pipelines.serving`) or uvicorn on a factory."""

    def __init__(self, state: dict[str, Any], name: str, params: Path | None = None,
                 workers: int = 1, factory: str | None = None,
                 env_extra: dict[str, str] | None = None) -> None:
        self.port, self.log_path = free_port(), state["root"] / f"{name}.log"
        env = {**os.environ, **state["env"], "MLOPS_SERVING_PORT": str(self.port),
               "MLOPS_SERVING_WORKERS": str(workers), "MLOPS_SERVING_LOG_FLUSH_SECONDS": "0.3",
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(env_extra or {})
        if params is not None:
            env["MLOPS_PARAMS"] = str(params)
        if factory is None:
            cmd = [sys.executable, "-m", "pipelines.serving"]
        else:  # a test factory wrapping the real app (fault injection), one worker
            cmd = [sys.executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1",
                   "--port", str(self.port), "--app-dir", str(Path(__file__).parent)]
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def wait(self, path: str = "/v2/health/ready", timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited:\n{self.log_path.read_text()[-3000:]}"
            try:
                if self.http.get(path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{path} not 200 after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()  # this process's own pid; uvicorn stops its workers
        try:
            self.proc.wait(timeout=60)
        finally:
            self._log.close()

    def metrics(self, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics: (name, sorted labels) -> value."""
        r = self.http.get("/metrics", headers=bearer(token))
        assert r.status_code == 200, r.text
        text = r.text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def metric(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def events(state, time_hour: str | None = AS_OF_TIME) -> pd.DataFrame:
    """The raw flights of the served day, as the landing zone holds them."""
    raw = pd.read_csv(locations.batch(state["settings"].landing_uri, "flights", SERVED_DAY))
    return raw if time_hour is None else raw[raw["time_hour"] == time_hour].reset_index(drop=True)


def known_events(state) -> pd.DataFrame:
    """`events` for which every feature view has an online value (the online store holds what
    batch scoring's offline join saw for them): what the reject policy lets through."""
    from pipelines.data.events import entity_rows
    from pipelines.scoring.table import read_partition

    rows = events(state)
    scored = read_partition(state["settings"], SERVED_DAY).set_index("row_key")
    scored = scored.loc[entity_rows(state["cfg"], rows)["row_key"]]
    views = {c.split("__")[0] for c in scored.columns if "_fv__" in c}
    known = np.logical_and.reduce([scored.filter(like=f"{v}__").notna().any(axis=1).to_numpy()
                                   for v in views])
    return rows[known].reset_index(drop=True)


def v2_request(rows: pd.DataFrame, **override: dict | None) -> dict:
    """A JSON V2 request of raw flights; `override`: an input's fields changed, or None to
    leave the input out."""
    inputs = [{"name": c, "datatype": "FP64" if c in ("distance", "hour") else "BYTES",
               "shape": [len(rows)], "data": [None if pd.isna(v) else (float(v) if c in (
                   "distance", "hour") else str(v)) for v in rows[c]]}
              for c in ("time_hour", "carrier", "flight", "origin", "dest", "tailnum",
                        "distance", "hour")]
    for name, change in override.items():
        spec = next(i for i in inputs if i["name"] == name)
        if change is None:
            inputs.remove(spec)
        else:
            spec.update(change)
    return {"inputs": inputs}
