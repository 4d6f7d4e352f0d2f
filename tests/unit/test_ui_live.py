"""The model page's live serving section (`mlops_ui.live`, `live_page`): the split in force,
per-variant numbers from the prediction log of the last minutes, the latest rollout's steps.
Built on real files (a prediction-log part, the routing document, history events)."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from support import REPO, isolated_settings, with_params

from pipelines.core import locations, storage
from pipelines.core.config import load_config
from pipelines.model import registry, routing

sys.path.insert(0, str(REPO / "plugins"))  # Airflow puts the plugins folder on sys.path
from mlops_ui import live  # noqa: E402
from mlops_ui.live_page import serving_section  # noqa: E402

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture()
def served(tmp_path):
    settings = isolated_settings(tmp_path)
    cfg = with_params(load_config(), serving__aliases=["champion", "challenger"])
    rows = []
    for i in range(100):  # 75 champion requests mirrored to the challenger, 25 challenger
        champion = i < 75
        rows.append({"row_key": f"k{i}", "event_time": pd.Timestamp("2013-01-09", tz="UTC"),
                     "probability": 0.4, "model_name": "m", "model_version": "1",
                     "request_id": f"r{i}", "variant": "champion" if champion else "challenger",
                     "latency_ms": float(i % 10 + 1),
                     "served_at": NOW - timedelta(minutes=1, seconds=i),
                     "shadow_variant": "challenger" if champion else None,
                     "shadow_version": "2" if champion else None,
                     "shadow_probability": (0.6 if i % 5 == 0 else 0.45) if champion else np.nan,
                     "shadow_status": "ok" if champion else None})
    old = dict(rows[0], request_id="old", served_at=NOW - timedelta(hours=2))
    storage.write_parquet(pd.DataFrame([*rows, old]), storage.join(
        locations.prediction_log(settings, date(2013, 1, 9)), "part-1.parquet"))
    routing.set_routing(settings, cfg, {"champion": 75, "challenger": 25},
                        {"alias": "challenger", "percent": 100.0}, "rollout-run-1", "25%")
    for step, passed in (("shadow", True), ("25%", False)):
        registry.record(settings, {
            "action": "rollout_step", "model": cfg.registry.model_name, "to_version": "2",
            "actor": "rollout-run-1", "reason": step,
            "rollout": {"step": step, "passed": passed, "breached": [] if passed else [
                "error_rate 0.2 > 0.01"], "checks": [{"name": "error_rate", "observed": 0.2,
                                                      "limit": 0.01, "passed": passed}]}})
    registry.record(settings, {"action": "rollout_rolled_back", "model": cfg.registry.model_name,
                               "to_version": "2", "actor": "rollout-run-1",
                               "reason": "25%: error_rate"})
    return settings, cfg


def test_live_serving_shows_the_split_variants_and_the_latest_rollout(served):
    settings, cfg = served
    shown = live.live_serving(settings, cfg, minutes=15, now=NOW)
    assert shown["routing"]["shares"] == {"challenger": 0.25, "champion": 0.75}
    assert shown["routing"]["actor"] == "rollout-run-1"
    champion, challenger = shown["variants"]["champion"], shown["variants"]["challenger"]
    assert (champion["requests"], challenger["requests"]) == (75, 25)  # not the 2-hour-old one
    assert champion["rate_per_s"] == pytest.approx(75 / 900)
    assert challenger["p99_ms"] == pytest.approx(np.quantile(
        [float(i % 10 + 1) for i in range(75, 100)], 0.99))
    assert challenger["shadow_requests"] == 75 and challenger["shadow_failure_rate"] == 0
    assert challenger["mean_abs_diff"] == pytest.approx((15 * 0.2 + 60 * 0.05) / 75)
    assert challenger["label_disagreement"] == pytest.approx(15 / 75)  # 0.6 vs 0.4 at 0.5
    assert [e["action"] for e in shown["rollout"]] == ["rollout_step", "rollout_step",
                                                       "rollout_rolled_back"]
    html = serving_section(shown)
    assert "<b>challenger</b> 25%" in html and "mirror challenger 100%" in html
    assert 'data-variant="challenger"' in html and "20.0%" in html
    assert html.count('class="rollout-event"') == 3 and "error_rate 0.2 &gt; 0.01" in html


def test_without_routing_or_traffic_the_section_says_so(tmp_path):
    settings, cfg = isolated_settings(tmp_path), load_config()
    shown = live.live_serving(settings, cfg, now=NOW)
    assert shown["routing"]["source"] == "params.yaml"
    assert shown["routing"]["shares"] == {"champion": 1.0}
    assert shown["variants"] == {} and shown["rollout"] == []
    html = serving_section(shown)
    assert "No request logged in the last 15 minutes" in html and "No rollout yet" in html


def test_the_rollout_tasks_link_to_the_live_evidence(tmp_path):
    from mlops_ui.links import (
        LIVE_SERVING,
        MLFLOW_VERSION,
        MODEL_PAGE,
        TaskOutput,
        links_for,
    )

    settings = isolated_settings(tmp_path)
    outcome = {"version": "2", "mode": "canary", "outcome": "rolled_back", "steps": [],
               "reason": "25%: error_rate"}
    got = links_for(settings, TaskOutput("rollout", "run_steps", outcome), "delay_model")
    assert got[LIVE_SERVING] == "/mlops/#serving"
    assert got[MLFLOW_VERSION].endswith("/#/models/delay_model/versions/2")
    assert got[MODEL_PAGE] == "/mlops/#models"
    other = links_for(settings, TaskOutput("promote", "promote_version", {"to_version": "2"}),
                      "delay_model")
    assert LIVE_SERVING not in other
