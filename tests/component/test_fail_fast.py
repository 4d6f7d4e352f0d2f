"""An unreachable or failing MLflow server is a clear, fast failure naming the registry and the
cause (MLflow's own client defaults would retry for about 4 minutes first).

Real HTTP servers on loopback: one that refuses connections, one that answers 503 to
everything, one that accepts and never answers. Each bound is the project's retry budget
(`Settings.mlflow_max_retries`, `mlflow_timeout_s`, `mlflow_backoff_factor`) plus slack.
"""

from __future__ import annotations

import dataclasses
import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from pipelines.core.settings import get_settings
from pipelines.model import registry


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b"service unavailable")

    do_POST = do_PATCH = do_DELETE = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    unavailable = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=unavailable.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts into the backlog, never answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = closed.getsockname()[1]
    closed.close()
    import mlflow  # noqa: F401 - imported before the clocks start

    yield {"refused": f"http://127.0.0.1:{refused}",
           "503": f"http://127.0.0.1:{unavailable.server_address[1]}",
           "silent": f"http://127.0.0.1:{silent.getsockname()[1]}"}
    unavailable.shutdown()
    silent.close()


@pytest.mark.parametrize("fault", ["refused", "503", "silent"])
def test_an_unreachable_registry_fails_fast_and_names_itself(servers, fault, monkeypatch):
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)
    settings = dataclasses.replace(get_settings(), mlflow_tracking_uri=servers[fault],
                                   mlflow_timeout_s=3)
    budget = ((settings.mlflow_max_retries + 1) * settings.mlflow_timeout_s
              + settings.mlflow_backoff_factor * 2 ** (settings.mlflow_max_retries + 1) + 5)
    t0 = time.perf_counter()
    with pytest.raises(registry.RegistryUnavailable) as err:
        registry.resolve_champion(settings, "delay_model")
    elapsed = time.perf_counter() - t0
    message = str(err.value)
    assert f"could not ask the MLflow registry at {servers[fault]}" in message
    assert "get_model_version_by_alias('delay_model', 'champion')" in message
    assert "no 'champion' alias" not in message  # never "absent" when it could not ask
    assert elapsed < budget, f"{fault}: {elapsed:.1f}s to fail, budget {budget:.0f}s"


def test_the_cli_says_what_failed_in_one_line(servers):
    """`cli score` against a registry that refuses connections: exit 1, one line naming the
    registry and the connection error, no traceback."""
    env = {"MLFLOW_TRACKING_URI": servers["refused"], "PATH": "/usr/bin:/bin"}
    import os

    env.update({k: v for k, v in os.environ.items() if k.startswith(("MLOPS_", "HOME"))})
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "score", "--date", "2013-01-02"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: score: ") and "Traceback" not in out.stderr
    assert f"could not ask the MLflow registry at {servers['refused']}" in last
    assert "Connection refused" in last
