"""The promotion decision after the gates, and promotion of an approved challenger.

`decide` turns a gate report and the run's choices into one of: promote, forced (a failed gate
overridden on purpose), await_approval (passed, but a person must approve), reject. Every
outcome other than promote is recorded in the promotion history too, so "why is the champion
still v3?" always has an answer.
"""

from __future__ import annotations

from typing import Any

from pipelines.core import locations, storage
from pipelines.core.settings import Settings
from pipelines.model import registry

PROMOTE, FORCED, AWAIT, REJECT = "promote", "forced", "await_approval", "reject"


def decide(report: dict[str, Any], force: bool, approval: str) -> str:
    if not report["passed"]:
        return FORCED if force else REJECT
    return AWAIT if approval == "manual" else PROMOTE


def record_decision(settings: Settings, name: str, report: dict[str, Any], decision: str,
                    actor: str, reason: str) -> dict[str, Any] | None:
    """History entry for a decision that leaves the champion where it is."""
    if decision in (PROMOTE, FORCED):
        return None
    event = {"action": "rejected" if decision == REJECT else "awaiting_approval", "model": name,
             "to_version": report["version"], "from_version": report.get("champion_version"),
             "actor": actor, "reason": reason, "failed_gates": report.get("failed", []),
             "gate_report": report.get("report_uri")}
    event["history_uri"] = registry.record(settings, event)
    return event


def promote_approved(settings: Settings, name: str, version: str, actor: str, reason: str,
                     force: bool = False) -> dict[str, Any]:
    """Promote a version a person approved: its gate verdict must be 'pass' unless forced."""
    c = registry.client(settings)
    if version == "challenger":
        mv = registry.by_alias(c, name, registry.CHALLENGER)
        if mv is None:
            raise registry.RegistryError(f"{name} has no challenger to approve")
        version = str(mv.version)
    tags = dict(c.get_model_version(name, version).tags)
    verdict = tags.get("gate_verdict")
    if verdict != "pass" and not force:
        raise registry.RegistryError(
            f"{name} v{version} has gate verdict {verdict!r}; promote it only with force=true "
            f"(recorded as a forced promotion)")
    report_uri = locations.gate_report(settings, name, version)
    return registry.promote(settings, name, version, actor, reason,
                            report_uri if storage.exists(report_uri) else None,
                            forced=verdict != "pass")
