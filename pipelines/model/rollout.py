"""Judging a rollout step: per-variant evidence from the prediction log and the server's
failure counts, the SLO checks of `rollout.slo`, and the A/B test of live quality.

Everything here is pure (arrays and frames in, a typed verdict out), so the `rollout` DAG and
the unit tests call the same functions; the DAG gathers the inputs (`rollout_run`).

The A/B test compares the variants' Brier scores (`metrics.brier_terms`, the per-row terms
of the one Brier implementation) on the rows whose outcomes are known: the difference of the
means (challenger - champion, lower is better) with Welch's standard error, a two-sided z
test and its confidence interval. A rollout looks at the data once per step; to keep the
false-positive rate at `rollout.ab.alpha` over all looks, each look tests at
alpha / `rollout.ab.max_looks` (Bonferroni: conservative, and simple to check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from pipelines.core.config import RolloutSLO
from pipelines.model.metrics import brier_terms

OK_SHADOW, FAILED_SHADOW = "ok", ("error", "timeout")


class ABResult(TypedDict):
    metric: str
    n_champion: int
    n_challenger: int
    diff: float | None  # Brier(challenger) - Brier(champion): negative = challenger better
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    alpha: float  # the level this look was tested at
    significant: bool


class Check(TypedDict):
    name: str
    variant: str
    observed: float | None
    limit: float
    passed: bool | None  # None: too little evidence to judge


class StepVerdict(TypedDict):
    step: str
    checks: list[Check]
    ab: ABResult | None
    breached: list[str]  # names of failed checks ("insufficient evidence" included)
    passed: bool


@dataclass(frozen=True)
class Evidence:
    """What one variant showed during a step."""
    variant: str
    answered: int = 0  # requests it answered (prediction log)
    failed: int = 0  # requests it failed (the server's failure counter)
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # one per request
    shadow_abs_diff: np.ndarray = field(default_factory=lambda: np.zeros(0))  # as the mirror
    shadow_label_disagreements: int = 0
    shadow_requests: int = 0  # mirrored requests it was asked to score
    shadow_failed: int = 0  # of those, error or timeout
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))  # labelled rows it answered
    p: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def requests(self) -> int:
        return self.answered + self.failed


def evidence(records: pd.DataFrame, failed: dict[str, int], label: str | None,
             threshold: float) -> dict[str, Evidence]:
    """Per variant, from prediction-log records (`scoring.table.log_records`, limited to the
    step) and failed requests per variant; `label`: the column of known outcomes joined to the
    records (None: no outcomes yet; a row key served more than once is one labelled row)."""
    out: dict[str, Evidence] = {}
    variants = set(records["variant"].dropna()) | set(failed) | set(
        records.get("shadow_variant", pd.Series(dtype=object)).dropna())
    for v in sorted(variants):
        mine = records[records["variant"] == v]
        per_request = mine.drop_duplicates("request_id")
        shadow = records[records.get("shadow_variant") == v] if "shadow_variant" in records \
            else records.iloc[0:0]
        shadow_requests = shadow.drop_duplicates("request_id")
        ok = shadow[shadow["shadow_status"] == OK_SHADOW]
        diff = np.abs(ok["shadow_probability"].to_numpy(float) - ok["probability"].to_numpy(float))
        disagree = int(((ok["shadow_probability"] >= threshold)
                        != (ok["probability"] >= threshold)).sum())
        known = (mine[mine[label].notna()].drop_duplicates("row_key", keep="last")
                 if label and label in mine else mine.iloc[0:0])  # a row key counts once
        out[v] = Evidence(
            variant=v, answered=len(per_request), failed=int(failed.get(v, 0)),
            latency_ms=per_request["latency_ms"].to_numpy(float), shadow_abs_diff=diff,
            shadow_label_disagreements=disagree, shadow_requests=len(shadow_requests),
            shadow_failed=int(shadow_requests["shadow_status"].isin(FAILED_SHADOW).sum()),
            y=known[label].to_numpy(int) if label else np.zeros(0),
            p=known["probability"].to_numpy(float))
    return out


def ab_test(champion: Evidence, challenger: Evidence, alpha: float) -> ABResult:
    """Welch z test of the variants' mean Brier terms, and the (1 - alpha) interval."""
    from scipy.stats import norm

    a, b = brier_terms(champion.y, champion.p), brier_terms(challenger.y, challenger.p)
    out: ABResult = {"metric": "brier", "n_champion": int(a.size), "n_challenger": int(b.size),
                     "diff": None, "ci_low": None, "ci_high": None, "p_value": None,
                     "alpha": alpha, "significant": False}
    if a.size < 2 or b.size < 2:
        return out
    diff = float(b.mean() - a.mean())
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    z_crit = float(norm.ppf(1 - alpha / 2))
    p_value = 1.0 if se == 0 else float(2 * norm.sf(abs(diff) / se))
    out.update(diff=diff, ci_low=diff - z_crit * se, ci_high=diff + z_crit * se,
               p_value=p_value, significant=se > 0 and p_value < alpha)
    return out


