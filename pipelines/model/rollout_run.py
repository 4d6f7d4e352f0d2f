"""Running a rollout: the steps the `rollout` DAG takes the challenger through.

`plan` turns a mode into steps (canary: `rollout.steps`, e.g. shadow -> 5% -> 25% -> 50% ->
100%; shadow: one mirrored step, never promoted; ab: `rollout.ab.weight` held for up to
`ab.max_looks` looks). `run_steps` sets the live routing of each step
(`routing.set_routing`), holds it, reads what the step produced (the prediction-log records
served during it, and the failed requests per variant from the server's `/metrics`), judges
it (`rollout.judge_step`) and records the step with its evidence in the promotion history
(`rollout_step`). A breach resets routing to the champion at once and is recorded
(`rollout_rolled_back`); an A/B rollout stops at the first significant look. The outcome says
what `finish` does: `promote` (through `registry.promote`, as training promotes: history,
serialised alias move) then routing back to the champion alone, which is now the new version;
`rolled_back` raises `RolledBack` (the DAG fails its last task with it: an automatic roll-back
is the rollout working, but the challenger failed on live traffic, which must be seen and
alerted like any failure); `inconclusive` and `observed` promote nothing and raise nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypedDict

import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.contracts import Mirror
from pipelines.core.settings import Settings
from pipelines.model import registry, routing
from pipelines.model.rollout import (
    evidence,
    final_outcome,
    judge_step,
    next_move,
    summary,
)

log = logging.getLogger(__name__)
Mode = Literal["shadow", "canary", "ab"]


class Step(TypedDict):
    name: str  # "shadow", "25%", "ab look 2"
    served: float  # the challenger's served percent
    mirror: bool  # the challenger also shadows the champion's requests


class Outcome(TypedDict):
    version: str
    mode: str
    outcome: Literal["promote", "rolled_back", "inconclusive", "observed"]
    steps: list[dict[str, Any]]
    reason: str


def plan(cfg: Config, mode: Mode, steps: list[str | float] | None = None) -> list[Step]:
    """The steps of a rollout (`steps`: the form's, else `rollout.steps`)."""
    if mode == "shadow":
        return [{"name": "shadow", "served": 0.0, "mirror": True}]
    if mode == "ab":
        w = cfg.rollout.ab.weight
        return [{"name": f"ab look {i}", "served": w, "mirror": False}
                for i in range(1, cfg.rollout.ab.max_looks + 1)]
    out: list[Step] = []
    for s in steps if steps is not None else cfg.rollout.steps:
        if s == "shadow":
            out.append({"name": "shadow", "served": 0.0, "mirror": True})
        else:
            pct = float(s)
            if not 0 < pct <= 100:
                raise ValueError(f"rollout step {s!r}: 'shadow' or a percent in (0, 100]")
            out.append({"name": f"{pct:g}%", "served": pct, "mirror": pct < 100})
    if not out or out[-1]["served"] != 100.0:
        raise ValueError(f"a canary rollout must end at 100%, got steps {steps!r}")
    return out


def failures(metrics_text: str) -> dict[str, float]:
    """Failed requests per variant in a `/metrics` exposition (summed over versions)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "model_infer_request_failure_total":
                out[s.labels["variant"]] = out.get(s.labels["variant"], 0.0) + s.value
    return out


def scraper(url: str, token_path: str) -> Callable[[], dict[str, float]]:
    """Failed requests per variant, read from the server at `url` (its bearer token file)."""
    import httpx

    from pipelines.serving.auth import read_token

    def scrape() -> dict[str, float]:
        r = httpx.get(f"{url}/metrics", timeout=10,
                      headers={"Authorization": f"Bearer {read_token(token_path)}"})
        r.raise_for_status()
        return failures(r.text)
    return scrape


def server_url(settings: Settings) -> str:
    """Where the rollout reads the server's `/metrics` (MLOPS_SERVING_HOST / _PORT)."""
    host = settings.serving_host
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{settings.serving_port}"


def served_records(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """Every prediction-log record served in [start, end), of any event day."""
    from pipelines.scoring.table import log_records

    root = locations.prediction_log_root(settings)
    days = [n.removeprefix("date=") for n in storage.listdir(root) if n.startswith("date=")]
    frames = [log_records(settings, datetime.fromisoformat(d).date()).to_pandas() for d in days]
    if not frames:
        return pd.DataFrame(columns=["request_id", "variant", "latency_ms", "probability",
                                     "served_at", "shadow_variant", "shadow_probability",
                                     "shadow_status"])
    frame = pd.concat(frames, ignore_index=True)
    served = pd.to_datetime(frame["served_at"], utc=True)
    return frame[(served >= start) & (served < end)].reset_index(drop=True)


def with_outcomes(cfg: Config, settings: Settings, records: pd.DataFrame, as_of: datetime
                  ) -> pd.DataFrame:
    """`records` with the label column (`dataset.label.name`) where the outcome of the row's
    event is known by `as_of` (the events' batches in the landing zone, as live quality reads
    them), else null."""
    from pipelines.data.events import EVENT_TIME, LABEL_AT, ROW_KEY, load_events

    label = cfg.dataset.label.name
    if records.empty:
        return records.assign(**{label: pd.Series(dtype=float)})
    times = pd.to_datetime(records[EVENT_TIME], utc=True)
    first, last = times.min().date(), times.max().date() + timedelta(days=1)
    events = load_events(cfg, settings.landing_uri, first, last)
    if events.empty:
        return records.assign(**{label: pd.Series(float("nan"), index=records.index)})
    known = events[events[label].notna() & (pd.to_datetime(events[LABEL_AT], utc=True)
                                             <= pd.Timestamp(as_of))]
    return records.merge(known[[ROW_KEY, label]].drop_duplicates(ROW_KEY), on=ROW_KEY,
                         how="left")


def run_steps(settings: Settings, cfg: Config, version: str, mode: Mode, steps: list[Step],
              hold_seconds: float, scrape: Callable[[], dict[str, float]], actor: str,
              user: str | None = None) -> Outcome:
    """Take `version` (the `challenger` alias) through `steps`; see the module docstring."""
    name, challenger = cfg.registry.model_name, registry.CHALLENGER
    held = registry.by_alias(registry.client(settings), name, challenger)
    if held is None or str(held.version) != str(version):
        raise ValueError(f"{name} v{version} does not hold the {challenger!r} alias (it is "
                         f"{None if held is None else 'v' + str(held.version)}): register it "
                         f"as the challenger first")
    try:
        return _run(settings, cfg, version, mode, steps, hold_seconds, scrape, actor, user)
    except BaseException as exc:  # a failed or killed step never leaves the canary serving
        routing.reset_routing(settings, cfg, actor, f"rollout of v{version} failed: "
                                                    f"{type(exc).__name__}: {exc}")
        registry.record(settings, {"action": "rollout_rolled_back", "model": name,
                                   "to_version": str(version), "actor": actor, "user": user,
                                   "reason": f"the rollout failed: {type(exc).__name__}: "
                                             f"{exc}"[:500]})
        raise


def _run(settings: Settings, cfg: Config, version: str, mode: Mode, steps: list[Step],
         hold_seconds: float, scrape: Callable[[], dict[str, float]], actor: str,
         user: str | None) -> Outcome:
    name, champion, challenger = cfg.registry.model_name, cfg.serving.aliases[0], \
        registry.CHALLENGER
    done: list[dict[str, Any]] = []
    alpha = cfg.rollout.ab.alpha / cfg.rollout.ab.max_looks
    ab_start = None
    for step in steps:
        served = step["served"]
        mirror: Mirror | None = ({"alias": challenger, "percent": 100.0}
                                 if step["mirror"] else None)
        routing.set_routing(settings, cfg, {champion: 100.0 - served, challenger: served},
                            mirror, actor, f"rollout of v{version}: {step['name']}")
        before, start = scrape(), datetime.now(UTC)
        ab_start = ab_start or start  # A/B looks accumulate from the first
        time.sleep(hold_seconds)
        end = datetime.now(UTC)
        # the workers' last flush, after the last mirrored requests' shadows (logged with them)
        time.sleep(settings.serving_log_flush_seconds + cfg.serving.shadow.timeout_seconds + 1)
        after = scrape()
        failed = {v: after.get(v, 0.0) - before.get(v, 0.0) for v in after}
        records = with_outcomes(cfg, settings, served_records(
            settings, ab_start if mode == "ab" else start, end), end)
        ev = evidence(records, {v: int(n) for v, n in failed.items()},
                      cfg.dataset.label.name, cfg.serving.shadow.threshold)
        verdict = judge_step(step["name"], cfg.rollout.slo, ev, champion, challenger,
                             served / 100, alpha)
        entry = {**summary(verdict), "checks": verdict["checks"], "ab": verdict["ab"],
                 "labelled_rows": {v: int(e.y.size) for v, e in ev.items()},
                 "served_percent": served, "mirror": mirror, "from": start.isoformat(),
                 "to": end.isoformat()}
        done.append(entry)
        registry.record(settings, {"action": "rollout_step", "model": name,
                                   "to_version": str(version), "actor": actor, "user": user,
                                   "reason": f"{mode} {step['name']}: "
                                             f"{'pass' if verdict['passed'] else 'breach'}",
                                   "rollout": entry})
        move, why = next_move(mode, verdict)
        if move == "promote":
            return _outcome(version, mode, "promote", done, why)
        if move == "roll_back":
            return _roll_back(settings, cfg, version, mode, done, actor, user, why)
    outcome, why = final_outcome(mode)
    if outcome != "promote":
        routing.reset_routing(settings, cfg, actor, f"rollout of v{version}: {why}")
    return _outcome(version, mode, outcome, done, why)


def _outcome(version: str, mode: str, outcome: Any, steps: list[dict[str, Any]],
             reason: str) -> Outcome:
    return {"version": str(version), "mode": mode, "outcome": outcome, "steps": steps,
            "reason": reason[:500]}


def _roll_back(settings: Settings, cfg: Config, version: str, mode: str,
               steps: list[dict[str, Any]], actor: str, user: str | None, why: str) -> Outcome:
    routing.reset_routing(settings, cfg, actor, f"rollout of v{version} rolled back: {why}")
    out = _outcome(version, mode, "rolled_back", steps, f"{steps[-1]['step']}: {why}")
    registry.record(settings, {"action": "rollout_rolled_back", "model": cfg.registry.model_name,
                               "to_version": str(version), "actor": actor, "user": user,
                               "reason": out["reason"]})
    log.warning("rollout: v%s rolled back at %s: %s", version, steps[-1]["step"], why)
    return out


class RolledBack(RuntimeError):
    """A rollout that breached an SLO and was rolled back (routing was already reset)."""


def finish(settings: Settings, cfg: Config, outcome: Outcome, actor: str,
           user: str | None = None) -> dict[str, Any] | None:
    """Promote a rollout that earned it (the registry's own path), then routing to the
    champion alone; a rolled-back one raises `RolledBack` naming the step and the breach;
    anything else: nothing (routing was already reset)."""
    if outcome["outcome"] == "rolled_back":
        raise RolledBack(f"v{outcome['version']} was rolled back automatically at "
                         f"{outcome['reason']} (champion unchanged, routing back to the champion "
                         f"alone; each step and its evidence are in the promotion history)")
    if outcome["outcome"] != "promote":
        return None
    event = registry.promote(settings, cfg.registry.model_name, outcome["version"], actor,
                             f"rollout ({outcome['mode']}): {outcome['reason']}", None,
                             user=user)
    routing.reset_routing(settings, cfg, actor, f"v{outcome['version']} promoted by rollout")
    return event
