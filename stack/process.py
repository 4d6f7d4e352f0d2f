"""Processes of the stack: start one in its own session with its output in a log, wait until it
is ready, stop it (its stop signal, then SIGKILL to the whole group), several at once.

Standard library only. `Service` is a plain dataclass: `dataclasses.asdict(service)` can be
saved as JSON and `Service(**saved).stop()` stops it from another process.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ServiceError(RuntimeError):
    """A server did not start (the message ends with the tail of its log)."""


@dataclass
class Service:
    name: str
    pid: int
    port: int
    env: dict[str, str]
    log: str
    root: str = ""
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: float = 20.0
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.extra.get("url", f"http://127.0.0.1:{self.port}")

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        # Started by another process (`up`, which has exited): once it exits the server is a
        # zombie until init reaps it, which can take seconds; it is no longer running.
        return _in_process_table(self.pid) and not _is_zombie(self.pid)

    def stop(self, timeout: float | None = None) -> None:
        """Stop signal to the process group, wait up to `timeout` (default: `stop_timeout`),
        then SIGKILL the group."""
        timeout = self.stop_timeout if timeout is None else timeout
        _killpg(self.pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.2)
        # Whatever is left of the group (the server itself after the timeout, or its children).
        _killpg(self.pid, signal.SIGKILL)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _is_zombie(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no procfs (or the process just went): let os.kill decide
    # "pid (comm) S ...": the state follows the last ')' (comm may contain spaces or parens)
    return stat_line.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def stop_all(services: list[Service], timeout: float | None = None) -> None:
    """`stop()` several services at once (each in a thread): the slowest one's stop time
    instead of the sum. Use only for services that do not depend on one another."""
    in_parallel(*(lambda s=s: s.stop(timeout) for s in services if s.alive()))


def wait_reaped(services: list[Service], timeout: float = 5.0) -> None:
    """After `stop()`: wait (at most `timeout`) until the stopped servers have also left the
    process table. A server started by an `up` that has exited is reaped by init, which may
    take a moment; until then `ps` lists it as <defunct> (it no longer runs either way)."""
    pending = [s.pid for s in services if s._proc is None]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        pending = [pid for pid in pending if _in_process_table(pid)]


def _in_process_table(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return True


def in_parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent calls each in its own thread and wait for all of them (also when one
    fails); returns their results in order, or raises the first failure."""
    from concurrent.futures import ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max(len(calls), 1))
    futures = [pool.submit(call) for call in calls]
    try:
        wait(futures)
    except BaseException:
        # Interrupted: still let every call finish (each one bounded by its own timeout), so
        # that nothing it started is left unaccounted for when the caller cleans up.
        wait(futures)
        raise
    finally:
        pool.shutdown(wait=False)
    return [f.result() for f in futures]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------
# small helpers


_PORTS_LOCK = threading.Lock()
_PORTS_GIVEN: set[int] = set()


def free_port(exclude: set[int] | None = None) -> int:
    """A TCP port free on 127.0.0.1 right now (and not in `exclude`). Never the same port twice
    in one process: servers started in parallel cannot be handed the same port before either
    has bound it."""
    exclude = exclude or set()
    with _PORTS_LOCK:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            # SeaweedFS derives gRPC ports as http+10000 when not given; we always give them,
            # but stay below 55535 so such a derived port would still be valid.
            if port not in exclude and port not in _PORTS_GIVEN and port < 55535:
                _PORTS_GIVEN.add(port)
                return port
    raise ServiceError("no free TCP port found on 127.0.0.1")


def write_secret(path: Path, text: str) -> None:
    """Create or replace a file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def tail(log: Path, n: int = 40) -> str:
    """The last `n` lines of a log, for error messages."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


# Called with (name, pid, log) for each process `spawn` starts (see `spawn_hook`).
_spawn_hook: Callable[[str, int, Path], None] | None = None


def spawn_hook(hook: Callable[[str, int, Path], None] | None) -> None:
    """From now on (None: no longer) call `hook(name, pid, log)`, in the spawning thread, for
    every process `spawn` starts, before it is ready: `stack up` records it at once, so a
    `down` after an `up` killed mid-start still finds it."""
    global _spawn_hook
    _spawn_hook = hook


def spawn(name: str, cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None,
          **kwargs: Any) -> subprocess.Popen:
    """Start `cmd` in a session of its own (stopped as a group), stdin closed, output appended
    to `log`. Secrets go in `env` or files, never in `cmd` (any user can read a command line)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env, start_new_session=True, close_fds=True, **kwargs)
    hook = _spawn_hook
    if hook is not None:
        hook(name, proc.pid, log)
    return proc


def wait_ready(service: Service, proc: subprocess.Popen, ready: Callable[[], bool], timeout: float,
               log: Path) -> None:
    """Poll `ready()` until it is true; the process exiting or `timeout` stops it and raises
    ServiceError with the tail of its log (any exception from `ready` means "not yet")."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            service.stop(timeout=1)
            raise ServiceError(f"{service.name} exited with code {proc.returncode}:\n{tail(log)}")
        try:
            if ready():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = exc
        time.sleep(0.2)
    service.stop(timeout=5)
    raise ServiceError(f"{service.name} not ready after {timeout:.0f}s (last error: {last!r}):\n"
                       f"{tail(log)}")
