"""Gates: floors, the paired bootstrap and its verdicts on synthetic scores with known truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.core.config import CompareGate, GatesConfig
from pipelines.model.gates import evaluate, paired_bootstrap, render_markdown
from pipelines.model.metrics import (
    brier,
    calibration_error,
    compute_metrics,
    pr_auc,
    roc_auc,
)

PARITY_OK = {"passed": True, "max_abs_diff": 1e-7, "tolerance": 1e-5}
PARITY_BAD = {"passed": False, "max_abs_diff": 3e-3, "tolerance": 1e-5}
CFG = GatesConfig(floors={"roc_auc": 0.6}, compare=CompareGate(n_bootstrap=200, seed=1))


def scores(n: int, signal: float, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logits = signal * (2 * y - 1) + rng.normal(0, 1, n)
    return y, 1 / (1 + np.exp(-logits))


def test_first_model_faces_floors_only():
    y, p = scores(2000, 1.0, 0)
    report = evaluate(CFG, y, p, None, PARITY_OK)
    assert report["passed"] and not report["has_champion"]
    assert [c["gate"] for c in report["checks"]] == ["floor:roc_auc", "onnx_parity"]


def test_model_below_floor_fails_and_says_why():
    y, p = scores(2000, 0.05, 0)
    report = evaluate(CFG, y, p, None, PARITY_OK)
    assert not report["passed"] and report["failed"] == ["floor:roc_auc"]


def test_onnx_disagreement_blocks_promotion():
    y, p = scores(2000, 1.0, 0)
    report = evaluate(CFG, y, p, None, PARITY_BAD)
    assert not report["passed"] and report["failed"] == ["onnx_parity"]


def test_clearly_better_challenger_passes():
    rng = np.random.default_rng(3)
    y, good = scores(3000, 1.5, 3)
    weak = np.clip(good + rng.normal(0, 0.3, len(y)), 0, 1)
    report = evaluate(CFG, y, good, weak, PARITY_OK)
    assert report["passed"], report["failed"]
    assert report["comparison"]["ci_low"] > 0


@pytest.mark.parametrize("case", ["worse", "noise"])
def test_worse_or_indistinguishable_challenger_is_not_promoted(case):
    rng = np.random.default_rng(4)
    y, champion = scores(3000, 1.5, 4)
    if case == "worse":
        challenger = np.clip(champion + rng.normal(0, 0.3, len(y)), 0, 1)
    else:  # same ranking up to a tiny jitter: the difference is inside the noise
        challenger = np.clip(champion + rng.normal(0, 1e-4, len(y)), 0, 1)
    report = evaluate(CFG, y, challenger, champion, PARITY_OK)
    assert not report["passed"]
    assert report["failed"] == ["beats_champion:roc_auc"]
    assert report["comparison"]["ci_low"] <= 0


def test_bootstrap_is_reproducible_with_its_seed():
    y, a = scores(500, 1.0, 5)
    _, b = scores(500, 0.8, 6)
    one = paired_bootstrap(y, a, b, "roc_auc", 100, 0.95, seed=9)
    two = paired_bootstrap(y, a, b, "roc_auc", 100, 0.95, seed=9)
    assert one == two and one["ci_low"] <= one["observed"] <= one["ci_high"]


def test_calibration_error_zero_for_perfect_calibration_and_large_for_bad():
    y = np.array([0, 1] * 500)
    assert calibration_error(y, np.full(1000, 0.5)) == pytest.approx(0.0)
    assert calibration_error(y, np.where(y == 1, 0.0, 1.0)) == pytest.approx(1.0)
    # two bins of 100 rows: predicted 0.15 with 10% positives, predicted 0.95 with 80% positives
    y2, p2 = np.array([1] * 10 + [0] * 90 + [1] * 80 + [0] * 20), np.array([0.15] * 100 + [0.95] * 100)
    assert calibration_error(y2, p2) == pytest.approx((0.05 * 100 + 0.15 * 100) / 200)


def test_metrics_match_their_definitions():
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, p = scores(500, 1.0, 11)
    m = compute_metrics(y, p)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["calibration_error"] == calibration_error(y, p)
    assert (m["n"], m["positive_rate"], m["mean_prediction"]) == (500, pytest.approx(y.mean()), pytest.approx(p.mean()))
    assert evaluate(CFG, y, p, None, PARITY_OK)["metrics"] == m  # the gates report these very numbers


@pytest.mark.parametrize("y", [np.ones(40), np.zeros(40), np.array([])], ids=["all-late", "none-late", "no-rows"])
def test_undefined_metrics_are_none_not_nan(y):
    """Issue 15: an AUC of one class is undefined: None (never NaN, never bare NaN in JSON)."""
    p = np.linspace(0.05, 0.95, y.size)
    m = compute_metrics(y, p)
    json.dumps(m, allow_nan=False)
    assert m["roc_auc"] is None and m["pr_auc"] is None and roc_auc(y, p) is None and pr_auc(y, p) is None
    if y.size:
        assert m["brier"] == pytest.approx(np.mean((p - y) ** 2)) and m["calibration_error"] > 0
    else:
        assert m["brier"] is None and brier(y, p) is None and m["calibration_error"] is None
        assert m["n"] == 0 and m["positive_rate"] is None


def test_better_overall_but_regressing_on_a_slice_is_not_promoted():
    rng = np.random.default_rng(8)
    y, champion = scores(6000, 1.2, 8)
    slice_ = np.where(rng.random(len(y)) < 0.1, "small", "big")
    challenger = champion.copy()
    big = slice_ == "big"
    challenger[big] = np.clip(champion[big] + 0.6 * (y[big] - 0.5), 0, 1)  # better on "big"
    small = ~big
    challenger[small] = rng.random(small.sum())  # no skill left on "small"
    cfg = GatesConfig(floors={"roc_auc": 0.6},
                      compare=CompareGate(n_bootstrap=200, seed=1),
                      slices={"columns": ["segment"], "min_size": 300, "max_drop": 0.03})
    report = evaluate(cfg, y, challenger, champion, PARITY_OK, slices={"segment": slice_})
    assert report["comparison"]["ci_low"] > 0  # better overall...
    assert report["failed"] == ["slice:segment=small"]  # ...but not on the small slice
    assert not report["passed"]


def test_slices_below_the_minimum_size_are_not_judged():
    y, p = scores(1000, 1.0, 9)
    cfg = GatesConfig(slices={"columns": ["s"], "min_size": 300, "max_drop": 0.0})
    seg = np.array(["tiny"] * 50 + ["large"] * 950)
    worse = p.copy()
    worse[:50] = 0.5
    report = evaluate(cfg, y, worse, p, PARITY_OK, slices={"s": seg})
    assert [c["gate"] for c in report["checks"] if c["gate"].startswith("slice")] == ["slice:s=large"]


def test_budgets_and_behaviour_checks():
    import pandas as pd

    from pipelines.core.config import BehaviourCheck, Budgets
    from pipelines.model.gates import behaviour_results, budget_checks

    checks = budget_checks(Budgets(max_model_mb=1, max_single_row_p99_ms=5, min_batch_rows_per_s=1e4),
                           {"model_mb": 2.0, "single_row_p99_ms": 1.0, "batch_rows_per_s": 5e4})
    assert [c["passed"] for c in checks] == [False, True, True]

    frame = pd.DataFrame({"rain": np.linspace(0, 1, 100, dtype="float32"),
                          "noise": np.zeros(100, dtype="float32")})

    def predict(f):
        return np.clip(0.2 + 0.5 * f["rain"].to_numpy(), 0, 1)

    results = behaviour_results(predict, frame, (
        BehaviourCheck(name="rain_up", kind="directional", column="rain", add=0.1, expect="increase"),
        BehaviourCheck(name="rain_down_claims_increase", kind="directional", column="rain",
                       add=-0.2, expect="increase", tolerance=0.001),
        BehaviourCheck(name="noise_invariant", kind="invariance", column="noise", set=5.0),
        BehaviourCheck(name="unknown", kind="invariance", column="nope", set=1.0),
    ))
    assert [r["passed"] for r in results] == [True, False, True, False]
    assert "not a model input" in results[3]["detail"]


# -- undefined metrics: a verdict, never a crash or a default pass -------------------------------

def test_one_class_evaluation_set_without_champion_is_rejected_with_the_reason():
    y = np.zeros(500, dtype=int)
    p = np.random.default_rng(0).random(500)
    report = evaluate(CFG, y, p, None, PARITY_OK)
    assert not report["passed"] and report["failed"] == ["floor:roc_auc"]
    check = report["checks"][0]
    assert check["value"] is None and "one class" in check["detail"]
    assert report["metrics"]["roc_auc"] is None and report["metrics"]["pr_auc"] is None
    text = json.dumps(report, allow_nan=False)  # no bare NaN can reach the report JSON
    assert "NaN" not in text


def test_one_class_evaluation_set_with_champion_is_rejected_not_an_index_error():
    y = np.ones(400, dtype=int)
    rng = np.random.default_rng(1)
    report = evaluate(CFG, y, rng.random(400), rng.random(400), PARITY_OK)
    assert not report["passed"]
    assert set(report["failed"]) == {"floor:roc_auc", "beats_champion:roc_auc"}
    compare = next(c for c in report["checks"] if c["gate"] == "beats_champion:roc_auc")
    assert compare["value"] is None and "one class" in compare["detail"]
    json.dumps(report, allow_nan=False)
    assert "undefined" in render_markdown(report, "7")


def test_bootstrap_with_no_usable_resample_gives_no_interval_and_rejects():
    y = np.array([0] * 1999 + [1])  # one positive: seed 52's three resamples all miss it
    p_new, p_old = np.random.default_rng(0).random(2000), np.random.default_rng(1).random(2000)
    out = paired_bootstrap(y, p_new, p_old, "roc_auc", 3, 0.95, seed=52)
    assert out["n_bootstrap"] == 0 and out["skipped"] == 3
    assert out["ci_low"] is None and "no bootstrap resample" in out["undefined"]
    cfg = GatesConfig(floors={}, compare=CompareGate(n_bootstrap=3, seed=52))
    report = evaluate(cfg, y, p_new, p_old, PARITY_OK)
    assert report["failed"] == ["beats_champion:roc_auc"]


# -- fairness by group (issue 20) ---------------------------------------------------------------

def _grouped(disparity: bool, seed: int = 21):
    """Scores of two large groups and one tiny one. With `disparity`, the model misses most
    positives of group "b": its positives score like negatives (a high false negative rate)."""
    rng = np.random.default_rng(seed)
    groups = np.array(["a"] * 1500 + ["b"] * 1500 + ["tiny"] * 40)
    y = rng.integers(0, 2, len(groups))
    p = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.15, len(y)), 0, 1)
    if disparity:
        hit = (groups == "b") & (y == 1)
        p[hit] = np.clip(0.3 + rng.normal(0, 0.15, hit.sum()), 0, 1)
    return y, p, groups


def _fair_cfg(**kw):
    from pipelines.core.config import FairnessGate

    return GatesConfig(floors={"roc_auc": 0.6}, fairness=FairnessGate(
        columns=("grp",), metric=kw.pop("metric", "false_negative_rate"), max_gap=0.1,
        min_size=100, n_bootstrap=40, seed=3, **kw))


def test_fairness_gate_rejects_a_model_that_misses_one_groups_positives():
    y, p, groups = _grouped(disparity=True)
    report = evaluate(_fair_cfg(), y, p, None, PARITY_OK, groups={"grp": groups})
    assert not report["passed"] and report["failed"] == ["fairness:grp"]
    check = next(c for c in report["checks"] if c["gate"] == "fairness:grp")
    (rep,) = report["fairness"]
    by = {g["group"]: g for g in rep["groups"]}
    # the evidence: the gap is b's rate minus a's, each with its interval
    assert rep["highest"] == "b" and rep["lowest"] == "a"
    assert check["value"] == pytest.approx(by["b"]["value"] - by["a"]["value"]) and check["value"] > 0.5
    assert rep["gap_ci_low"] <= rep["gap"] <= rep["gap_ci_high"] and rep["gap_ci_low"] > 0.1
    for g in ("a", "b"):
        assert by[g]["gated"] and by[g]["ci_low"] <= by[g]["value"] <= by[g]["ci_high"]
    # the tiny group is reported with its numbers, not gated
    assert not by["tiny"]["gated"] and by["tiny"]["n"] == 40 and by["tiny"]["value"] is not None
    assert "min_size 100" in by["tiny"]["reason"]
    md = render_markdown(report, "3")
    assert "## Fairness by grp" in md and "| tiny | 40 |" in md and "no: 40 rows < min_size" in md
    json.dumps(report, allow_nan=False)


def test_fairness_gate_passes_a_model_without_the_disparity():
    y, p, groups = _grouped(disparity=False)
    report = evaluate(_fair_cfg(), y, p, None, PARITY_OK, groups={"grp": groups})
    check = next(c for c in report["checks"] if c["gate"] == "fairness:grp")
    assert report["passed"], report["failed"]
    assert check["passed"] and 0 <= check["value"] <= 0.1


def test_fairness_groups_too_small_or_undefined_are_reported_not_gated():
    y, p, groups = _grouped(disparity=True)
    y = np.where(groups == "b", 0, y)  # b has no positives: its false negative rate is undefined
    report = evaluate(_fair_cfg(), y, p, None, PARITY_OK, groups={"grp": groups})
    assert not any(c["gate"].startswith("fairness") for c in report["checks"])
    (rep,) = report["fairness"]
    by = {g["group"]: g for g in rep["groups"]}
    assert not rep["gated"] and "nothing to compare" in rep["reason"]
    assert by["b"]["value"] is None and "no positive rows" in by["b"]["reason"]
    # a small group without positives: undefined (never a false negative rate of 0), not gated
    tiny_neg = evaluate(_fair_cfg(), np.where(groups == "tiny", 0, y), p, None, PARITY_OK,
                        groups={"grp": groups})["fairness"][0]["groups"]
    tiny = next(g for g in tiny_neg if g["group"] == "tiny")
    assert tiny["value"] is None and not tiny["gated"] and "undefined" in tiny["reason"]
    # the selection rate needs no positives: the same groups are gated on it
    sel = evaluate(_fair_cfg(metric="selection_rate"), y, p, None, PARITY_OK,
                   groups={"grp": groups})
    assert any(c["gate"] == "fairness:grp" for c in sel["checks"])


def test_fairness_columns_must_exist():
    from pipelines.model.evaluation import slice_values

    y, p, groups = _grouped(disparity=False)
    with pytest.raises(ValueError, match=r"gates.fairness.columns \['grp'\]"):
        evaluate(_fair_cfg(), y, p, None, PARITY_OK, groups={})
    import pandas as pd

    with pytest.raises(ValueError, match="gates.fairness.columns: column 'nope'"):
        slice_values(pd.DataFrame({"x": [1]}), ("nope",), "gates.fairness.columns")


def test_report_intervals_are_the_metrics_with_their_bootstrap():
    y, p = scores(800, 1.0, 12)
    seg = np.array(["big"] * 700 + ["small"] * 100)
    cfg = GatesConfig(compare=CompareGate(n_bootstrap=100, seed=1),
                      slices={"columns": ["s"], "min_size": 300})
    assert evaluate(cfg, y, p, None, PARITY_OK)["metric_intervals"] is None  # asked for only
    report = evaluate(cfg, y, p, None, PARITY_OK, slices={"s": seg}, intervals=100)
    for name, m in report["metric_intervals"].items():
        assert m["value"] == report["metrics"][name]  # the same function, the same number
        assert m["ci_low"] <= m["value"] <= m["ci_high"] and m["n_bootstrap"] == 100
    big, small = report["slice_metrics"]
    assert big["slice"] == "s=big" and not big["below_min_size"] and big["ci_low"] is not None
    assert big["value"] == roc_auc(y[:700], p[:700])
    assert small["below_min_size"] and small["ci_low"] is None and small["value"] is not None
    assert small["undefined"] is None
