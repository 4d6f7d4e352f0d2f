"""The live routing in one worker: read every `serving.poll_seconds` from the routing document
(`pipelines.model.routing.current`), swapped in by one reference assignment.

A document that cannot be read or is malformed keeps the routing the worker had (logged, and
`serving_routing_failures_total` counts it); the shares in force are the gauge
`serving_routing_share{variant}`.
"""

from __future__ import annotations

import logging
import threading

from pipelines.core.config import Config
from pipelines.core.settings import Settings
from pipelines.model import routing
from pipelines.serving import metrics

log = logging.getLogger(__name__)


class RoutingFollower:
    """Keeps `current` (a `routing.Routing`) equal to the live routing."""

    def __init__(self, settings: Settings, cfg: Config) -> None:
        self.settings, self.cfg, self.name = settings, cfg, cfg.registry.model_name
        self.current = routing.configured(cfg)
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="routing-follower", daemon=True)

    def start(self) -> None:
        self.poll()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def poll(self) -> None:
        try:
            new = routing.current(self.settings, self.cfg)
        except Exception as exc:  # noqa: BLE001 - a bad document never takes the server down
            error = f"{type(exc).__name__}: {exc}"
            if error != self._error:
                log.error("serving: the routing document could not be followed, keeping %s: "
                          "%s", self.current.shares, error)
            self._error = error
            metrics.ROUTING_FAILURES.labels(self.name).inc()
            return
        self._error = None
        if new != self.current:
            log.info("serving: routing %s (mirror %s), was %s", new.shares, new.mirror,
                     self.current.shares)
            for alias in self.current.shares:
                metrics.ROUTING_SHARE.labels(self.name, alias).set(0)
        self.current = new
        for alias, share in new.shares.items():
            metrics.ROUTING_SHARE.labels(self.name, alias).set(share)

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.serving.poll_seconds):
            self.poll()
