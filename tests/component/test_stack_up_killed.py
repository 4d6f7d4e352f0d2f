"""`stack up` killed while its servers start: `stack down` still stops every one of them.

Real `python -m stack up` (Postgres, Redis, SeaweedFS from packages) SIGKILLed as soon as it
has spawned SeaweedFS, before SeaweedFS is ready; the servers run in sessions of their own, so
they outlive it unless `down` finds them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stack import process

REPO = Path(__file__).resolve().parents[2]


def _listed(manifest: Path) -> list[dict]:
    return json.loads(manifest.read_text())["services"] if manifest.exists() else []


def _running(pid: int) -> bool:
    return process._in_process_table(pid) and not process._is_zombie(pid)


def test_down_stops_the_servers_of_an_up_killed_before_they_were_ready(tmp_path):
    root = tmp_path / "stack"
    env = {**os.environ, "MLOPS_STACK_DIR": str(root)}
    up = subprocess.Popen([sys.executable, "-m", "stack", "up"], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    manifest, seen = root / "stack.json", None
    try:
        deadline = time.monotonic() + 120
        while seen is None and time.monotonic() < deadline and up.poll() is None:
            seen = next((s for s in _listed(manifest) if s["name"] == "seaweedfs"), None)
            time.sleep(0.02)
    finally:
        os.killpg(up.pid, signal.SIGKILL)  # `up` and nothing else: the servers have sessions
        up.wait(timeout=30)
    listed = _listed(manifest)
    down = subprocess.run([sys.executable, "-m", "stack", "down", "--timeout", "5"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert seen is not None, "stack up never recorded SeaweedFS"
    assert seen["extra"].get("starting") and seen["port"] == 0  # recorded before it was ready
    assert down.returncode == 0, down.stderr[-2000:]
    assert "seaweedfs" in down.stdout  # it had outlived `up`: `down` stopped it
    deadline = time.monotonic() + 10
    while any(_running(s["pid"]) for s in listed) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [s["name"] for s in listed if _running(s["pid"])]
    assert _listed(manifest) == []
