"""The served models: a registered version loaded as batch scoring loads it, and the followers
that keep each configured alias's version current.

`ServedModel.load` goes through the registry functions batch scoring uses (`registry.describe`,
`registry.load_onnx`: the ONNX bytes must match the sha256 the registry holds; ONNX only,
never a pickle) and the version's own request-time spec. A follower asks the registry every
`serving.poll_seconds` which version holds its alias; when it moved, the new version is
loaded and verified in the follower's thread (never on a request) and swapped in by one
reference assignment. A request takes the reference once and finishes on that version's
session, so requests under way end on the old version. A load that fails (sha256 mismatch, an
unreadable ONNX, an unreachable registry) keeps the old version, is logged, counted in
`/metrics` and shown in the model metadata; the same broken version is not retried until the
alias or its ONNX tags change, an unreachable registry is asked again at the next poll.

The first alias is required: a server is ready once it is loaded. The others are optional: one
the registry does not hold (no challenger: the normal state between rollouts) is `absent`, not
a failure (nothing logged at error level, counted or marked stale); when it appears it is loaded
and followed, and when it is removed the version it served is dropped.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.config import Config
from pipelines.core.contracts import LoadFailure, ServedVersion
from pipelines.core.settings import Settings
from pipelines.model import registry
from pipelines.serving import metrics

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from pipelines.features.request import Spec
    from pipelines.model.onnx_model import OnnxScorer
    from pipelines.scoring.inputs import ModelInputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One loaded version: its registry description, its onnxruntime session, its spec."""
    name: str
    alias: str
    described: dict[str, Any]  # registry.describe(): version, run, ONNX hash, inputs, service
    request_spec: Spec
    scorer: OnnxScorer
    loaded_at: str

    @property
    def version(self) -> str:
        return str(self.described["version"])

    @property
    def numeric(self) -> list[str]:
        return list(self.described["numeric"])

    @property
    def categorical(self) -> list[str]:
        return list(self.described["categorical"])

    def info(self, cfg: Config) -> ServedVersion:
        d = self.described
        return {"alias": self.alias, "version": self.version, "run_id": d["run_id"],
                "onnx_sha256": d["onnx_sha256"], "loaded_at": self.loaded_at,
                "feature_service": d.get("feature_service") or cfg.features.service}

    @classmethod
    def load(cls, settings: Settings, name: str, alias: str, mv: ModelVersion) -> ServedModel:
        """A registered version, loaded as batch scoring loads it: its description, ONNX bytes
        matching the registry's sha256, an onnxruntime session, its request-time spec."""
        from pipelines.core.specs import parse_request_spec
        from pipelines.model.onnx_model import OnnxScorer

        described = registry.describe(name, mv)
        data = registry.load_onnx(settings, described["onnx_uri"], described["onnx_sha256"])
        spec = parse_request_spec(described["request_features"])
        scorer = OnnxScorer(data, described["numeric"], described["categorical"])
        return cls(name, alias, described, spec, scorer, datetime.now(UTC).isoformat())

    def predict(self, inputs: ModelInputs, batch_rows: int) -> np.ndarray:
        """P(label = 1) per row: `ModelInputs.predict`, batch scoring's own call."""
        return inputs.predict(self.scorer, batch_rows)


