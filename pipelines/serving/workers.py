"""Several server worker processes on one port, each with its own listening socket.

uvicorn's `--workers` binds one socket in the parent and hands it to every worker. Each worker's
event loop wakes when a connection waits and accepts every connection waiting then, so a burst
of new keep-alive connections often lands on one worker: 32 client connections split 32/0,
31/1, 28/4 and 22/10 between two workers in runs of `bench serving` on 2026-12-07, one worker
doing all the work while the other idled. Here each worker binds its own socket to the address
with SO_REUSEPORT and the kernel spreads new connections over the workers' sockets by a hash of
the connection (Linux), independent of which worker happens to wake first.

The parent binds the address too, without listening (it takes no connections): a port in use
fails at start, before any worker, and a port of 0 is resolved once, so every worker listens on
the same one. Worker supervision is uvicorn's own (`Multiprocess`: health pings, a dead worker
replaced, graceful shutdown on SIGTERM); only where a worker's socket comes from differs.
"""

from __future__ import annotations

import logging
import socket
import sys

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors import multiprocess

log = logging.getLogger(__name__)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT (not listening yet)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class ReusePortProcess(multiprocess.Process):
    """A uvicorn worker that listens on a socket of its own (see the module docstring)."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        try:
            sock = reuse_port_socket(self.config.host, self.config.port)
        except OSError as exc:
            log.error("worker: cannot bind %s:%d: %s", self.config.host, self.config.port, exc)
            sys.exit(STARTUP_FAILURE)
        super().target([sock])


def run(config: Config) -> None:
    """Serve `config.app` with `config.workers` processes on `config.host:config.port`."""
    if not hasattr(socket, "SO_REUSEPORT") or config.uds or config.fd is not None:
        raise ValueError("several workers on one port need SO_REUSEPORT and a TCP host and port")
    reserved = reuse_port_socket(config.host, config.port)  # fails here if the port is taken
    try:
        config.port = reserved.getsockname()[1]  # a port of 0: the one the kernel gave
        log.info("serving on http://%s:%d with %d workers, one listening socket each",
                 config.host, config.port, config.workers)
        # uvicorn's supervisor makes its workers by this module-level name: ours instead
        multiprocess.Process = ReusePortProcess  # type: ignore[misc]
        multiprocess.Multiprocess(config, sockets=[]).run()
    finally:
        reserved.close()
