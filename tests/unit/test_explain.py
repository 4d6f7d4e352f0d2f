"""SHAP explanations (issue 20): per-row contributions plus the base value add up to the
model's output, in the space the summary states, for the project's pipeline (imputer + one-hot
encoder + estimator) on small in-memory data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support import with_params

from pipelines.core.config import ExplainConfig, load_config
from pipelines.core.settings import REPO_ROOT
from pipelines.model.explain import (
    ADDITIVITY_TOLERANCE,
    contributions,
    global_importance,
)
from pipelines.model.training import make_pipeline


def _data(n: int = 1500, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                      "noise": rng.normal(size=n),
                      "g": rng.choice(["p", "q", "r"], n)})
    x.loc[rng.random(n) < 0.05, "b"] = np.nan  # the imputer is part of what is explained
    logit = 1.5 * x["a"] - np.nan_to_num(x["b"]) + np.where(x["g"] == "r", 1.0, 0.0)
    return x, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)


def _fitted(estimator: str, params: dict):
    cfg = with_params(load_config(REPO_ROOT / "params.yaml"),
                      training__estimator={"class": estimator, "params": params})
    x, y = _data()
    pipe = make_pipeline(cfg, ["a", "b", "noise"], ["g"])
    return pipe.fit(x, y), x


def test_gradient_boosting_contributions_add_up_to_the_log_odds():
    pipe, x = _fitted("sklearn.ensemble.GradientBoostingClassifier",
                      {"n_estimators": 40, "max_depth": 3, "subsample": 0.8, "random_state": 0})
    c = contributions(pipe, x.head(300), ["a", "b", "noise"], ["g"])
    assert c["space"] == "log-odds" and c["inputs"] == ["a", "b", "noise", "g"]
    total = c["values"].sum(axis=1) + c["base_value"]
    log_odds = pipe.decision_function(x.head(300))
    assert np.max(np.abs(total - log_odds)) <= ADDITIVITY_TOLERANCE  # stated: 1e-6, log-odds
    # and through the sigmoid, the probability the model gives
    assert np.allclose(1 / (1 + np.exp(-total)), pipe.predict_proba(x.head(300))[:, 1],
                       atol=ADDITIVITY_TOLERANCE)
    # the one-hot columns of the categorical are summed into one contribution per row
    assert c["values"].shape == (300, 4)


def test_forest_contributions_add_up_to_the_probability():
    pipe, x = _fitted("sklearn.ensemble.RandomForestClassifier",
                      {"n_estimators": 20, "max_depth": 4, "random_state": 0})
    c = contributions(pipe, x.head(200), ["a", "b", "noise"], ["g"])
    assert c["space"] == "probability"
    total = c["values"].sum(axis=1) + c["base_value"]
    assert np.max(np.abs(total - pipe.predict_proba(x.head(200))[:, 1])) <= ADDITIVITY_TOLERANCE


def test_global_importance_ranks_the_signal_above_the_noise_and_plots():
    pipe, x = _fitted("sklearn.ensemble.GradientBoostingClassifier",
                      {"n_estimators": 40, "max_depth": 3, "random_state": 0})
    summary, png = global_importance(ExplainConfig(sample_rows=400, top=3), pipe, x,
                                     ["a", "b", "noise"], ["g"])
    ranked = [r["feature"] for r in summary["importance"]]
    assert ranked[-1] == "noise" and set(ranked[:2]) == {"a", "b"}
    assert summary["sample_rows"] == 400 and summary["space"] == "log-odds"
    assert summary["additivity_max_abs_error"] <= summary["additivity_tolerance"]
    assert png[:4] == b"\x89PNG"


def test_a_model_shap_cannot_explain_fails_loudly():
    pipe, x = _fitted("sklearn.linear_model.LogisticRegression", {})
    with pytest.raises(ValueError, match="governance.explain: .*LogisticRegression.*enabled: false"):
        contributions(pipe, x.head(50), ["a", "b", "noise"], ["g"])


def test_top_contributions_are_each_rows_largest_in_absolute_value():
    import pyarrow as pa

    from pipelines.scoring.parts import contributions_table  # what batch scoring writes

    pipe, x = _fitted("sklearn.ensemble.GradientBoostingClassifier",
                      {"n_estimators": 40, "max_depth": 3, "random_state": 0})
    c = contributions(pipe, x.head(100), ["a", "b", "noise"], ["g"])
    top = contributions_table(pa.array([str(i) for i in range(100)]), c["values"], c["inputs"],
                              c["base_value"], 2).to_pandas()
    assert list(top.columns) == ["row_key", "top1_feature", "top1_shap", "top2_feature",
                                 "top2_shap", "rest_shap", "base_value"]
    for i in range(100):
        row = dict(zip(c["inputs"], c["values"][i], strict=True))
        ranked = sorted(row, key=lambda f: -abs(row[f]))
        assert [top.at[i, "top1_feature"], top.at[i, "top2_feature"]] == ranked[:2]
        assert top.at[i, "top1_shap"] == row[ranked[0]]
