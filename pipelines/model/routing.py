"""Traffic routing between registry aliases: the split decision and the live routing document.

A request on the server's unversioned path is answered by one of the routing's candidates
(alias -> weight). `choose` is a pure function of a sticky key (a request header or input,
`serving.routing.sticky`): the key's blake2b hash is a point in [0, 1), and the candidates
cover [0, 1) in proportion to their weights, the default alias (the first of
`serving.aliases`) last. So one key always gets the same variant, and when a canary grows
(the challenger's weight goes up) the keys it already had stay on it.

The live routing (`core.locations.routing`: one JSON document, written atomically) is what a
rollout step sets and a rollback resets; every server worker reads it every
`serving.poll_seconds`. Without it, `serving.routing` of params.yaml applies; without that,
the default alias answers everything (the server's behaviour before routing existed).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.contracts import Mirror, RoutingState
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)
SCALE = float(2 ** 64)


@dataclass(frozen=True)
class Routing:
    """Weights per alias (in the order they cover [0, 1): the default alias last) and an
    optional mirror (shadow) alias with the percentage of requests it also scores."""
    candidates: tuple[tuple[str, float], ...]
    mirror: Mirror | None = None

    @property
    def shares(self) -> dict[str, float]:
        """alias -> share of requests in [0, 1]."""
        total = sum(w for _, w in self.candidates)
        return {a: w / total for a, w in self.candidates}


def point(key: str, salt: str = "") -> float:
    """`key` as a point in [0, 1): its blake2b hash (stable across processes and hosts)."""
    digest = hashlib.blake2b(f"{salt}{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / SCALE


def choose(routing: Routing, key: str) -> str:
    """The alias that answers a request with sticky key `key` (pure: same key, same alias)."""
    u, total = point(key), sum(w for _, w in routing.candidates)
    edge = 0.0
    for alias, weight in routing.candidates:
        edge += weight / total
        if u < edge:
            return alias
    return routing.candidates[-1][0]  # u within rounding of 1.0


def mirrored(routing: Routing, key: str) -> str | None:
    """The mirror alias if this request's key falls in the mirrored share (an independent
    hash of the key, so the shadowed share does not depend on the split), else None."""
    m = routing.mirror
    if m is None or m["percent"] <= 0:
        return None
    return m["alias"] if point(key, salt="mirror:") < m["percent"] / 100 else None


def make_routing(candidates: dict[str, float], mirror: Mirror | None, default: str) -> Routing:
    """A checked Routing: weights >= 0 with a positive sum, the default alias last."""
    if not candidates or any(w < 0 for w in candidates.values()) or sum(
            candidates.values()) <= 0:
        raise ValueError(f"routing candidates {candidates!r}: alias -> weight, weights >= 0 "
                         f"with a positive sum")
    if mirror is not None and not 0 <= float(mirror["percent"]) <= 100:
        raise ValueError(f"routing mirror percent {mirror['percent']!r} is not in [0, 100]")
    ordered = sorted(candidates.items(), key=lambda kv: kv[0] == default)
    return Routing(tuple((a, float(w)) for a, w in ordered), mirror)


def configured(cfg: Config) -> Routing:
    """params.yaml's routing (`serving.routing`; none: the first alias only)."""
    r, default = cfg.serving.routing, cfg.serving.aliases[0]
    mirror: Mirror | None = (None if r.mirror is None else
                             {"alias": r.mirror.alias, "percent": r.mirror.percent})
    return make_routing(r.candidates or {default: 100.0}, mirror, default)


def from_document(doc: dict[str, Any], default: str) -> Routing:
    """The Routing of a live routing document; raises ValueError on a malformed one."""
    candidates, mirror = doc.get("candidates"), doc.get("mirror")
    if not isinstance(candidates, dict) or not all(
            isinstance(a, str) and isinstance(w, (int, float)) and not isinstance(w, bool)
            for a, w in candidates.items()):
        raise ValueError(f"routing document: candidates must map alias -> weight, got "
                         f"{candidates!r}")
    if mirror is not None and not (isinstance(mirror, dict) and isinstance(
            mirror.get("alias"), str) and isinstance(mirror.get("percent"), (int, float))):
        raise ValueError(f"routing document: mirror must be null or {{alias, percent}}, got "
                         f"{mirror!r}")
    return make_routing(candidates, None if mirror is None else {
        "alias": mirror["alias"], "percent": float(mirror["percent"])}, default)


def current(settings: Settings, cfg: Config) -> Routing:
    """The routing in force: the live document if there is one, else params.yaml's. A
    malformed document raises (ValueError): the server keeps what it had."""
    doc = storage.read_json_if_exists(locations.routing(settings))
    if doc is None:
        return configured(cfg)
    return from_document(doc, cfg.serving.aliases[0])


def set_routing(settings: Settings, cfg: Config, candidates: dict[str, float],
                mirror: Mirror | None, actor: str, reason: str) -> RoutingState:
    """Write the live routing document (atomically); servers follow it within
    `serving.poll_seconds`. Aliases must be ones the servers follow (`serving.aliases`)."""
    routed = set(candidates) | ({mirror["alias"]} if mirror else set())
    unknown = sorted(routed - set(cfg.serving.aliases))
    if unknown:
        raise ValueError(f"routing names {unknown}, which serving.aliases "
                         f"{list(cfg.serving.aliases)} does not follow")
    make_routing(candidates, mirror, cfg.serving.aliases[0])  # checks the weights
    state: RoutingState = {"candidates": {a: float(w) for a, w in candidates.items()},
                           "mirror": mirror, "at": datetime.now(UTC).isoformat(),
                           "actor": actor, "reason": reason[:500]}
    storage.write_json(locations.routing(settings), state)
    log.info("routing: %s (mirror %s) by %s: %s", state["candidates"], mirror, actor, reason)
    return state


def reset_routing(settings: Settings, cfg: Config, actor: str, reason: str) -> RoutingState:
    """Everything to the default alias (the champion), no mirror: blue-green's way back."""
    return set_routing(settings, cfg, {cfg.serving.aliases[0]: 100.0}, None, actor, reason)


def roll_back_routing(settings: Settings, cfg: Config, actor: str, reason: str,
                      user: str | None = None) -> RoutingState:
    """Blue-green's way back: reset the live routing to the champion only (no mirror) and
    record it in the promotion history (`routing_reset`, with the routing it replaced)."""
    from pipelines.model.registry import record

    before = storage.read_json_if_exists(locations.routing(settings))
    state = reset_routing(settings, cfg, actor, reason)
    record(settings, {"action": "routing_reset", "model": cfg.registry.model_name,
                      "from_version": None, "to_version": None, "actor": actor, "user": user,
                      "reason": reason[:500],
                      "routing_before": None if before is None else {
                          "candidates": before.get("candidates"), "mirror": before.get("mirror")},
                      "routing_after": {"candidates": state["candidates"], "mirror": None}})
    return state
