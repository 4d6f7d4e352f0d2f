"""Judging rollout steps (`pipelines.model.rollout`) on synthetic prediction-log records with a
known truth: healthy steps pass; an injected error rate, latency or shadow disagreement is
named; no evidence never passes; the A/B test finds a known effect and, with none, keeps its
false-positive rate at the configured level over repeated runs and repeated looks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import ABConfig, RolloutSLO
from pipelines.model.rollout import Evidence, ab_test, evidence, judge_step

SLO = RolloutSLO(min_requests=50, max_error_rate=0.02, max_p99_latency_ms=100.0,
                 max_mean_abs_diff=0.1, max_label_disagreement=0.1, max_brier_increase=0.01)


def records(n: int, share: float, seed: int = 0, latency: float = 10.0,
            shadow_noise: float | None = None, rows: int = 2) -> pd.DataFrame:
    """`n` requests of `rows` rows, a `share` answered by the challenger; champion rows
    mirrored to the challenger with |dp| ~ shadow_noise (None: no mirror); outcomes drawn
    from the probabilities (both models calibrated)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        variant = "challenger" if rng.random() < share else "champion"
        p = rng.uniform(0.05, 0.95, rows)
        mirrored = shadow_noise is not None and variant == "champion"
        sp = np.clip(p + rng.normal(0, shadow_noise or 0, rows), 0, 1) if mirrored else None
        out.append(pd.DataFrame({
            "request_id": f"r{i}", "row_key": [f"k{i}-{j}" for j in range(rows)],
            "variant": variant, "probability": p,
            "latency_ms": rng.gamma(4, latency / 4) if variant == "challenger" else 8.0,
            "shadow_variant": "challenger" if mirrored else None,
            "shadow_probability": sp if mirrored else np.nan,
            "shadow_status": "ok" if mirrored else None,
            "label": (rng.random(rows) < p).astype(float)}))
    return pd.concat(out, ignore_index=True)


def test_a_healthy_canary_step_passes_with_every_check_judged():
    log = records(600, 0.25, shadow_noise=0.02)
    ev = evidence(log, {"challenger": 1}, "label", 0.5)
    assert ev["challenger"].answered == (log.drop_duplicates("request_id")["variant"]
                                         == "challenger").sum()
    verdict = judge_step("25", SLO, ev, "champion", "challenger", 0.25, 0.01)
    names = {c["name"] for c in verdict["checks"]}
    assert names == {"error_rate", "p99_latency_ms", "shadow_error_rate",
                     "shadow_mean_abs_diff", "shadow_label_disagreement",
                     "brier_increase"}
    assert verdict["passed"] and verdict["breached"] == []
    assert all(c["passed"] for c in verdict["checks"]), verdict["checks"]


def test_a_significantly_worse_challenger_breaches_live_quality():
    log = records(2000, 0.5, seed=4)
    worse = log["variant"] == "challenger"
    log.loc[worse, "probability"] = (1 - log.loc[worse, "probability"]).clip(0.05, 0.95)
    verdict = judge_step("50", SLO, evidence(log, {}, "label", 0.5), "champion", "challenger",
                         0.5, 0.01)
    assert verdict["breached"] == ["brier_increase"] and verdict["ab"]["significant"]
    assert verdict["ab"]["ci_low"] > SLO.max_brier_increase


@pytest.mark.parametrize("failed, latency, noise, breach", [
    (20, 10.0, 0.02, "error_rate"),  # ~13% of the challenger's requests fail
    (0, 200.0, 0.02, "p99_latency_ms"),
    (0, 10.0, 0.4, "shadow_mean_abs_diff"),
])
def test_an_injected_breach_fails_the_step_naming_the_slo(failed, latency, noise, breach):
    log = records(600, 0.25, seed=1, latency=latency, shadow_noise=noise)
    verdict = judge_step("25", SLO, evidence(log, {"challenger": failed}, None, 0.5),
                         "champion", "challenger", 0.25, 0.01)
    assert not verdict["passed"] and breach in verdict["breached"]


def test_a_shadow_step_judges_disagreement_and_failures_of_the_shadow():
    log = records(300, 0.0, seed=2, shadow_noise=0.01)
    ok = judge_step("shadow", SLO, evidence(log, {}, None, 0.5), "champion", "challenger",
                    0.0, 0.01)
    assert ok["passed"] and "error_rate" not in {c["name"] for c in ok["checks"]}
    log.loc[log["request_id"].isin([f"r{i}" for i in range(40)]), "shadow_status"] = "timeout"
    bad = judge_step("shadow", SLO, evidence(log, {}, None, 0.5), "champion", "challenger",
                     0.0, 0.01)
    assert bad["breached"] == ["shadow_error_rate"]


def test_no_evidence_never_passes():
    log = records(40, 0.25, seed=3)
    verdict = judge_step("25", SLO, evidence(log, {}, None, 0.5), "champion", "challenger",
                         0.25, 0.01)
    assert not verdict["passed"] and verdict["breached"][0].startswith("insufficient evidence")
    assert all(c["passed"] is None for c in verdict["checks"])


def _arm(rng, n: int, bias: float) -> Evidence:
    """n labelled rows of a model whose probabilities are off the truth by `bias`."""
    truth = rng.uniform(0.1, 0.9, n)
    y = (rng.random(n) < truth).astype(int)
    return Evidence("arm", y=y, p=np.clip(truth + bias, 0.01, 0.99))