def _check(name: str, variant: str, observed: float | None, limit: float, enough: bool
           ) -> Check:
    judged = enough and observed is not None
    return {"name": name, "variant": variant, "observed": observed, "limit": limit,
            "passed": (observed <= limit) if judged else None}


def judge_step(step: str, slo: RolloutSLO, ev: dict[str, Evidence], champion: str,
               challenger: str, served_share: float, ab_alpha: float) -> StepVerdict:
    """The SLO checks of the challenger in one step, and the A/B test of live quality.

    Served share > 0: the challenger must have answered `slo.min_requests` requests (else
    "insufficient evidence": a rollout never advances on no evidence); its error rate and
    p99 latency are judged. Mirrored requests: its shadow failure rate, mean |dp| and label
    disagreement. Outcomes known for `min_requests` rows of both variants: a breach when the
    challenger is significantly worse, the lower bound of the A/B interval of the Brier
    difference above `slo.max_brier_increase` (too few labels is no breach).
    """
    mine = ev.get(challenger, Evidence(challenger))
    base = ev.get(champion, Evidence(champion))
    checks: list[Check] = []
    breached: list[str] = []
    if served_share > 0:
        enough = mine.requests >= slo.min_requests
        if not enough:
            breached.append(f"insufficient evidence: {mine.requests} challenger requests, "
                            f"{slo.min_requests} needed")
        checks.append(_check("error_rate", challenger, mine.failed / mine.requests
                             if mine.requests else None, slo.max_error_rate, enough))
        p99 = float(np.quantile(mine.latency_ms, 0.99)) if mine.latency_ms.size else None
        checks.append(_check("p99_latency_ms", challenger, p99, slo.max_p99_latency_ms,
                             enough))
    if mine.shadow_requests or served_share == 0:
        enough = mine.shadow_requests >= slo.min_requests
        if served_share == 0 and not enough:
            breached.append(f"insufficient evidence: {mine.shadow_requests} mirrored "
                            f"requests, {slo.min_requests} needed")
        scored = mine.shadow_abs_diff.size
        checks.append(_check("shadow_error_rate", challenger, mine.shadow_failed /
                             mine.shadow_requests if mine.shadow_requests else None,
                             slo.max_error_rate, enough))
        checks.append(_check("shadow_mean_abs_diff", challenger, float(
            mine.shadow_abs_diff.mean()) if scored else None, slo.max_mean_abs_diff, enough))
        checks.append(_check("shadow_label_disagreement", challenger,
                             mine.shadow_label_disagreements / scored if scored else None,
                             slo.max_label_disagreement, enough))
    ab = None
    if base.y.size >= slo.min_requests and mine.y.size >= slo.min_requests:
        ab = ab_test(base, mine, ab_alpha)
        checks.append(_check("brier_increase", challenger, ab["ci_low"],
                             slo.max_brier_increase, True))
    breached += [c["name"] for c in checks if c["passed"] is False]
    return {"step": step, "checks": checks, "ab": ab, "breached": breached,
            "passed": not breached}


def summary(verdict: StepVerdict) -> dict[str, Any]:
    """A verdict in a few words for the promotion history (at most 500 characters there)."""
    failed = [c for c in verdict["checks"] if c["passed"] is False]
    return {"step": verdict["step"], "passed": verdict["passed"],
            "breached": [f"{c['name']} {c['observed']:.4g} > {c['limit']:.4g}" for c in failed]
            or verdict["breached"]}


def next_move(mode: str, verdict: StepVerdict) -> tuple[str, str]:
    """What a rollout does after a judged step: ("continue" | "promote" | "roll_back", why).

    A breach rolls back (whatever the mode); an A/B look that is significant stops the
    rollout: promote when the challenger's Brier is lower, roll back when it is higher.
    """
    if not verdict["passed"]:
        return "roll_back", "; ".join(summary(verdict)["breached"])
    ab = verdict["ab"]
    if mode == "ab" and ab is not None and ab["significant"] and ab["diff"] is not None:
        if ab["diff"] < 0:
            return "promote", f"A/B significant at {verdict['step']}: Brier {ab['diff']:+.4f}"
        return "roll_back", f"A/B significant at {verdict['step']}: challenger worse, Brier " \
                            f"{ab['diff']:+.4f}"
    return "continue", ""


def final_outcome(mode: str) -> tuple[str, str]:
    """The outcome of a rollout whose every step passed without stopping it."""
    return {"canary": ("promote", "every step passed"),
            "shadow": ("observed", "shadow observed"),
            "ab": ("inconclusive", "A/B budget spent without a significant difference")}[mode]
