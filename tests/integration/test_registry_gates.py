"""Training, gates and the registry on real models: MLflow on SQLite, skl2onnx, onnxruntime.

The training set is built from real flights with a few real weather features joined as of
the prediction time (pandas merge_asof), so the path from a training set on is the
production one: train_and_register -> evaluate_challenger -> decide -> promote.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from support import flights_training_set, isolated_settings, small_gates, with_params

from pipelines.core import storage
from pipelines.core.config import Config, load_config
from pipelines.model import onnx_model, promotion, registry
from pipelines.model.evaluation import evaluate_challenger
from pipelines.model.training import TrainingDataError, train_and_register

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_cfg() -> Config:
    return small_gates(load_config(REPO / "params.yaml"))


@pytest.fixture(scope="module")
def training_set(tmp_path_factory, base_cfg) -> dict:
    """Three weeks of January flights with weather as of the prediction time."""
    return flights_training_set(tmp_path_factory.mktemp("ts"), base_cfg)


@pytest.fixture()
def settings(tmp_path):
    return isolated_settings(tmp_path)


def _train(cfg, settings, training_set, actor="test"):
    trained = train_and_register(cfg, settings, training_set, {"run_id": actor, "trigger": "manual"})
    report = evaluate_challenger(cfg, settings, trained["version"])
    decision = promotion.decide(report, force=False, approval="auto")
    promotion.record_decision(settings, cfg.registry.model_name, report, decision, actor, "test")
    if decision == promotion.PROMOTE:
        registry.promote(settings, cfg.registry.model_name, report["version"], actor, "test",
                         report["report_uri"])
    return trained, report, decision


def _shift_one_leaf(export):
    """`export`, then the first leaf weight of the tree ensemble moved by 0.5 (log-odds)."""
    def shifted(*args, **kwargs) -> bytes:
        import onnx
        from onnx import helper, numpy_helper

        model = onnx.load_from_string(export(*args, **kwargs))
        node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
        for attr in node.attribute:
            if attr.name in ("target_weights", "class_weights"):
                attr.floats[0] += 0.5
                break
            if attr.name in ("target_weights_as_tensor", "class_weights_as_tensor"):
                values = numpy_helper.to_array(attr.t).copy()
                values.flat[0] += 0.5
                attr.t.CopyFrom(numpy_helper.from_array(values, attr.t.name))
                break
        else:
            raise AssertionError(f"no leaf weights in {node.op_type}: {helper.printable_node(node)}")
        return model.SerializeToString()

    return shifted


def _champion(cfg, settings):
    return registry.resolve_champion(settings, cfg.registry.model_name)["version"]


def _full_report(report):
    return storage.read_json(report["report_uri"])


def test_worse_or_noisy_or_disagreeing_models_never_replace_the_champion(base_cfg, settings, training_set):
    _, first, decision = _train(base_cfg, settings, training_set)
    assert first["passed"] and decision == "promote" and _champion(base_cfg, settings) == "1"

    # worse overall: a stump
    worse = with_params(base_cfg, training__estimator__params={"n_estimators": 2, "max_depth": 1,
                                                         "random_state": 42})
    _, report, decision = _train(worse, settings, training_set)
    assert decision == "reject" and "beats_champion:roc_auc" in report["failed"]
    assert _champion(base_cfg, settings) == "1"

    # the same model again: any difference is noise, the CI includes zero
    _, report, decision = _train(base_cfg, settings, training_set)
    full = _full_report(report)
    assert decision == "reject" and full["comparison"]["ci_low"] <= 0 <= full["comparison"]["ci_high"]
    assert _champion(base_cfg, settings) == "1"

    # ONNX that disagrees with the native model: a converter fault that shifts one leaf of one
    # tree (the real export, then one weight changed), caught by the parity gate at 1e-5
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_model, "export", _shift_one_leaf(onnx_model.export))
        _, report, decision = _train(base_cfg, settings, training_set)
    parity = next(c for c in _full_report(report)["checks"] if c["gate"] == "onnx_parity")
    # the gates score the ONNX file, so a model that disagrees fails more than parity too
    assert decision == "reject" and "onnx_parity" in report["failed"], report["failed"]
    assert parity["value"] > 1e-3 and parity["threshold"] == 1e-5
    assert _champion(base_cfg, settings) == "1"

    rejected = [e for e in registry.history(settings) if e["action"] == "rejected"]
    assert [e["to_version"] for e in rejected] == ["2", "3", "4"]
    assert all(e["failed_gates"] and e["gate_report"] for e in rejected)


def test_better_model_is_promoted_and_rollback_restores(base_cfg, settings, training_set):
    weak = with_params(base_cfg, training__estimator__params={"n_estimators": 3, "max_depth": 1,
                                                        "random_state": 1})
    _, first, _ = _train(weak, settings, training_set)
    assert first["passed"] or "floor" in " ".join(first["failed"])
    registry.promote(settings, base_cfg.registry.model_name, "1", "test", "baseline", None,
                     forced=not first["passed"])
    _, report, decision = _train(base_cfg, settings, training_set)
    full = _full_report(report)
    assert decision == "promote", full["failed"]
    assert full["comparison"]["ci_low"] > 0
    assert any(c["gate"].startswith("slice:carrier=") for c in full["checks"])
    assert _champion(base_cfg, settings) == "2"
    registry.rollback(settings, base_cfg.registry.model_name, "previous", "test", "incident")
    assert _champion(base_cfg, settings) == "1"
    actions = [e["action"] for e in registry.history(settings)]
    assert actions[-2:] == ["promote", "rollback"]


def test_racing_promotions_leave_consistent_aliases(base_cfg, settings, training_set):
    c = registry.client(settings)
    name = base_cfg.registry.model_name
    registry.ensure_registered_model(c, name)
    versions = [str(c.create_model_version(name, source=f"file:///tmp/m{i}").version) for i in range(4)]
    errors = []

    def go(v):
        try:
            registry.promote(settings, name, v, f"thread-{v}", "race", None)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    moves = [e for e in registry.history(settings) if e["action"] == "promote"]
    assert len(moves) == 4
    # the moves form one chain: each move starts from the previous move's target
    assert [m["from_version"] for m in moves[1:]] == [m["to_version"] for m in moves[:-1]]
    assert registry.by_alias(c, name, "champion").version == int(moves[-1]["to_version"])
    assert registry.by_alias(c, name, "previous_champion").version == int(moves[-2]["to_version"])


def test_champion_cannot_be_deleted_and_tampered_onnx_is_refused(base_cfg, settings, training_set):
    _train(base_cfg, settings, training_set)
    with pytest.raises(registry.RegistryError, match="holds"):
        registry.delete_version(settings, base_cfg.registry.model_name, "1")
    champion = registry.resolve_champion(settings, base_cfg.registry.model_name)
    run_dir = Path(settings.mlflow_artifacts_uri)
    onnx_file = next(run_dir.rglob("onnx/model.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes() + b"tampered")
    from pipelines.model.registry import load_onnx

    with pytest.raises(registry.RegistryError, match="sha256"):
        load_onnx(settings, champion["onnx_uri"], champion["onnx_sha256"])


def test_lineage_leads_back_to_the_data_and_reproduces_the_metrics(base_cfg, settings, training_set):
    trained, _, _ = _train(base_cfg, settings, training_set)
    c = registry.client(settings)
    mv = c.get_model_version(base_cfg.registry.model_name, "1")
    run = c.get_run(mv.run_id)
    assert mv.tags["training_data_sha256"] == training_set["sha256"]
    assert run.data.tags["training_data_uri"] == training_set["uri"]
    assert run.data.tags["feature_service"] == base_cfg.features.service
    assert run.data.tags["git_commit"] and run.data.tags["params_sha256"]
    # the recorded data + params reproduce the model: same metrics, same ONNX bytes
    data = Path(run.data.tags["training_data_uri"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == mv.tags["training_data_sha256"]
    again = train_and_register(base_cfg, settings, training_set, {"run_id": "repro"})
    assert again["metrics"] == trained["metrics"]
    # the recorded hash is checked against the bytes training reads, not taken on trust
    changed = Path(training_set["uri"]).with_name("changed.parquet")
    changed.write_bytes(data[:-8] + b"\0" * 8)
    with pytest.raises(TrainingDataError, match="changed after it was written and validated"):
        train_and_register(base_cfg, settings, {**training_set, "uri": str(changed)},
                           {"run_id": "tampered"})
    assert again["onnx_sha256"] == trained["onnx_sha256"]
    assert np.isclose(run.data.metrics["roc_auc"], trained["metrics"]["roc_auc"])
