"""The ONNX export: the binary gradient-boosting rewrite computes what the classifier does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

NUMERIC, CATEGORICAL = ["a", "b"], ["c"]


def _fitted(estimator, labels: str):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from pipelines.model.onnx_model import to_native_frame

    rng = np.random.default_rng(0)
    n = 4000
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                       "c": rng.choice(["x", "y", "z"], n)})
    df.loc[::17, "a"] = np.nan  # the imputer's path too
    y = (df["a"].fillna(0) + (df["c"] == "x") + rng.normal(size=n)) > 0.5
    y = y.astype(int) if labels == "int" else np.where(y, "late", "on_time")
    pipe = make_pipeline(ColumnTransformer([("n", SimpleImputer(), NUMERIC),
                                            ("c", OneHotEncoder(handle_unknown="ignore"),
                                             CATEGORICAL)]), estimator)
    x = to_native_frame(df, NUMERIC, CATEGORICAL)
    pipe.fit(x, y)
    return pipe, x


def _run(model_bytes: bytes, x: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    from pipelines.model.onnx_model import feeds

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    label, proba = session.run(None, feeds(x, NUMERIC, CATEGORICAL))
    return np.asarray(label).ravel(), np.asarray(proba)


def _classifier_export(pipe) -> bytes:
    """skl2onnx's graph as it comes, without the rewrite."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [(c, FloatTensorType([None, 1])) for c in NUMERIC]
    inputs += [(c, StringTensorType([None, 1])) for c in CATEGORICAL]
    return convert_sklearn(pipe, name="model", initial_types=inputs,
                           target_opset={"": 17, "ai.onnx.ml": 3},
                           options={id(pipe): {"zipmap": False}}).SerializeToString()


@pytest.mark.parametrize("labels", ["int", "str"])
@pytest.mark.parametrize("n_estimators,max_depth", [(40, 3), (1, 1)])
def test_binary_gradient_boosting_runs_as_regressor_with_the_same_outputs(labels, n_estimators,
                                                                         max_depth):
    import onnx
    from sklearn.ensemble import GradientBoostingClassifier

    from pipelines.model.onnx_model import export

    pipe, x = _fitted(GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth,
                                                 random_state=0), labels)
    rewritten = export(pipe, NUMERIC, CATEGORICAL)
    ops = [n.op_type for n in onnx.load_from_string(rewritten).graph.node]
    assert "TreeEnsembleRegressor" in ops and "TreeEnsembleClassifier" not in ops
    assert export(pipe, NUMERIC, CATEGORICAL) == rewritten  # deterministic: same sha256

    label, proba = _run(rewritten, x)
    label_cls, proba_cls = _run(_classifier_export(pipe), x)
    native = pipe.predict_proba(x)
    assert proba.dtype == proba_cls.dtype == np.float32 and proba.shape == (len(x), 2)
    assert np.abs(proba - proba_cls).max() <= 2e-7  # float32 rounding of the sigmoid only
    assert np.abs(proba[:, 1] - native[:, 1]).max() <= 1e-6
    assert np.abs(proba.sum(axis=1) - 1).max() <= 1e-6
    assert label.dtype == label_cls.dtype
    np.testing.assert_array_equal(label, label_cls)
    np.testing.assert_array_equal(label, pipe.predict(x))


def test_other_classifiers_are_exported_unchanged():
    import onnx
    from sklearn.ensemble import RandomForestClassifier

    from pipelines.model.onnx_model import export

    pipe, _ = _fitted(RandomForestClassifier(n_estimators=5, random_state=0), "int")
    ours, theirs = (onnx.load_from_string(b) for b in (export(pipe, NUMERIC, CATEGORICAL),
                                                       _classifier_export(pipe)))
    # the same opset imports, in sorted order (skl2onnx's order follows the hash seed) ...
    opsets = [(o.domain, o.version) for o in ours.opset_import]
    assert opsets == sorted(opsets) == sorted((o.domain, o.version) for o in theirs.opset_import)
    for model in (ours, theirs):
        del model.opset_import[:]
    assert ours == theirs  # ... and everything else as skl2onnx made it


EXPORT_SHA = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from sklearn.ensemble import GradientBoostingClassifier
from tests.unit.test_onnx_model import NUMERIC, CATEGORICAL, _fitted
from pipelines.model.onnx_model import export
pipe, _ = _fitted(GradientBoostingClassifier(n_estimators=5, random_state=0), "int")
print(hashlib.sha256(export(pipe, NUMERIC, CATEGORICAL)).hexdigest())
"""


def test_the_same_model_exports_to_the_same_bytes_in_any_process():
    """The sha256 names the model (registry tag, lineage, scoring's check): it must not depend
    on the process's string-hash seed (skl2onnx's opset imports come from a set; seeds 1 and 3
    gave two orders, two sha256s, before the export sorted them)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    shas = set()
    for seed in ("1", "3"):
        out = subprocess.run([sys.executable, "-c", EXPORT_SHA, repo], capture_output=True,
                             text=True, timeout=120, cwd=repo,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.returncode == 0, out.stderr[-2000:]
        shas.add(out.stdout.strip())
    assert len(shas) == 1, shas
