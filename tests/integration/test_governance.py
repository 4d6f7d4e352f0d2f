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
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from support import flights_training_set, isolated_settings, small_gates, with_params

from pipelines.core import storage
from pipelines.core.config import Config, load_config
from pipelines.model import card, promotion, registry
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
    return flights_training_set(tmp_path_factory.mktemp("ts"), cfg, days=14)


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


def _train_and_gate(cfg, root: Path, training_set: dict) -> dict:
    settings = isolated_settings(root)
    trained = train_and_register(cfg, settings, training_set, {"run_id": "t", "trigger": "manual"})
    registered = card.read_card(settings, cfg.registry.model_name, trained["version"])
    verdict = evaluate_challenger(cfg, settings, trained["version"])
    window = {"start": training_set["start"], "end": training_set["end"], "trigger": "manual",
              "evidence": None}
    decided = promotion.conclude(cfg, settings, verdict, window, force=False, approval="manual",
                                 reason="governance test", actor="t", user="alice")
    return {"settings": settings, "trained": trained, "verdict": verdict, "decided": decided,
            "report": storage.read_json(verdict["report_uri"]), "training_set": training_set,
            "card_at_registration": registered}


@pytest.fixture(scope="module")
def unfair(cfg, flights, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("unfair")
    return _train_and_gate(cfg, root, _relabelled(flights, cfg, unfair=True, out=root))


@pytest.fixture(scope="module")
def fair(cfg, flights, tmp_path_factory) -> dict:
    """The fair model, gated, then approved by a person (approval=manual) and promoted."""
    root = tmp_path_factory.mktemp("fair")
    out = _train_and_gate(cfg, root, _relabelled(flights, cfg, unfair=False, out=root))
    approval = {"chosen_options": [promotion.APPROVE_OPTION],
                "responded_by_user": {"id": "7", "name": "bob"}}
    promotion.promote_decided(cfg, out["settings"], out["decided"], actor="t", approval=approval)
    return out


def test_fairness_gate_rejects_a_model_that_treats_one_group_worse(cfg, unfair):
    verdict, report = unfair["verdict"], unfair["report"]
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
    card_uri = report["card_uri"]
    assert f"Model card: `{card_uri}`" in md and Path(card_uri).exists()  # the report links it


def test_fairness_gate_passes_the_same_model_without_the_disparity(fair):
    verdict, report = fair["verdict"], fair["report"]
    assert verdict["passed"], verdict["failed"]
    fair_checks = {c["gate"]: c for c in report["checks"] if c["gate"].startswith("fairness:")}
    assert set(fair_checks) == {f"fairness:{GROUP}", "fairness:carrier"}
    assert all(c["passed"] and c["value"] <= 0.1 for c in fair_checks.values())
    # carriers with fewer than min_size evaluation rows are reported, not gated
    carriers = next(r for r in report["fairness"] if r["column"] == "carrier")["groups"]
    small = [g for g in carriers if g["n"] < 300]
    assert small and all(not g["gated"] and "min_size 300" in g["reason"] for g in small)


# -- the model card and the datasheet ---------------------------------------------------------

def _card(settings, cfg, version: str) -> tuple[dict, str]:
    text = card.read_card(settings, cfg.registry.model_name, version)
    assert text.startswith("---\n")
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def _run_card(settings, run_id: str) -> str:
    import mlflow

    registry.configure_mlflow(settings)
    return mlflow.artifacts.load_text(f"runs:/{run_id}/card/model_card.md")


def test_card_numbers_are_the_registrys_and_the_gate_reports(cfg, fair):
    settings, version, report = fair["settings"], fair["trained"]["version"], fair["report"]
    meta, body = _card(settings, cfg, version)
    c = registry.client(settings)
    mv = c.get_model_version(cfg.registry.model_name, version)
    run_metrics = c.get_run(mv.run_id).data.metrics
    (result,) = meta["model-index"][0]["results"]
    card_metrics = {m["type"]: m["value"] for m in result["metrics"]}
    assert set(card_metrics) == {"roc_auc", "pr_auc", "brier", "calibration_error"}
    for name, value in card_metrics.items():
        # one source: the run (registry), the gate report and the card hold the same number
        assert value == run_metrics[name] == report["metrics"][name], name
        ci = report["metric_intervals"][name]
        assert f"| {card.METRIC_NAMES[name]} | {card.fmt(value)} | [{ci['ci_low']:.4f}, " \
               f"{ci['ci_high']:.4f}] |" in body
    assert result["dataset"]["revision"] == mv.tags["training_data_sha256"]
    for s in report["slice_metrics"]:  # per slice, with its interval or "below min size"
        row = f"| {s['slice']} | {s['n']} | "
        assert row in body and (s["ci_low"] is None or f"[{s['ci_low']:.4f}" in body)
    assert any(s["below_min_size"] for s in report["slice_metrics"])
    assert "Slices below the minimum size" in body
    for check in report["checks"]:  # every gate with its verdict
        assert f"| {check['gate']} | {'pass' if check['passed'] else 'FAIL'} |" in body
    # intended and out-of-scope use from config; the approver from the history
    assert cfg.governance.card.intended_use in body
    assert all(u in body for u in cfg.governance.card.out_of_scope_use)
    assert "status: **promote** (by bob)" in body
    # the run holds the same card as the reports folder
    assert _run_card(settings, mv.run_id) == card.read_card(settings, cfg.registry.model_name,
                                                            version)


def test_a_card_exists_from_registration_on(cfg, fair, unfair):
    for run in (fair, unfair):  # before its gates ran: the run's numbers, "not run yet"
        text = run["card_at_registration"]
        assert "status: **gates not run yet**" in text and "The gates have not run yet." in text
        meta = yaml.safe_load(text.split("---\n")[1])
        (result,) = meta["model-index"][0]["results"]
        assert {m["type"]: m["value"] for m in result["metrics"]} == {
            k: v for k, v in run["trained"]["metrics"].items()
            if k in ("roc_auc", "pr_auc", "brier", "calibration_error") and v is not None}


def test_a_rejected_version_has_its_card_too(cfg, unfair):
    settings, version = unfair["settings"], unfair["trained"]["version"]
    meta, body = _card(settings, cfg, version)
    assert "status: **rejected**" in body and "Verdict: **FAIL**" in body
    assert f"| fairness:{GROUP} | FAIL |" in body
    assert meta["model-index"][0]["name"] == f"{cfg.registry.model_name}-v{version}"


def test_datasheet_describes_the_training_set_and_is_linked(cfg, fair):
    settings, trained = fair["settings"], fair["trained"]
    folder = Path(trained["datasheet_uri"]).parent
    sheet = json.loads((folder / "datasheet.json").read_text())
    df = pd.read_parquet(sheet["uri"])
    label = cfg.dataset.label.name
    assert sheet["rows"]["total"] == len(df) and sheet["sha256"] == fair["training_set"]["sha256"]
    assert sheet["label"]["positives"] == int(df[label].sum())
    cols = {c["name"]: c for c in sheet["columns"]}
    assert set(cols) == set(df.columns)
    assert cols["hour"]["role"] == "numeric input" and cols[GROUP]["role"] == "categorical input"
    assert cols["weather_fv__temp"]["missing"] == int(df["weather_fv__temp"].isna().sum())
    assert cols["distance"]["summary"]["mean"] == pytest.approx(df["distance"].mean())
    assert sheet["validation"]["status"] == "not validated"  # this test skips the GX suite
    _, body = _card(settings, cfg, trained["version"])
    assert "[datasheet.md](datasheet.md)" in body and (folder / "datasheet.md").exists()
    assert "![SHAP global importance](shap_importance.png)" in body
    assert (folder / "shap_importance.png").read_bytes()[:4] == b"\x89PNG"
    shap_summary = json.loads((folder / "shap_importance.json").read_text())
    assert shap_summary["space"] == "log-odds" and shap_summary["sample_rows"] == 500
    assert shap_summary["additivity_max_abs_error"] <= shap_summary["additivity_tolerance"]


def test_a_promotion_by_hand_is_recorded_in_the_card(cfg, unfair):
    """The `promote` DAG's function (forced: the version failed its gates). Runs last: it makes
    the rejected version champion."""
    settings, version = unfair["settings"], unfair["trained"]["version"]
    promotion.promote_approved(settings, cfg.registry.model_name, version, "manual__x",
                               "accepted risk, see ticket", force=True, user="carol", cfg=cfg)
    _, body = _card(settings, cfg, version)
    assert "status: **forced_promote** (by carol)" in body
    assert "**rejected** by alice" in body  # the earlier decision stays in the approval record


def test_the_previous_champions_drift_verdicts_are_in_the_challengers_card(cfg, fair):
    """Monitoring's drift verdicts of the intervals the champion scored, as `check_interval`
    records them (`locations.monitoring_record`), listed in the next challenger's card."""
    from pipelines.core import locations

    settings, champion = fair["settings"], fair["trained"]["version"]
    name = cfg.registry.model_name
    assert registry.resolve_champion(settings, name)["version"] == champion
    records = [("2013-02-02", champion, True, 0.5, "3 of 6 features drifted"),
               ("2013-02-01", champion, False, 0.0, "no drift"),
               ("2013-01-31", "99", True, 0.9, "another version's")]
    for day, version, drift, share, reason in records:
        storage.write_json(locations.monitoring_record(settings, "verdicts", day),
                           {"date": day, "model": name, "model_version": version, "drift": drift,
                            "drift_share": share, "reason": reason, "thresholds": {}})
    assert [v["date"] for v in card.champion_verdicts(settings, name, champion)] == [
        "2013-02-01", "2013-02-02"]

    challenger = _train_and_gate(cfg, Path(settings.state_uri), fair["training_set"])
    assert challenger["report"]["champion_version"] == champion
    _, body = _card(settings, cfg, challenger["trained"]["version"])
    assert (f"- Previous champion v{champion}'s drift verdicts: 2 intervals checked (2013-02-01 "
            f"to 2013-02-02), 1 with drift: 2013-02-02 (drift share 0.5000: 3 of 6 features "
            f"drifted)") in body
    assert "another version's" not in body