def test_the_ab_test_finds_a_known_effect_with_its_interval():
    rng = np.random.default_rng(7)
    found = 0
    for _ in range(200):
        result = ab_test(_arm(rng, 3000, 0.0), _arm(rng, 3000, 0.15), 0.05)
        found += result["significant"] and result["diff"] > 0
        assert result["ci_low"] <= result["diff"] <= result["ci_high"]
    assert found / 200 >= 0.9  # the miscalibrated challenger is worse: its Brier is higher


def test_without_an_effect_the_false_positive_rate_stays_at_alpha():
    """Repeated A/B rollouts with identical models: one look at alpha rejects about alpha of
    the time; a rollout looking `max_looks` times at alpha / max_looks (what the DAG does) stops
    wrongly at most alpha of the time (binomial bounds for 1,000 runs)."""
    ab = ABConfig(alpha=0.05, max_looks=4)
    rng = np.random.default_rng(11)
    single = sequential = 0
    runs = 1000
    for _ in range(runs):
        champion, challenger = _arm(rng, 2000, 0.0), _arm(rng, 2000, 0.0)
        single += ab_test(champion, challenger, ab.alpha)["significant"]
        stopped = False
        for look in range(1, ab.max_looks + 1):  # cumulative data: 500, 1000, ... rows per arm
            n = look * 500
            a = Evidence("a", y=champion.y[:n], p=champion.p[:n])
            b = Evidence("b", y=challenger.y[:n], p=challenger.p[:n])
            stopped = stopped or ab_test(a, b, ab.alpha / ab.max_looks)["significant"]
        sequential += stopped
    assert 0.03 <= single / runs <= 0.07
    assert sequential / runs <= ab.alpha + 0.015


def _ab_rollout(rng, bias_champion: float, bias_challenger: float, ab: ABConfig,
                rows_per_look: int = 1500) -> tuple[str, int]:
    """An A/B rollout on simulated traffic, as `rollout_run` drives it: each look judges the
    cumulative rows at alpha / max_looks; returns (outcome, looks taken)."""
    from pipelines.model.rollout import final_outcome, next_move

    slo = RolloutSLO(min_requests=50, max_brier_increase=1.0)  # only the A/B decides here
    champion, challenger = (_arm(rng, rows_per_look * ab.max_looks, bias_champion),
                            _arm(rng, rows_per_look * ab.max_looks, bias_challenger))
    for look in range(1, ab.max_looks + 1):
        n = look * rows_per_look
        ev = {"champion": Evidence("champion", answered=n, latency_ms=np.full(n, 5.0),
                                   y=champion.y[:n], p=champion.p[:n]),
              "challenger": Evidence("challenger", answered=n, latency_ms=np.full(n, 5.0),
                                     y=challenger.y[:n], p=challenger.p[:n])}
        verdict = judge_step(f"ab look {look}", SLO.model_copy(update={
            "max_brier_increase": slo.max_brier_increase}), ev, "champion", "challenger",
            ab.weight / 100, ab.alpha / ab.max_looks)
        move, _ = next_move("ab", verdict)
        if move != "continue":
            return move, look
    return final_outcome("ab")[0], ab.max_looks


def test_an_ab_rollout_stops_at_a_known_effect_and_runs_its_budget_without_one():
    ab = ABConfig(alpha=0.05, max_looks=4)
    rng = np.random.default_rng(5)
    better = [_ab_rollout(rng, 0.15, 0.0, ab) for _ in range(20)]
    assert sum(o == "promote" for o, _ in better) >= 18
    assert any(looks < ab.max_looks for _, looks in better)  # it stops early
    worse = [_ab_rollout(rng, 0.0, 0.15, ab) for _ in range(20)]
    assert sum(o == "roll_back" for o, _ in worse) >= 18
    same = [_ab_rollout(rng, 0.0, 0.0, ab) for _ in range(100)]
    wrong = sum(o != "inconclusive" for o, _ in same)
    assert wrong <= 12  # at most alpha of the runs, within binomial noise for 100 runs
    assert all(looks == 4 for o, looks in same if o == "inconclusive")


def test_a_breach_rolls_back_whatever_the_mode():
    from pipelines.model.rollout import final_outcome, next_move

    log = records(600, 0.25, seed=1, latency=200.0)
    verdict = judge_step("25", SLO, evidence(log, {}, None, 0.5), "champion", "challenger",
                         0.25, 0.01)
    for mode in ("canary", "ab", "shadow"):
        move, why = next_move(mode, verdict)
        assert move == "roll_back" and why.startswith("p99_latency_ms")
    assert final_outcome("canary")[0] == "promote" and final_outcome("shadow")[0] == "observed"


@pytest.mark.parametrize("outcome", ["rolled_back", "inconclusive", "observed"])
def test_finish_promotes_nothing_and_only_a_roll_back_raises(outcome):
    """What `finish_rollout` shows: a roll-back raises (the task fails, naming the version,
    step and breach), an inconclusive A/B or a shadow rollout returns nothing (skipped). None of
    them reaches the registry (no settings needed)."""
    from pipelines.core.config import load_config
    from pipelines.model.rollout_run import RolledBack, finish

    done = {"version": "7", "mode": "canary", "outcome": outcome, "steps": [],
            "reason": "25%: error_rate 0.2 > 0.01"}
    if outcome == "rolled_back":
        with pytest.raises(RolledBack, match=r"v7 was rolled back automatically at 25%: "
                                             r"error_rate 0\.2 > 0\.01 \(champion unchanged"):
            finish(None, load_config(), done, "run-1")
    else:
        assert finish(None, load_config(), done, "run-1") is None
