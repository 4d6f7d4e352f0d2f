"""Several server worker processes on one port, each with its own listening socket.

uvicorn's `--workers` binds one socket in the parent and hands it to every worker. Each worker's
event loop wakes when a connection waits and accepts every connection waiting then, so a burst
of new keep-alive connections often lands on one worker: 32 client connections split 32/0,
31/1, 28/4 and 22/10 between two workers in runs of `bench serving` on 2026-12-07, one worker
doing all the work while the other idled. Here each worker binds its own socket to the address
with SO_REUSEPORT and the kernel spreads new connections over the workers' sockets by a hash of
the connection (Linux), independent of which worker happens to wake first.

The parent first binds the address without SO_REUSEPORT and lets it go: a port anything else
listens on (another server of ours included) fails at start, before any worker, as with one
shared socket; a port of 0 is resolved there once, so every worker listens on the same one.
It then holds the address with SO_REUSEPORT alone, without listening (it takes no
connections), while the workers run, so that check fails for a second launcher even before
any worker listens. Worker supervision is uvicorn's own (`Multiprocess`: health pings, a dead
worker replaced, graceful shutdown on SIGTERM); only where a worker's socket comes from
differs.
"""

from __future__ import annotations

import logging
import socket
import sys

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors import multiprocess

log = logging.getLogger(__name__)


def reuse_port_socket(host: str, port: int, reuse_addr: bool = True) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT (not listening yet)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    if reuse_addr:
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


def free_port(host: str, port: int) -> int:
    """`port` (0: one the kernel picks) if nothing is bound to it, else OSError: a plain bind,
    which fails even where every holder set SO_REUSEPORT."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a holder
        probe.bind((host, port))
        return probe.getsockname()[1]


def run(config: Config) -> None:
    """Serve `config.app` with `config.workers` processes on `config.host:config.port`."""
    if not hasattr(socket, "SO_REUSEPORT") or config.uds or config.fd is not None:
        raise ValueError("several workers on one port need SO_REUSEPORT and a TCP host and port")
    try:
        config.port = free_port(config.host, config.port)
        # without SO_REUSEADDR: another launcher's check fails against it even before a
        # worker listens (two sockets with SO_REUSEADDR may share a port none listens on)
        reserved = reuse_port_socket(config.host, config.port, reuse_addr=False)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    try:
        log.info("serving on http://%s:%d with %d workers, one listening socket each",
                 config.host, config.port, config.workers)
        # uvicorn's supervisor makes its workers by this module-level name: ours instead
        multiprocess.Process = ReusePortProcess  # type: ignore[misc]
        multiprocess.Multiprocess(config, sockets=[]).run()
    finally:
        reserved.close()
