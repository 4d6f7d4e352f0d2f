"""TreeSHAP over the ONNX file's own trees (issue 20, per-row contributions in batch scoring):
equal to `shap.TreeExplainer` on the fitted scikit-learn estimator, adding up to the ONNX
model's own output, for the project's pipeline (imputer + one-hot + trees) on small data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from support import with_params
from test_explain import _fitted

from pipelines.core.config import load_config
from pipelines.core.settings import REPO_ROOT
from pipelines.model import tree_shap
from pipelines.model.explain import contributions
from pipelines.model.onnx_model import export, feeds, to_native_frame
from pipelines.model.tree_shap import (
    ADDITIVITY_TOLERANCE,
    METADATA_KEY,
    ExplainingScorer,
)
from pipelines.scoring.parts import contributions_table

NUMERIC, CATEGORICAL = ["a", "b", "noise"], ["g"]
SHAP_TOLERANCE = 1e-6  # vs shap on the estimator: the ONNX trees hold float32 leaf values


@pytest.mark.parametrize("estimator, params, space", [
    ("sklearn.ensemble.GradientBoostingClassifier",  # the project's estimator, subsampled
     {"n_estimators": 40, "max_depth": 3, "subsample": 0.8, "random_state": 0}, "log-odds"),
    ("sklearn.ensemble.GradientBoostingClassifier",  # deep: a feature split again on a path
     {"n_estimators": 10, "max_depth": 7, "random_state": 0}, "log-odds"),
    ("sklearn.ensemble.RandomForestClassifier",
     {"n_estimators": 15, "max_depth": 5, "random_state": 0}, "probability"),
])
@pytest.mark.parametrize("tables", [True, False], ids=["tabulated", "per-row"])
def test_onnx_tree_shap_equals_shap_and_adds_up_to_the_onnx_output(estimator, params, space,
                                                                   tables, monkeypatch):
    if not tables:  # every leaf computed per row, as leaves with many path features are,
        monkeypatch.setattr(tree_shap, "TABLE_MAX_FEATURES", 0)
        # and in many passes of a few rows and leaves each
        monkeypatch.setattr(tree_shap, "ROWS_PER_PASS", 64)
        monkeypatch.setattr(tree_shap, "WORK_ELEMENTS", 64 * 10)
    pipe, x = _fitted(estimator, params)
    x = x.head(400)
    scorer = ExplainingScorer(export(pipe, NUMERIC, CATEGORICAL), NUMERIC, CATEGORICAL)
    frame = to_native_frame(x, NUMERIC, CATEGORICAL)
    probs, raw, values = scorer.explain(feeds(frame, NUMERIC, CATEGORICAL))
    assert scorer.shap.space == space and scorer.shap.inputs == ["a", "b", "noise", "g"]
    # additivity against the ONNX model's own output (its log-odds score, or probability)
    assert np.max(np.abs(values.sum(axis=1) + scorer.shap.base_value - raw)) <= ADDITIVITY_TOLERANCE
    if space == "log-odds":
        assert np.allclose(1 / (1 + np.exp(-raw)), probs, atol=1e-6)
    # the probabilities are the plain scorer's, bit for bit
    assert np.array_equal(probs, scorer.predict_proba(frame))
    # and the values are shap's (TreeExplainer, path-dependent, on the scikit-learn estimator)
    reference = contributions(pipe, x, NUMERIC, CATEGORICAL)
    assert reference["space"] == space and reference["inputs"] == scorer.shap.inputs
    assert np.max(np.abs(values - reference["values"])) <= SHAP_TOLERANCE
    assert abs(scorer.shap.base_value - reference["base_value"]) <= SHAP_TOLERANCE


def test_a_model_without_trees_or_without_recorded_covers_cannot_be_explained():
    import onnx

    pipe, _ = _fitted("sklearn.linear_model.LogisticRegression", {})
    with pytest.raises(ValueError, match="no tree-ensemble operator"):
        ExplainingScorer(export(pipe, NUMERIC, CATEGORICAL), NUMERIC, CATEGORICAL)
    pipe, _ = _fitted("sklearn.ensemble.GradientBoostingClassifier", {"n_estimators": 5})
    model = onnx.load_from_string(export(pipe, NUMERIC, CATEGORICAL))
    assert [p.key for p in model.metadata_props] == [METADATA_KEY]
    del model.metadata_props[:]  # e.g. a version exported before covers were recorded
    with pytest.raises(ValueError, match="no recorded node covers"):
        ExplainingScorer(model.SerializeToString(), NUMERIC, CATEGORICAL)


def test_contributions_table_keeps_the_top_k_by_magnitude_and_the_rest():
    values = np.array([[0.1, -0.5, 0.2, 0.0], [0.3, 0.3, -0.01, 1.0]])
    t = contributions_table(pa.array(["r1", "r2"]), values, ["a", "b", "c", "d"], -1.5, 2)
    df = t.to_pandas()
    assert df["top1_feature"].tolist() == ["b", "d"] and df["top2_feature"].tolist() == ["c", "a"]
    assert df["top1_shap"].tolist() == [-0.5, 1.0] and df["top2_shap"].tolist() == [0.2, 0.3]
    total = df[["top1_shap", "top2_shap", "rest_shap", "base_value"]].sum(axis=1)
    assert np.allclose(total, values.sum(axis=1) - 1.5)
    assert df["row_key"].tolist() == ["r1", "r2"]


@pytest.mark.parametrize("bad", [-1, "three", 1.5])
def test_a_bad_explain_top_k_names_the_setting(bad):
    cfg = load_config(REPO_ROOT / "params.yaml")
    assert cfg.scoring.explain_top_k == 0  # off as shipped
    with pytest.raises(ValidationError, match=r"scoring\.explain_top_k"):
        with_params(cfg, scoring__explain_top_k=bad)
