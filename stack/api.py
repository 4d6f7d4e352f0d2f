"""A small client of Airflow's REST API (v2), standard library only: what the stack's tests and
benchmarks need to trigger DAG runs and read where their tasks ran."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

FINISHED = {"success", "failed"}


class AirflowAPIError(RuntimeError):
    pass


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {"username": username, "password": password}
        self._token: str | None = None
        self._token_at = 0.0

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            if self._token is None or time.monotonic() - self._token_at > 600:
                self._token = self._request("POST", "/auth/token", self._auth, auth=False)[
                    "access_token"]
                self._token_at = time.monotonic()
            headers["Authorization"] = f"Bearer {self._token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise AirflowAPIError(f"{method} {path}: HTTP {err.code}: "
                                  f"{err.read()[:1000].decode(errors='replace')}") from None
        return json.loads(raw) if raw else None

    def dag_ids(self) -> list[str]:
        return [d["dag_id"] for d in self._request("GET", "/api/v2/dags?limit=1000")["dags"]]

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not set(dag_ids) <= set(self.dag_ids()):
            if time.monotonic() > deadline:
                raise AirflowAPIError(f"DAGs {dag_ids} not parsed after {timeout:.0f}s "
                                      f"(have {self.dag_ids()})")
            time.sleep(1)

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, logical_date: str | None = None, conf: dict | None = None,
                run_id: str | None = None) -> str:
        body: dict[str, Any] = {"logical_date": logical_date, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        return self._request("GET", path)["state"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.run_state(dag_id, run_id)) not in FINISHED:
            if time.monotonic() > deadline:
                raise AirflowAPIError(f"{dag_id} {run_id} still {state} after {timeout:.0f}s")
            time.sleep(1)
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
                "/taskInstances?limit=1000")
        return self._request("GET", path)["task_instances"]

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
              ) -> list[dict[str, Any]]:
        """Every try of one task instance (earlier tries included), oldest first."""
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
                f"/taskInstances/{task_id}/{map_index}/tries")
        if map_index < 0:
            path = path.replace("/-1/tries", "/tries")
        out = self._request("GET", path)["task_instances"]
        return sorted(out, key=lambda t: t["try_number"])
