"""Per-row top contributions written beside a batch partition (issue 20, `scoring.explain_top_k`)
through the real batch scoring path: real flights in a landing zone, Feast point-in-time
features, a model fitted on them and registered in MLflow on SQLite as training exports it,
onnxruntime, Parquet partitions.

Additivity is checked against the ONNX model's own output: each row's base value + its top-k
contributions + the rest equals the log-odds score of the ONNX graph (its tree operator's
output, which its Sigmoid turns into the probability) within `ADDITIVITY_TOLERANCE` (1e-5), and
through the sigmoid the published probability within 1e-6. The contributions are shap's
(`TreeExplainer` on the fitted scikit-learn estimator) within 1e-6.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from support import register_onnx, scoring_state

from pipelines import scoring
from pipelines.core import locations, storage
from pipelines.model.tree_shap import ADDITIVITY_TOLERANCE

DAY = date(2013, 1, 9)
TOP_K = 3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring-explain")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLOPS_STATE_URI", "MLOPS_PARAMS", "FEAST_REGISTRY_PATH", "FEAST_ONLINE_PATH",
                    "MLFLOW_TRACKING_URI"):
            mp.setenv(key, "")  # restored on exit: scoring_state points them at `root`
        yield scoring_state(root, date(2013, 1, 4), DAY, (date(2013, 1, 5), date(2013, 1, 8)),
                            {"chunk_rows": 500, "batch_rows": 200, "explain_top_k": TOP_K})


def _with_top_k(cfg, k: int):
    return cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"explain_top_k": k})})


def _files(settings, day) -> dict[str, bytes]:
    base = locations.predictions(settings, day)
    return {n: storage.read_bytes(storage.join(base, n)) for n in storage.listdir(base)
            if n != locations.MANIFEST}


def _onnx_score(settings, model: dict, frame) -> np.ndarray:
    """The ONNX graph's own log-odds score (its tree operator's output) for `frame`, from the
    registry's verified bytes by plain onnxruntime: independent of the TreeSHAP code."""
    import onnx
    import onnxruntime as ort

    from pipelines.model.onnx_model import feeds
    from pipelines.model.registry import load_onnx

    graph = onnx.load_from_string(load_onnx(settings, model["onnx_uri"], model["onnx_sha256"]))
    (trees,) = [n for n in graph.graph.node if n.op_type == "TreeEnsembleRegressor"]
    graph.graph.output.append(onnx.helper.make_tensor_value_info(trees.output[0],
                                                                 onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (score,) = session.run([trees.output[0]], feeds(frame, model["numeric"], model["categorical"]))
    return np.asarray(score, dtype=np.float64).ravel()


def test_contributions_beside_the_partition_add_up_to_the_onnx_output(env):
    from pipelines.model.explain import contributions
    from pipelines.model.onnx_model import to_native_frame

    cfg, settings = env["cfg"], env["settings"]
    published = scoring.score_interval(cfg, settings, DAY, None, "run-1")
    manifest = scoring.read_manifest(settings, DAY)
    meta = manifest["contributions"]
    assert published["files"] == 2 and meta["top_k"] == TOP_K and meta["space"] == "log-odds"
    assert len(meta["files"]) == len(manifest["files"])
    assert set(_files(settings, DAY)) == {*manifest["files"], *meta["files"]}

    preds = scoring.read_partition(settings, DAY)
    contrib = scoring.read_contributions(settings, DAY)
    assert len(preds) == manifest["output_rows"] > 800
    assert contrib["row_key"].tolist() == preds["row_key"].tolist()
    assert (contrib["base_value"] == meta["base_value"]).all()
    total = contrib[[f"top{i}_shap" for i in range(1, TOP_K + 1)]].sum(axis=1) \
        + contrib["rest_shap"] + contrib["base_value"]

    model = scoring.resolve_model(cfg, settings, DAY)
    numeric, categorical = model["numeric"], model["categorical"]
    frame = to_native_frame(preds, numeric, categorical)  # the inputs as scored, from the partition
    score = _onnx_score(settings, model, frame)
    assert np.max(np.abs(total - score)) <= ADDITIVITY_TOLERANCE  # log-odds, stated: 1e-5
    assert np.max(np.abs(1 / (1 + np.exp(-total)) - preds["probability"])) <= 1e-6
    # top first, by magnitude
    magnitudes = contrib[[f"top{i}_shap" for i in range(1, TOP_K + 1)]].abs().to_numpy()
    assert (np.diff(magnitudes, axis=1) <= 0).all()

    # the values are shap.TreeExplainer's on the fitted scikit-learn estimator
    reference = contributions(env["pipe"], frame, numeric, categorical)
    assert reference["space"] == "log-odds"
    assert abs(reference["base_value"] - meta["base_value"]) <= 1e-6
    column = {name: i for i, name in enumerate(reference["inputs"])}
    rows = np.arange(len(frame))
    named = np.zeros(len(frame))
    for i in range(1, TOP_K + 1):
        idx = contrib[f"top{i}_feature"].map(column).to_numpy()
        assert np.max(np.abs(reference["values"][rows, idx] - contrib[f"top{i}_shap"])) <= 1e-6
        named += reference["values"][rows, idx]
    assert np.max(np.abs(reference["values"].sum(axis=1) - named - contrib["rest_shap"])) <= 1e-6


def test_contributions_change_no_prediction_and_reruns_are_identical(env):
    cfg, settings = env["cfg"], env["settings"]
    scoring.score_interval(cfg, settings, DAY, None, "run-1")
    on = _files(settings, DAY)
    scoring.score_interval(cfg, settings, DAY, None, "run-2")  # a re-run: the same bytes
    assert _files(settings, DAY) == on

    scoring.score_interval(_with_top_k(cfg, 0), settings, DAY, None, "run-off")
    manifest = scoring.read_manifest(settings, DAY)
    off = _files(settings, DAY)
    assert manifest["contributions"] is None and sorted(off) == sorted(manifest["files"])
    assert off == {n: b for n, b in on.items() if n.startswith("part-")}  # same predictions
    with pytest.raises(FileNotFoundError, match="explain_top_k was 0"):
        scoring.read_contributions(settings, DAY)


def test_bad_explain_settings_fail_naming_the_setting_and_publish_nothing(env, monkeypatch):
    import onnx

    import pipelines.model.onnx_model as onnx_model

    cfg, settings = env["cfg"], env["settings"]
    scoring.score_interval(cfg, settings, DAY, None, "good")
    before = scoring.read_manifest(settings, DAY)
    n_inputs = sum(len(c) for c in env["fit"])

    with pytest.raises(ValueError, match=rf"scoring\.explain_top_k={n_inputs + 1}, but .* has "
                                         rf"{n_inputs} inputs"):
        scoring.score_interval(_with_top_k(cfg, n_inputs + 1), settings, DAY, None, "too-many")

    # parts explained under one setting are not published under another
    chunks = scoring.plan_interval(cfg, settings, DAY)
    model = scoring.resolve_model(cfg, settings, DAY)
    parts = [scoring.score_chunk(cfg, settings, DAY, c, model) for c in chunks]
    from pipelines.scoring.publish import publish

    with pytest.raises(ValueError, match=r"explain_top_k \[3\].*scoring\.explain_top_k=0"):
        publish(_with_top_k(cfg, 0), settings, DAY, chunks, parts, model, "mixed")

    # a version whose ONNX file records no covers (exported before they were recorded)
    export = onnx_model.export

    def without_covers(*args):
        model = onnx.load_from_string(export(*args))
        del model.metadata_props[:]
        return model.SerializeToString()

    monkeypatch.setattr(onnx_model, "export", without_covers)
    version = register_onnx(settings, cfg, env["pipe"], *env["fit"])
    from pipelines.scoring.run import describe_version

    pinned = {**describe_version(settings, cfg.registry.model_name, version),
              "policy": "pinned", "choice": "test"}
    with pytest.raises(ValueError, match=rf"scoring\.explain_top_k={TOP_K}: .* v{version} cannot "
                                         rf"be explained per row: .*no recorded node covers"):
        scoring.score_interval(cfg, settings, DAY, pinned, "no-covers")
    assert scoring.read_manifest(settings, DAY) == before  # nothing published by any of these
