"""The promotion decision after the gates, its approval, and promotion by hand.

`decide` turns a gate verdict and the run's choices into one of: promote, forced (a failed gate
overridden on purpose), await_approval (a person must approve first: `approval=manual`, for a
passing or a forced model), reject. `conclude` decides and records; `promote_decided` carries the
decision out once any approval is in. Every outcome that leaves the champion where it is goes to
the promotion history too, so "why is the champion still v3?" always has an answer. The DAG,
the CLI and the `promote` DAG all go through these functions.
"""

from __future__ import annotations

from typing import Any

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.contracts import (
    GateVerdict,
    HistoryEvent,
    PromotionDecision,
    Window,
)
from pipelines.core.settings import Settings
from pipelines.model import registry

PROMOTE, FORCED, AWAIT, REJECT = "promote", "forced", "await_approval", "reject"
APPROVE_OPTION, REJECT_OPTION = "Approve", "Reject"  # the options a person chooses between
REJECTED = "rejected"  # the history action of a version the gates kept out


def _write_card(cfg: Config, settings: Settings, version: str) -> str:
    from pipelines.model.card import write_card  # numpy and yaml: not at DAG parse time

    return write_card(cfg, settings, version)


def decide(report: GateVerdict | dict[str, Any], force: bool, approval: str) -> str:
    if not report["passed"] and not force:
        return REJECT
    if approval == "manual":
        return AWAIT
    return PROMOTE if report["passed"] else FORCED


def record_decision(settings: Settings, name: str, report: GateVerdict | dict[str, Any],
                    decision: str, actor: str, reason: str,
                    user: str | None = None) -> HistoryEvent | None:
    """History entry for a decision that leaves the champion where it is (for now)."""
    if decision in (PROMOTE, FORCED):
        return None
    event: HistoryEvent = {
        "action": REJECTED if decision == REJECT else "awaiting_approval", "model": name,
        "to_version": report["version"], "from_version": report.get("champion_version"),
        "actor": actor, "user": user, "reason": registry.check_reason(reason),
        "failed_gates": report.get("failed", []), "gate_report": report.get("report_uri")}
    event["history_uri"] = registry.record(settings, event)
    return event


def reason_for(window: Window, given: str) -> str:
    """The history's reason: the trigger form's for a manual run, the drift trigger otherwise."""
    return given if window["trigger"] == "manual" else f"retraining: {window['trigger']}"


def conclude(cfg: Config, settings: Settings, report: GateVerdict, window: Window, *,
             force: bool, approval: str | None, reason: str, actor: str,
             user: str | None = None) -> PromotionDecision:
    """Decide what happens to a gated version and record it (rejections, approval waits).
    `approval` None: `registry.approval` from params.yaml."""
    decision = decide(report, force, approval or cfg.registry.approval)
    why = reason_for(window, reason)
    record_decision(settings, cfg.registry.model_name, report, decision, actor, why, user)
    if decision not in (PROMOTE, FORCED):  # those are written once the alias has moved
        _write_card(cfg, settings, report["version"])  # the decision (and who) in the card
    return {"decision": decision, "version": report["version"],  # type: ignore[typeddict-item]
            "champion_version": report["champion_version"], "passed": report["passed"],
            "reason": why, "needs_approval": decision == AWAIT, "report_uri": report["report_uri"]}


def summary(decided: PromotionDecision, failed: list[str]) -> str:
    """One line for the task log."""
    stays = f"v{decided['champion_version']}" if decided["champion_version"] else "none"
    verdict = "PASS" if decided["passed"] else f"FAIL {failed}"
    tail = "" if decided["decision"] in (PROMOTE, FORCED) else f"; champion stays {stays}"
    return f"v{decided['version']} gates {verdict} -> {decided['decision']}{tail}"


def approver(response: dict[str, Any] | None) -> tuple[bool, str | None]:
    """(approved?, who) from an approval task's result (Airflow's HITL response)."""
    if not response:
        return False, None
    who = response.get("responded_by_user") or {}
    name = who.get("name") or who.get("id") if isinstance(who, dict) else str(who)
    return APPROVE_OPTION in (response.get("chosen_options") or []), name


def promote_decided(cfg: Config, settings: Settings, decided: PromotionDecision, *, actor: str,
                    user: str | None = None,
                    approval: dict[str, Any] | None = None) -> HistoryEvent:
    """Carry out a promote / forced decision, or one a person has answered.

    A decision that needed approval promotes only if the answer is "Approve"; a "Reject" is
    recorded (with who answered) and moves nothing. A rejected decision never promotes.
    """
    name = cfg.registry.model_name
    if decided["decision"] == REJECT:
        raise registry.RegistryError(f"{name} v{decided['version']} was rejected by its gates; "
                                     f"it is not promoted")
    forced = not decided["passed"]
    if decided["needs_approval"]:
        approved, who = approver(approval)
        if not approved:
            event: HistoryEvent = {
                "action": "approval_rejected", "model": name, "to_version": decided["version"],
                "from_version": decided["champion_version"], "actor": actor, "user": who,
                "reason": decided["reason"], "gate_report": decided["report_uri"]}
            event["history_uri"] = registry.record(settings, event)
            _write_card(cfg, settings, decided["version"])
            return event
        user = who or user
    moved = registry.promote(settings, name, decided["version"], actor, decided["reason"],
                             decided["report_uri"], forced=forced, user=user)
    _write_card(cfg, settings, decided["version"])  # the approver in the card
    return moved


def promote_approved(settings: Settings, name: str, version: str, actor: str, reason: str,
                     force: bool = False, user: str | None = None,
                     cfg: Config | None = None) -> HistoryEvent:
    """Promote a version by hand (the `promote` DAG): its gate verdict must be 'pass' unless
    forced. With `cfg`, the version's model card is rewritten with this promotion."""
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
    moved = registry.promote(settings, name, version, actor, reason,
                             report_uri if storage.exists(report_uri) else None,
                             forced=verdict != "pass", user=user)
    if cfg is not None:
        _write_card(cfg, settings, version)
    return moved
