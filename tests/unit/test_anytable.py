"""Any event table by configuration (issue 16): time zones, per-row outcome times, quiet
intervals, the interval grain, duplicate events, data versions and suite drafting, each on small
real data (the shelter example's configuration, examples/shelter, and the flights one)."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.core import locations, storage
from pipelines.core.config import Config, load_config
from pipelines.core.intervals import Grain
from pipelines.core.settings import REPO_ROOT, get_settings

SHELTER = REPO_ROOT / "examples" / "shelter"
COLUMNS = ["intake_id", "intake_time", "recorded_at", "animal_type", "intake_type",
           "intake_condition", "birth_date", "weight_kg", "outcome_type", "outcome_subtype",
           "outcome_date"]


def _row(intake_id: str, at: str, outcome: str | None = "Adoption", day: str | None = None,
         recorded: str | None = None, weight: float = 4.0) -> dict:
    return {"intake_id": intake_id, "intake_time": at, "recorded_at": recorded or at,
            "animal_type": "Cat", "intake_type": "Stray", "intake_condition": "Normal",
            "birth_date": "2024-01-01", "weight_kg": weight, "outcome_type": outcome,
            "outcome_subtype": None, "outcome_date": day if outcome else None}


def shelter(tmp_path: Path, rows: list[dict] | None = None, **changes: object) -> Config:
    """The shelter example's configuration on a table of `rows` (dotted `changes` applied)."""
    raw = yaml.safe_load((SHELTER / "params.yaml").read_text())
    table = tmp_path / "intakes.csv"
    pd.DataFrame(rows or [_row("A1", "2024-11-04 10:00:00", day="2024-11-06")],
                 columns=COLUMNS).to_csv(table, index=False)
    raw["dataset"]["sources"]["intakes"]["uri"] = str(table)
    for dotted, value in changes.items():
        node = raw
        *path, leaf = dotted.split("__")
        for key in path:
            node = node[key]
        node[leaf] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_config(tmp_path / "params.yaml")


def _landed(landing: Path, part: str) -> pd.DataFrame:
    return pd.read_csv(landing / "intakes" / part / "intakes.csv")


# -- 1. time zones: declared per source, applied once at ingest, DST handled -------------------

def test_naive_local_times_are_made_aware_once_at_ingest_and_cut_by_local_day(tmp_path):
    from pipelines.data.ingest import ingest

    rows = [_row("A1", "2024-11-03 01:30:00", day="2024-11-03"),  # the repeated hour
            _row("A2", "2024-11-03 20:00:00", day="2024-11-05"),  # 02:00 UTC on 4 November
            _row("A3", "2024-11-04 09:00:00", None)]
    cfg = shelter(tmp_path, rows, orchestration__interval="daily")
    ingest(cfg, str(tmp_path / "landing"), date(2024, 11, 3), date(2024, 11, 5))
    sunday = _landed(tmp_path / "landing", "date=2024-11-03")
    assert sunday["intake_time"].tolist() == ["2024-11-03 01:30:00-05:00",  # the first 01:30
                                              "2024-11-03 20:00:00-06:00"]
    assert sunday["outcome_date"].tolist() == ["2024-11-03 00:00:00-05:00",
                                               "2024-11-05 00:00:00-06:00"]
    assert _landed(tmp_path / "landing", "date=2024-11-04")["intake_id"].tolist() == ["A3"]


@pytest.mark.parametrize("policy,expected", [("earliest", "2024-11-03 01:30:00-05:00"),
                                             ("latest", "2024-11-03 01:30:00-06:00")])
def test_a_repeated_local_time_follows_the_declared_policy(tmp_path, policy, expected):
    from pipelines.data.ingest import ingest

    cfg = shelter(tmp_path, [_row("A1", "2024-11-03 01:30:00", day="2024-11-04")],
                  dataset__sources__intakes__dst={"ambiguous": policy})
    ingest(cfg, str(tmp_path / "landing"), date(2024, 10, 28), date(2024, 11, 4))
    assert _landed(tmp_path / "landing", "week=2024-10-28")["intake_time"][0] == expected


@pytest.mark.parametrize("at,dst,words", [
    ("2024-03-10 02:30:00", {}, "skipped (clocks went forward)"),
    ("2024-11-03 01:30:00", {"ambiguous": "raise"}, "repeated (clocks went back)")])
def test_an_impossible_or_ambiguous_local_time_is_refused_naming_file_column_and_value(
        tmp_path, at, dst, words):
    from pipelines.data.ingest import ingest

    cfg = shelter(tmp_path, [_row("A1", at, day="2024-11-04")],
                  dataset__sources__intakes__dst=dst)
    with pytest.raises(ValueError) as err:
        ingest(cfg, str(tmp_path / "landing"), date(2024, 3, 4), date(2024, 3, 11))
    assert all(w in str(err.value) for w in ("intakes.csv", "intakes.intake_time", at, words))