class AliasFollower:
    """Keeps one alias's version loaded; `current` is what requests use."""

    def __init__(self, settings: Settings, name: str, alias: str, required: bool = True
                 ) -> None:
        self.settings, self.name, self.alias, self.required = settings, name, alias, required
        self.current: ServedModel | None = None
        self.failure: LoadFailure | None = None
        self.absent = False  # an optional alias the registry does not hold (not a failure)
        self._refused: tuple[str, str | None] | None = None  # (version, sha256) that failed

    def poll(self, client: registry.GuardedClient) -> None:
        """Ask the registry where the alias points; load and swap in a moved alias."""
        try:
            mv = registry.by_alias(client, self.name, self.alias)
        except registry.RegistryUnavailable as exc:
            return self._fail(None, str(exc))
        if mv is None:
            if self.required:
                return self._fail(None, f"{self.name} has no {self.alias!r} alias in the "
                                        f"registry")
            return self._absent()
        self.absent = False
        version, sha = str(mv.version), dict(mv.tags).get("onnx_sha256")
        cur = self.current
        if cur is not None and (cur.version, cur.described["onnx_sha256"]) == (version, sha):
            self._ok()
            return None
        if self._refused == (version, sha):
            return None  # already refused; waits for the alias or its tags to change
        try:
            served = ServedModel.load(self.settings, self.name, self.alias, mv)
        except registry.RegistryUnavailable as exc:  # could not download: ask again next poll
            return self._fail(version, str(exc))
        except Exception as exc:  # noqa: BLE001 - any broken version is refused, kept visible
            self._refused = (version, sha)
            return self._fail(version, f"{type(exc).__name__}: {exc}")
        self.current = served  # the swap: one reference assignment
        self._refused = None
        if cur is not None:
            metrics.MODEL_INFO.labels(self.name, self.alias, cur.version,
                                      cur.described["onnx_sha256"]).set(0)
        metrics.MODEL_INFO.labels(self.name, self.alias, served.version,
                                  served.described["onnx_sha256"]).set(1)
        log.info("serving: %s %s -> v%s (sha256 %s), was %s", self.name, self.alias,
                 served.version, served.described["onnx_sha256"][:12],
                 f"v{cur.version}" if cur else "nothing")
        self._ok()
        return None

    def _absent(self) -> None:
        """An optional alias the registry does not hold: nothing to serve under it, which is
        not a failure. A version it served is dropped (requests under way finish on it)."""
        cur = self.current
        if not self.absent or cur is not None:  # logged once, when it becomes absent
            log.info("serving: %s %s: the registry holds no %r alias; %s", self.name,
                     self.alias, self.alias, f"v{cur.version} is no longer served" if cur
                     else "nothing served under it until it does")
        self.current, self._refused, self.absent = None, None, True
        if cur is not None:
            metrics.MODEL_INFO.labels(self.name, self.alias, cur.version,
                                      cur.described["onnx_sha256"]).set(0)
        self._ok()

    def _ok(self) -> None:
        if self.failure is not None:
            metrics.STALE.labels(self.name, self.alias).set(0)
        self.failure = None

    def _fail(self, version: str | None, error: str) -> None:
        held = f"v{self.current.version}" if self.current else "nothing"
        previous = self.failure
        if previous is None or (previous["version"], previous["error"]) != (version, error[:1000]):
            log.error("serving: %s %s%s could not be followed, still serving %s: %s", self.name,
                      self.alias, f" -> v{version}" if version else "", held, error)
        self.failure = {"alias": self.alias, "version": version, "error": error[:1000],
                        "at": datetime.now(UTC).isoformat()}
        metrics.LOAD_FAILURES.labels(self.name, self.alias, version or "").inc()
        metrics.STALE.labels(self.name, self.alias).set(1)


class Repository:
    """The followers of `serving.aliases` (the first required, the others optional): loaded
    once at startup, then polled by one background thread per worker."""

    def __init__(self, settings: Settings, cfg: Config) -> None:
        self.name, self.poll_seconds = cfg.registry.model_name, cfg.serving.poll_seconds
        self.settings = settings
        self.followers = {a: AliasFollower(settings, self.name, a, required=i == 0)
                          for i, a in enumerate(cfg.serving.aliases)}
        self._client: registry.GuardedClient | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alias-follower", daemon=True)

    def start(self) -> None:
        """Load every alias once, then follow them in the background: a worker starts taking
        requests only after its first attempt (without its first alias: live, not ready)."""
        self._poll()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _poll(self) -> None:
        try:
            self._client = self._client or registry.client(self.settings)
            for follower in self.followers.values():
                follower.poll(self._client)
        except Exception:  # noqa: BLE001 - the poller must outlive any one failure
            log.exception("serving: polling the registry failed; next try in %ss",
                          self.poll_seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._poll()

    def ready(self) -> bool:
        """The first alias is loaded (the optional ones may be absent, or failing: stale)."""
        return next(iter(self.followers.values())).current is not None

    def find(self, version: str | None) -> AliasFollower | None:
        """The follower for a V2 model version: None -> the first alias; an alias name; or
        the version number one of the aliases serves now."""
        if version is None:
            return next(iter(self.followers.values()))
        if version in self.followers:
            return self.followers[version]
        return next((f for f in self.followers.values()
                     if f.current is not None and f.current.version == version), None)
