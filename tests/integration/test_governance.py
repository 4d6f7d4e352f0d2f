"""Governance on real models (issue 20): the fairness gate on models trained through the
production path (train_and_register -> evaluate_challenger; MLflow on SQLite, skl2onnx,
onnxruntime), the model card and datasheet of every registered version, SHAP.

The training sets are real January flights (support.flights_training_set) whose label is
replaced by a known rule, so what the model learns about each group is constructed: in the
fair set every departure airport follows the same rule (late = scheduled hour >= 17); in the
unfair set one airport's outcomes are coin flips the inputs cannot predict, so the model scores
that airport's flights near its positive rate and misses its late flights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import flights_training_set, isolated_settings, small_gates, with_params

from pipelines.core import storage
from pipelines.core.config import Config, load_config
from pipelines.model.evaluation import evaluate_challenger
from pipelines.model.training import train_and_register

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
GROUP, UNFAIR_TO = "origin", "JFK"


@pytest.fixture(scope="module")
def cfg() -> Config:
    """Small gates, the fairness gate on two group columns; behaviour checks off (the
    constructed label does not depend on the weather they move)."""
    return with_params(small_gates(load_config(REPO / "params.yaml")),
                       gates__behaviour=[],
                       gates__fairness={"columns": [GROUP, "carrier"],
                                        "metric": "false_negative_rate", "threshold": 0.5,
                                        "max_gap": 0.1, "min_size": 300, "n_bootstrap": 40,
                                        "confidence": 0.95, "seed": 1})


@pytest.fixture(scope="module")
def flights(tmp_path_factory, cfg) -> dict:
    return flights_training_set(tmp_path_factory.mktemp("ts"), cfg)


def _relabelled(flights: dict, cfg: Config, unfair: bool, out: Path) -> dict:
    df = pd.read_parquet(flights["uri"])
    label = cfg.dataset.label.name
    y = (df["hour"] >= 17).astype(int)
    if unfair:
        coin = np.random.default_rng(5).random(len(df)) < y.mean()
        y = y.where(df[GROUP] != UNFAIR_TO, coin.astype(int))
    df[label] = y.astype(df[label].dtype)
    uri = str(out / f"{'unfair' if unfair else 'fair'}.parquet")
    df.to_parquet(uri, index=False)
    return {**flights, "uri": uri, "positive_rate": float(y.mean()),
            "sha256": hashlib.sha256(Path(uri).read_bytes()).hexdigest()}


def _train_and_gate(cfg, tmp_path, training_set):
    settings = isolated_settings(tmp_path)
    trained = train_and_register(cfg, settings, training_set, {"run_id": "t", "trigger": "manual"})
    verdict = evaluate_challenger(cfg, settings, trained["version"])
    return settings, trained, verdict, storage.read_json(verdict["report_uri"])


def test_fairness_gate_rejects_a_model_that_treats_one_group_worse(cfg, flights, tmp_path):
    ts = _relabelled(flights, cfg, unfair=True, out=tmp_path)
    _, _, verdict, report = _train_and_gate(cfg, tmp_path, ts)
    assert not verdict["passed"] and f"fairness:{GROUP}" in verdict["failed"], verdict["failed"]
    rep = next(r for r in report["fairness"] if r["column"] == GROUP)
    by = {g["group"]: g for g in rep["groups"]}
    assert rep["highest"] == UNFAIR_TO and rep["gap"] > 0.5
    assert rep["gap_ci_low"] > cfg.gates.fairness.max_gap  # not a difference inside the noise
    assert by[UNFAIR_TO]["value"] > 0.5 > max(g["value"] for k, g in by.items() if k != UNFAIR_TO)
    check = next(c for c in report["checks"] if c["gate"] == f"fairness:{GROUP}")
    assert check["value"] == rep["gap"] and UNFAIR_TO in check["detail"]
    md = Path(verdict["report_uri"].replace(".json", ".md")).read_text()
    assert f"## Fairness by {GROUP}" in md and f"| {UNFAIR_TO} |" in md


def test_fairness_gate_passes_the_same_model_without_the_disparity(cfg, flights, tmp_path):
    ts = _relabelled(flights, cfg, unfair=False, out=tmp_path)
    _, _, verdict, report = _train_and_gate(cfg, tmp_path, ts)
    assert verdict["passed"], verdict["failed"]
    fair = {c["gate"]: c for c in report["checks"] if c["gate"].startswith("fairness:")}
    assert set(fair) == {f"fairness:{GROUP}", "fairness:carrier"}
    assert all(c["passed"] and c["value"] <= 0.1 for c in fair.values())
    # carriers with fewer than min_size evaluation rows are reported, not gated
    carriers = next(r for r in report["fairness"] if r["column"] == "carrier")["groups"]
    small = [g for g in carriers if g["n"] < 300]
    assert small and all(not g["gated"] and "min_size 300" in g["reason"] for g in small)