@pytest.mark.parametrize("changes,words", [
    ({"dataset__sources__intakes__timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"dataset__sources__intakes__timezone": None}, "timestamp_columns"),
    ({"orchestration__timezone": "Chicago"}, "unknown time zone")])
def test_time_zone_misconfiguration_is_a_clear_error(tmp_path, changes, words):
    with pytest.raises(Exception, match=words):
        shelter(tmp_path, **changes)


# -- 2. when a label becomes known: per row ----------------------------------------------------

def test_each_outcome_is_known_at_its_own_time(tmp_path):
    from pipelines.data.events import LABEL_AT, prepare_events
    from pipelines.data.ingest import localize_source

    cfg = shelter(tmp_path)
    raw = pd.DataFrame([_row("A1", "2024-11-04 10:00:00", day="2024-11-06"),
                        _row("A2", "2024-11-04 11:00:00", "Transfer", day="2025-04-01"),
                        _row("A3", "2024-11-04 12:00:00", None)], columns=COLUMNS)
    events = prepare_events(cfg, localize_source("intakes", cfg.dataset.sources["intakes"], raw))
    by_key = events.set_index(events["event_time"].dt.hour)
    assert by_key.loc[16, LABEL_AT] == pd.Timestamp("2024-11-07T06:00Z")  # end of 6 Nov, CST
    assert by_key.loc[17, LABEL_AT] == pd.Timestamp("2025-04-02T05:00Z")  # five months later
    assert by_key.loc[16, "adopted"] == 1 and by_key.loc[17, "adopted"] == 0
    assert np.isnan(by_key.loc[18, "adopted"]) and pd.isna(by_key.loc[18, LABEL_AT])
    early = raw.iloc[:1].assign(outcome_date="2024-11-01")
    with pytest.raises(ValueError, match="outcomes known before their event"):
        prepare_events(cfg, localize_source("intakes", cfg.dataset.sources["intakes"], early))


def test_rolling_statistics_count_only_the_outcomes_known_at_their_stamp():
    from pipelines.features.sources import compute_aggregate

    t = pd.Timestamp
    events = pd.DataFrame({"event_time": [t("2024-11-04T16:00Z"), t("2024-11-05T16:00Z")],
                           "label_available_at": [t("2024-11-06T06:00Z"), t("2025-04-02T05:00Z")],
                           "animal_type": ["Cat", "Cat"], "adopted": [1.0, 0.0]})
    iv = Grain("weekly", "America/Chicago").interval(date(2024, 11, 4))
    stats = compute_aggregate(events, ["animal_type"], "adopted", iv, 28, timedelta(days=1))
    row = stats.iloc[0]
    assert row["event_timestamp"] == iv.end + timedelta(days=1)  # the week's end + 1 day
    # the outcome known in April is not in a statistic stamped in November
    assert row["label_count"] == 1 and row["label_rate"] == 1.0


@pytest.mark.parametrize("label,quality,words", [
    ({"available_at": None, "available_after": None}, {}, "say when an outcome is known"),
    ({}, {"wait_days": None}, "monitoring.quality.wait_days is required")])
def test_when_outcomes_are_known_must_be_configured(tmp_path, label, quality, words):
    raw = yaml.safe_load((SHELTER / "params.yaml").read_text())
    raw["dataset"]["label"].update(label)
    raw["monitoring"]["quality"].update(quality)
    with pytest.raises(Exception, match=words):
        Config.model_validate(raw)


# -- 3. an interval without rows is a valid, recorded state -------------------------------------

def test_a_quiet_interval_lands_as_an_empty_batch_that_validates(tmp_path):
    from pipelines.data.checks import validate_day
    from pipelines.data.events import load_events
    from pipelines.data.ingest import ingest
    from pipelines.data.validation import DataValidationError

    rows = [_row("A1", "2024-12-17 10:00:00", day="2024-12-20", weight=3.5)]
    cfg = shelter(tmp_path, rows)
    settings = dataclasses.replace(get_settings(), data_uri=str(tmp_path / "data"),
                                   reports_uri=str(tmp_path / "reports"),
                                   expectations_dir=str(SHELTER / "expectations"))
    ingest(cfg, settings.landing_uri, date(2024, 12, 16), date(2024, 12, 30))
    assert _landed(Path(settings.landing_uri), "week=2024-12-23").empty  # its header only
    [result] = validate_day(cfg, settings, date(2024, 12, 23))
    assert result["success"] and result["rows"] == 0
    # read with a week that has rows, the quiet week changes no column's type
    events = load_events(cfg, settings.landing_uri, date(2024, 12, 16), date(2024, 12, 30))
    assert len(events) == 1 and events["weight_kg"].dtype == np.float64
    # a suite that expects rows still says so, naming the rule: an empty batch is checked
    flights_like = dataclasses.replace(settings, expectations_dir=str(tmp_path / "strict"))
    suite = json.loads((SHELTER / "expectations" / "intakes.json").read_text())
    suite["expectations"][1]["kwargs"]["min_value"] = 1
    storage.write_json(str(tmp_path / "strict" / "intakes.json"), suite)
    with pytest.raises(DataValidationError, match="expect_table_row_count_to_be_between"):
        validate_day(cfg, flights_like, date(2024, 12, 23))


# -- 4. the grain: intervals, partitions and schedules from the configuration -------------------

def test_intervals_follow_the_configured_grain_and_zone():
    daily = Grain("daily", "America/Chicago")
    long_day, short_day = daily.interval(date(2024, 11, 3)), daily.interval(date(2024, 3, 10))
    assert long_day.end - long_day.start == timedelta(hours=25)
    assert short_day.end - short_day.start == timedelta(hours=23)
    weekly = Grain("weekly", "America/Chicago")
    week = weekly.interval("2024-11-06")
    assert week.label == "week=2024-11-04" and weekly.previous(week).key == "2024-10-28"
    assert [w.key for w in weekly.window(week, 14)] == ["2024-11-04", "2024-10-28"]
    hourly = Grain("hourly", "America/Chicago")
    hour = hourly.at(datetime(2024, 11, 3, 6, 30, tzinfo=UTC))
    assert hour.label == "hour=2024-11-03T06Z" and hourly.interval(hour.label) == hour
    assert len(hourly.window(hour, 1)) == 24 and hourly.schedule_timezone == "UTC"
    # the flights demo: daily UTC, partitions named as before
    flights = load_config(REPO_ROOT / "params.yaml")
    day = flights.grain.interval(date(2013, 6, 1))
    assert (flights.grain.cron, flights.grain.schedule_timezone) == ("0 0 * * *", "UTC")
    assert locations.partition(day) == locations.partition(date(2013, 6, 1)) == "date=2013-06-01"
    assert day.start == datetime(2013, 6, 1, tzinfo=UTC)


def test_dag_schedules_follow_the_configuration(monkeypatch):
    from pipelines.core import orchestration

    monkeypatch.setenv("MLOPS_EXAMPLE", "shelter")
    monkeypatch.delenv("MLOPS_PARAMS", raising=False)
    assert orchestration.interval_schedule() == ("0 0 * * 1", "America/Chicago")
    start, _ = orchestration.schedule_span()
    assert start.isoformat() == "2024-08-05T00:00:00-05:00"
    assert orchestration.first_interval().label == "week=2024-08-05"


def test_windows_must_be_whole_intervals(tmp_path):
    with pytest.raises(Exception, match="drift.window_days 10 is not a whole number of weekly"):
        shelter(tmp_path, drift__window_days=10)


# -- 7. duplicate events: a declared policy ----------------------------------------------------

def test_duplicate_events_fail_unless_a_policy_says_which_to_keep(tmp_path):
    from pipelines.data.events import prepare_events
    from pipelines.data.ingest import localize_source

    first = _row("A1", "2024-11-03 01:50:00", day="2024-11-05", recorded="2024-11-03 01:55:00",
                 weight=4.0)  # 06:55 UTC: the first 01:55
    # re-recorded in the second 01:xx (07:25 UTC): later, though its text sorts first
    again = {**first, "recorded_at": "2024-11-03 01:25:00-06:00", "weight_kg": 4.4}
    raw = pd.DataFrame([again, first], columns=COLUMNS)

    def weights(**policy: str) -> list[float]:
        cfg = shelter(tmp_path, dataset__events__duplicates=policy)
        rows = localize_source("intakes", cfg.dataset.sources["intakes"], raw)
        return prepare_events(cfg, rows)["weight_kg"].tolist()

    with pytest.raises(ValueError, match=r"2 rows share an event key \['intake_id'\]"):
        weights()
    assert weights(keep="last", order_by="recorded_at") == [4.4]
    assert weights(keep="first", order_by="recorded_at") == [4.0]
    assert weights(keep="first") == [4.4]  # no order: the order the rows were read


# -- 8. data version: what was read, and the suites ---------------------------------------------

def test_lineage_records_the_data_read_not_the_committed_lock(tmp_path):
    from pipelines.data.versions import data_version, dvc_version, expectations_version

    cfg = shelter(tmp_path)
    settings = dataclasses.replace(get_settings(), data_uri=str(tmp_path / "data"),
                                   params_path=str(tmp_path / "params.yaml"),
                                   expectations_dir=str(tmp_path / "suites"))
    # the repository's dvc.lock describes the flights landing zone, not this one
    assert (REPO_ROOT / "dvc.lock").exists() and dvc_version(settings) == "untracked"
    week = cfg.grain.interval(date(2024, 11, 4))
    uri = locations.batch(settings.landing_uri, "intakes", week)
    storage.write_bytes(uri, b"intake_id\nA1\n")
    first = data_version(cfg, settings, [week])
    assert first["batches"] == 1 and data_version(cfg, settings, [week]) == first
    storage.write_bytes(uri, b"intake_id\nA2\n")  # one changed cell
    assert data_version(cfg, settings, [week])["sha256"] != first["sha256"]
    storage.write_json(str(tmp_path / "suites" / "intakes.json"), {"expectations": []})
    before = expectations_version(settings)
    storage.write_json(str(tmp_path / "suites" / "intakes.json"), {"expectations": [{}]})
    assert expectations_version(settings) != before
    # a lock whose ingest made this landing zone with these params: its hash
    lock = {"stages": {"ingest": {
        "params": {"params.yaml": {"ingest": {"start": "2024-08-05", "end": "2024-12-30"}}},
        "outs": [{"path": "data/landing", "md5": "abc.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dvc_version(settings, tmp_path) == "abc.dir"
    lock["stages"]["ingest"]["params"]["params.yaml"]["ingest"]["end"] = "2025-01-01"
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dvc_version(settings, tmp_path) == "untracked"


# -- 9. drafting: per-batch raw suites that quiet and blank batches pass; derived suites --------

def test_a_drafted_raw_suite_passes_every_batch_it_was_drafted_from():
    from pipelines.data.drafting import profile_suite
    from pipelines.data.rules import run_gx

    csv = "id,kind,note\n1,a,\n2,b,x\n"
    batches = {"week=1": pd.read_csv(io.StringIO(csv)),
               "week=2": pd.read_csv(io.StringIO("id,kind,note\n3,a,\n")),  # note: blank
               "week=3": pd.read_csv(io.StringIO("id,kind,note\n"))}  # no rows
    assert batches["week=2"]["note"].dtype == np.float64  # what pandas makes of a blank column
    suite = profile_suite(batches, "t")
    rules = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in suite["expectations"]}
    assert rules[("expect_table_row_count_to_be_between", None)] == {"min_value": 0}
    assert "float64" in rules[("expect_column_values_to_be_in_type_list", "note")]["type_list"]
    for name, batch in batches.items():
        failed = [c for c in run_gx(batch, suite)[0] if not c["success"]]
        assert not failed, f"{name}: {failed}"


def test_derived_suites_drafted_from_the_configuration_match_the_reviewed_flights_ones(tmp_path):
    from pipelines.features.store import apply_definitions
    from pipelines.scoring.suites import draft_output_suite

    cfg = load_config(REPO_ROOT / "params.yaml")
    settings = dataclasses.replace(get_settings(), state_uri=str(tmp_path),
                                   data_uri=str(tmp_path / "data"))
    apply_definitions(settings)
    for name in ("training_set", "predictions"):
        drafted = draft_output_suite(cfg, settings, name)
        reviewed = json.loads((REPO_ROOT / "expectations" / f"{name}.json").read_text())
        assert drafted["expectations"][0]["kwargs"] == reviewed["expectations"][0]["kwargs"], name
        kinds = {(e["type"], e["kwargs"].get("column")) for e in drafted["expectations"]}
        assert ("expect_column_values_to_be_between", "calendar__hour") in kinds
        if name == "training_set":
            assert ("expect_column_values_to_be_in_set", "is_late") in kinds
        else:
            assert ("expect_column_values_to_be_between", "probability") in kinds


@pytest.mark.parametrize("column", [
    pd.Series(["UA", None, "N14228", np.nan], dtype=object),
    pd.Series([1545, 714, 1141]),
    pd.Series([1.0, np.nan, 3.5]),
    pd.Series([True, False]),
    pd.Series(["a", None], dtype="string"),
    pd.Series(["a", "b", "a"], dtype="category"),
    pd.Series([1, None], dtype="Int64"),
    pd.Series([], dtype=object),
    pd.Series(["x"], dtype=object, index=[7], name="origin"),
], ids=["text", "int", "float", "bool", "string", "category", "Int64", "empty", "named"])
def test_join_keys_as_text_are_what_astype_string_makes(column):
    """Text columns (`expressions.as_text`: the entity rows' join keys, a derived string
    column) equal `astype("string")`: values, missing values, dtype, index and name."""
    from pipelines.core.expressions import as_text

    pd.testing.assert_series_equal(as_text(column), column.astype("string"))
