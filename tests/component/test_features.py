"""Feature sources, retrieval checks, materialisation and the online/offline skew check.

Real Feast throughout (a tiny local repo per test: file registry, DuckDB offline store over
Parquet, SQLite online store); the sources are written the way `pipelines.features.store` writes them
(one file per day, `created_timestamp` = when the value was known).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.core import storage
from pipelines.core.config import load_config
from pipelines.core.dates import day_start, parse_utc
from pipelines.core.settings import get_settings
from pipelines.data.events import PREDICTION_TIME, ROW_KEY
from pipelines.features.online import (
    SkewError,
    assert_no_skew,
    materialize_interval,
    skew_report,
)
from pipelines.features.retrieval import check_retrieval, historical_features
from pipelines.features.serving import online_features
from pipelines.features.sources import compute_aggregate, known_at, write_table_sources

REPO = Path(__file__).resolve().parents[2]
D0 = date(2024, 3, 1)


def _at(days: int, hours: float = 0) -> pd.Timestamp:
    return pd.Timestamp(day_start(D0 + timedelta(days=days))) + pd.Timedelta(hours=hours)


# -- time zones and created timestamps of the sources -------------------------------------------

@pytest.mark.parametrize("text,utc", [("2013-01-05T00:00:00Z", "2013-01-05T00:00Z"),
                                      ("2013-01-04T19:00:00-05:00", "2013-01-05T00:00Z"),
                                      ("2013-07-04T20:00:00-04:00", "2013-07-05T00:00Z"),
                                      ("2013-01-05 01:00:00+0100", "2013-01-05T00:00Z")])
def test_offsets_are_normalised_to_utc(text, utc):
    assert parse_utc(pd.Series([text]), "t")[0] == pd.Timestamp(utc)


@pytest.mark.parametrize("values", [pd.Series(["2013-01-05 00:00:00"]),
                                    pd.Series(["2013-01-05T00:00:00Z", "2013-01-05T01:00:00"]),
                                    pd.Series(pd.to_datetime(["2013-01-05 00:00"]))])
def test_naive_timestamps_are_rejected_not_read_as_utc(values):
    with pytest.raises(ValueError, match="refusing to assume UTC"):
        parse_utc(values, "weather.csv: time_hour")


def _settings(tmp_path: Path):
    return replace(get_settings(), data_uri=str(tmp_path / "data"))


def _landing(settings, table: str, day: date, text: str) -> None:
    path = Path(settings.landing_uri) / table / f"date={day.isoformat()}" / f"{table}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_landing_batch_with_naive_timestamps_fails_the_source_build(tmp_path):
    cfg, settings = load_config(REPO / "params.yaml"), _settings(tmp_path)
    _landing(settings, "weather", date(2013, 1, 5), "origin,temp,time_hour\nEWR,30.0,2013-01-05 10:00:00\n")
    with pytest.raises(ValueError, match=r"weather\.csv: time_hour: 1 timestamps without a UTC offset"):
        write_table_sources(cfg, settings, date(2013, 1, 5))


def test_rows_are_known_at_their_event_time_late_rows_when_their_file_lands(tmp_path):
    cfg, settings = load_config(REPO / "params.yaml"), _settings(tmp_path)
    _landing(settings, "weather", date(2013, 1, 5),
             "origin,temp,time_hour\nEWR,30.0,2013-01-05T10:00:00Z\nJFK,31.0,2013-01-03T22:00:00Z\n")
    [uri] = write_table_sources(cfg, settings, date(2013, 1, 5))
    df = pd.read_parquet(uri)
    assert df["created_timestamp"].tolist() == [pd.Timestamp("2013-01-05T10:00Z"),  # on time
                                                pd.Timestamp("2013-01-06T00:00Z")]  # late row
    ev = pd.Series(pd.to_datetime(["2013-01-05T00:00Z", "2013-01-04T23:59Z"]))
    assert known_at(ev, date(2013, 1, 5)).tolist() == [ev[0], pd.Timestamp("2013-01-06T00:00Z")]


def _sources_state(settings) -> dict[str, tuple[int, bytes]]:
    root = Path(settings.features_uri)
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*.parquet"))}


def test_source_partitions_are_rebuilt_exactly_when_their_inputs_change(tmp_path):
    """The nightly DAGs both build a day's sources and every build covers the lookback days
    again: unchanged inputs keep their partitions; a corrected batch rebuilds every partition
    that reads it, to what a build from scratch writes."""
    import shutil

    from pipelines.data.ingest import ingest
    from pipelines.features.sources import build_sources_for_interval

    cfg, settings = load_config(REPO / "params.yaml"), _settings(tmp_path / "a")
    day = date(2013, 6, 20)
    ingest(cfg, settings.landing_uri, date(2013, 6, 1), day + timedelta(days=1))
    first = build_sources_for_interval(cfg, settings, day)
    before = _sources_state(settings)
    assert build_sources_for_interval(cfg, settings, day) == first
    assert _sources_state(settings) == before  # nothing rewritten, not even with the same bytes

    late = day - timedelta(days=2)  # a corrected flights batch: one more late arrival
    batch = Path(settings.landing_uri) / "flights" / f"date={late}" / "flights.csv"
    raw = pd.read_csv(batch)
    raw.loc[raw["arr_delay"].fillna(0) <= 15, "arr_delay"] = 90.0
    raw.to_csv(batch, index=False)
    build_sources_for_interval(cfg, settings, day)
    after = _sources_state(settings)
    changed = sorted(k for k in after if after[k] != before[k])
    reads_late = sorted(k for k in after if k.split("/")[0] in cfg.dataset.aggregates
                        and late.isoformat() <= k.split("=")[1][:10])
    assert changed == reads_late and changed  # the aggregates of the days whose windows hold it

    fresh = _settings(tmp_path / "b")  # the same rows as a build from scratch (the recorded
    shutil.copytree(settings.landing_uri, fresh.landing_uri)  # inputs name other paths)
    build_sources_for_interval(cfg, fresh, day)
    assert sorted(_sources_state(fresh)) == sorted(after)
    for name in after:
        pd.testing.assert_frame_equal(pd.read_parquet(Path(fresh.features_uri) / name),
                                      pd.read_parquet(Path(settings.features_uri) / name))


# -- retrieval checks ---------------------------------------------------------------------------

def _schema():
    from feast.types import Float64, Int64

    return {"plane_fv__engines": ("plane_fv", "engines", Int64),
            "plane_fv__year": ("plane_fv", "year", Float64)}


def test_retrieval_check_accepts_nullable_ints_and_names_bad_dtypes():
    rows = pd.DataFrame({ROW_KEY: ["a", "b"]})
    ok = rows.assign(plane_fv__engines=[2.0, None], plane_fv__year=[2001.0, None])
    check_retrieval(ok, rows, _schema())  # an Int64 feature with nulls arrives as float
    bad = rows.assign(plane_fv__engines=[2.5, 1.0], plane_fv__year=["2001", "x"])
    with pytest.raises(TypeError) as err:
        check_retrieval(bad, rows, _schema())
    assert "plane_fv.engines: declared Int64, got float64" in str(err.value)
    assert "plane_fv.year: declared Float64, got object" in str(err.value)


@pytest.mark.parametrize("out_keys", [["a"], ["a", "b", "b"]])
def test_retrieval_check_demands_one_row_per_entity_row(out_keys):
    """(The order is not judged here but where it is produced: pit._join, _feast_features.)"""
    rows = pd.DataFrame({ROW_KEY: ["a", "b"]})
    out = pd.DataFrame({ROW_KEY: out_keys, "plane_fv__engines": 1, "plane_fv__year": 1.0})
    with pytest.raises(ValueError, match="feature retrieval returned"):
        check_retrieval(out, rows, _schema())


def test_retrieval_check_catches_feature_rows_that_do_not_line_up():
    """More feature rows than entity rows, or another index: `pd.concat` adds rows."""
    rows = pd.DataFrame({ROW_KEY: ["a", "b"]})
    for feats in (pd.DataFrame({"plane_fv__engines": [1, 2, 3], "plane_fv__year": 1.0}),
                  pd.DataFrame({"plane_fv__engines": [1, 2], "plane_fv__year": 1.0}, index=[1, 2])):
        with pytest.raises(ValueError, match="returned 3 rows for 2 entity rows"):
            check_retrieval(pd.concat([rows, feats], axis=1), rows, _schema())


# -- a tiny Feast repo --------------------------------------------------------------------------

def _repo(path: Path):
    from feast import (
        Entity,
        FeatureService,
        FeatureStore,
        FeatureView,
        Field,
        FileSource,
        ValueType,
    )
    from feast.types import Float64, Int64

    def source(name: str) -> FileSource:
        return FileSource(name=f"{name}_source", path=str(path / name / "*.parquet"),
                          timestamp_field="event_timestamp",
                          created_timestamp_column="created_timestamp")

    sensor = Entity(name="sensor", join_keys=["sensor_id"], value_type=ValueType.STRING)
    carrier = Entity(name="carrier", join_keys=["carrier"], value_type=ValueType.STRING)
    reading_fv = FeatureView(name="reading_fv", entities=[sensor], ttl=timedelta(days=2),
                             schema=[Field(name="value", dtype=Float64),
                                     Field(name="count", dtype=Int64)], source=source("readings"))
    device_fv = FeatureView(name="device_fv", entities=[sensor], ttl=timedelta(0),
                            schema=[Field(name="model_year", dtype=Int64)], source=source("devices"))
    stats_fv = FeatureView(name="stats_fv", entities=[carrier], ttl=timedelta(days=3),
                           schema=[Field(name="label_rate", dtype=Float64),
                                   Field(name="label_count", dtype=Int64)], source=source("stats"))
    path.mkdir(parents=True, exist_ok=True)
    (path / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": "features_test", "provider": "local", "registry": str(path / "registry.db"),
        "offline_store": {"type": "duckdb"},
        "online_store": {"type": "sqlite", "path": str(path / "online.db")},
        "entity_key_serialization_version": 3}))
    _day_file(path, "devices", None, [("s1", 2015), ("s2", 2019), ("s3", 2021), ("s4", 2022)])
    (path / "stats").mkdir()  # every view needs a source file to materialise
    old = pd.Timestamp("2000-01-01", tz="UTC")
    storage.write_parquet(pd.DataFrame({"carrier": ["ZZ"], "label_rate": [0.5], "label_count": [2],
                                        "event_timestamp": [old], "created_timestamp": [old]}),
                          str(path / "stats" / "old.parquet"))
    store = FeatureStore(repo_path=str(path))
    store.apply([sensor, carrier, reading_fv, device_fv, stats_fv,
                 FeatureService(name="sensors_v1", features=[reading_fv, device_fv]),
                 FeatureService(name="stats_v1", features=[stats_fv])])
    return store


def _day_file(path: Path, name: str, day: int | None, rows: list[tuple]) -> None:
    """One source file per day, as pipelines.features.store writes them (None: an epoch snapshot)."""
    (path / name).mkdir(exist_ok=True)
    if day is None:
        df = pd.DataFrame(rows, columns=["sensor_id", "model_year"])
        df["event_timestamp"] = df["created_timestamp"] = pd.Timestamp("1970-01-01", tz="UTC")
    else:
        df = pd.DataFrame(rows, columns=["sensor_id", "event_timestamp", "value", "count"])
        df["created_timestamp"] = known_at(df["event_timestamp"], D0 + timedelta(days=day))
    storage.write_parquet(df, str(path / name / f"day={day}.parquet"))


READINGS = {0: [("s1", _at(0, 10), 1.0, 1), ("s2", _at(0, 12), 5.0, 1), ("s3", _at(0, 1), 7.0, 4)],
            1: [("s1", _at(1, 10), 2.0, 2)],
            2: [("s1", _at(2, 10), 3.0, 3), ("s3", _at(2, 23), 8.0, 5)]}


@pytest.fixture()
def sensors(tmp_path):
    store = _repo(tmp_path)
    for day, rows in READINGS.items():
        _day_file(tmp_path, "readings", day, rows)
    return store, tmp_path


def _online_dump(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path / "online.db") as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(con.execute(f'SELECT entity_key, feature_name, value, event_ts, '
                                      f'created_ts FROM "{t}"').fetchall()) for t in tables}


def _raw_online(store, sensor: str) -> dict:
    return store.get_online_features(features=["reading_fv:value", "device_fv:model_year"],
                                     entity_rows=[{"sensor_id": sensor}]).to_dict()


def test_rerunning_an_interval_changes_nothing_in_the_online_store(sensors):
    store, path = sensors
    materialize_interval(store, D0, lateness_days=1)
    first = _online_dump(path)
    materialize_interval(store, D0, lateness_days=1)
    assert _online_dump(path) == first
    for day in (1, 2):
        materialize_interval(store, D0 + timedelta(days=day), lateness_days=1)
    latest = _online_dump(path)
    assert _raw_online(store, "s1")["value"] == [3.0]
    # a backfill re-runs the first interval after the later ones: nothing rolls back
    report = materialize_interval(store, D0, lateness_days=1)
    assert _online_dump(path) == latest and report["as_of"] == (_at(3) - timedelta(microseconds=1)).isoformat()
    # (what a plain Feast materialize of that interval would have done: s1 back to 1.0)
    store.materialize(day_start(D0), day_start(D0 + timedelta(days=1)), feature_views=["reading_fv"])
    assert _raw_online(store, "s1")["value"] == [1.0]


def test_a_view_without_ttl_is_materialised_whole(sensors):
    store, _ = sensors
    materialize_interval(store, D0 + timedelta(days=2), lateness_days=0)  # snapshot at the epoch
    assert _raw_online(store, "s4")["model_year"] == [2022]


def test_late_rows_within_the_lateness_window_are_rematerialised(tmp_path):
    late = [("s1", _at(2, 10), 30.0, 3),  # a correction of the day before, 38 hours late
            ("s4", _at(0, 20), 9.0, 1)]  # a reading three days late (older than the TTL)
    stores = {}
    for lateness in (0, 3):
        store = _repo(tmp_path / f"lateness{lateness}")
        for day, rows in READINGS.items():
            _day_file(tmp_path / f"lateness{lateness}", "readings", day, rows)
        for day in range(3):
            materialize_interval(store, D0 + timedelta(days=day), lateness_days=lateness)
        _day_file(tmp_path / f"lateness{lateness}", "readings", 3, late)  # lands with day 3
        materialize_interval(store, D0 + timedelta(days=3), lateness_days=lateness)
        stores[lateness] = store
    for store in stores.values():  # within the TTL every run re-reads it
        assert _raw_online(store, "s1")["value"] == [30.0]
    assert _raw_online(stores[3], "s4")["value"] == [9.0]  # within the lateness window
    assert _raw_online(stores[0], "s4")["value"] == [None]  # the trap without one


# -- skew: online vs offline as of the same time ------------------------------------------------

def test_skew_check_passes_when_online_equals_offline(sensors):
    store, _ = sensors
    for day in range(3):
        report = materialize_interval(store, D0 + timedelta(days=day), lateness_days=1)
    as_of = pd.Timestamp(report["as_of"]).to_pydatetime()
    result = skew_report(store, "sensors_v1", ["sensor_id"], as_of, n=50, seed=0)
    assert result["mismatches"] == [] and result["compared"] == 4 * 2 + 5  # + 1 unknown each
    # s2's reading is older than the TTL: online still holds it, the read expires it as offline
    assert _raw_online(store, "s2")["value"] == [5.0]
    read = online_features(store, ["reading_fv:value"], [{"sensor_id": "s2"}], as_of,
                           {"reading_fv": timedelta(days=2)})
    assert read["reading_fv__value"].isna().all()
    assert_no_skew(result)


def test_skew_check_fails_with_a_report_naming_entity_feature_and_values(sensors):
    store, _ = sensors
    for day in range(3):
        report = materialize_interval(store, D0 + timedelta(days=day), lateness_days=1)
    store.write_to_online_store("reading_fv", pd.DataFrame({
        "sensor_id": ["s1"], "event_timestamp": [_at(2, 10)], "created_timestamp": [_at(2, 10)],
        "value": [999.0], "count": [3]}))  # a corrupted online value
    as_of = pd.Timestamp(report["as_of"]).to_pydatetime()
    result = skew_report(store, "sensors_v1", ["sensor_id"], as_of, n=50, seed=0)
    with pytest.raises(SkewError) as err:
        assert_no_skew(result)
    msg = str(err.value)
    assert "1 of 13 feature values differ" in msg
    assert "reading_fv__value for {'sensor_id': 's1'}: online=999.0 offline=3.0" in msg


# -- aggregates: stamped when every outcome in them is known, also through retrieval -----------

@pytest.mark.parametrize("engine", ["duckdb", "feast"])
def test_aggregates_are_invisible_until_every_outcome_is_known(tmp_path, engine):
    store = _repo(tmp_path)
    events = pd.DataFrame({"event_time": [_at(0, 10), _at(1, 9), _at(1, 22)],
                           "carrier": ["UA"] * 3, "is_late": [1.0, 0.0, 0.0]})
    for day in (0, 1):
        stats = compute_aggregate(events, ["carrier"], "is_late", D0 + timedelta(days=day), 2,
                                  timedelta(days=1))
        storage.write_parquet(stats, str(tmp_path / "stats" / f"day={day}.parquet"))
    # the day-1 statistics include the 22:00 flight, whose outcome is known at day 2 22:00:
    # they are stamped at the end of day 1 + 1 day = day 3 00:00, never earlier
    at = [_at(1, 23), _at(2, 0) - pd.Timedelta(microseconds=1), _at(2, 0), _at(3, 0) - pd.Timedelta(seconds=1), _at(3, 0)]
    rows = pd.DataFrame({ROW_KEY: [f"r{i}" for i in range(len(at))], PREDICTION_TIME: at,
                         "carrier": pd.array(["UA"] * len(at), dtype="string")})
    out = historical_features(store, "stats_v1", rows, ["carrier"], engine=engine, cutoff=True)
    assert _nullable(out["stats_fv__label_count"]) == [None, None, 1, 1, 3]
    assert _nullable(out["stats_fv__label_rate"])[2:] == [1.0, 1.0, pytest.approx(1 / 3)]
    for i, t in enumerate(at):  # every outcome counted was known at the row's time
        known = events[events["event_time"] + timedelta(days=1) <= t]
        assert (out["stats_fv__label_count"].fillna(0)[i]) <= len(known)


def _nullable(series: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in series]


def test_historical_features_reject_naive_times_and_duplicate_row_keys(sensors):
    store, _ = sensors
    rows = pd.DataFrame({ROW_KEY: ["a"], PREDICTION_TIME: [pd.Timestamp("2024-03-02 10:00")],
                         "sensor_id": ["s1"]})
    with pytest.raises(ValueError, match="timezone-aware"):
        historical_features(store, "sensors_v1", rows, ["sensor_id"], engine="duckdb", cutoff=True)
    rows = pd.DataFrame({ROW_KEY: ["a", "a"], PREDICTION_TIME: [_at(1)] * 2, "sensor_id": ["s1"] * 2})
    with pytest.raises(ValueError, match="duplicate row_key"):
        historical_features(store, "sensors_v1", rows, ["sensor_id"], engine="duckdb", cutoff=True)


class _AlteredFeast:
    """The real FeatureStore whose historical retrieval's frame comes back through `fault`
    (a fault injected into the real client: Feast's own retrieval runs as it is)."""

    def __init__(self, store, fault):
        self._store, self._fault = store, fault

    def __getattr__(self, name):
        return getattr(self._store, name)

    def get_historical_features(self, **kwargs):
        job = self._store.get_historical_features(**kwargs)
        return SimpleNamespace(to_df=lambda: self._fault(job.to_df()))


def test_feast_rows_are_put_in_entity_row_order_by_their_row_keys(sensors):
    """Feast's rows come in an order of its own: `_feast_features` puts them in entity row
    order by their keys, and refuses rows whose keys are not the entity rows' ones."""
    store, _ = sensors
    at = [_at(0, 11), _at(1, 12), _at(2, 11), _at(2, 23)]
    rows = pd.DataFrame({ROW_KEY: ["r0", "r1", "r2", "r3"], PREDICTION_TIME: at,
                         "sensor_id": ["s1", "s2", "s1", "s3"]})
    want = historical_features(store, "sensors_v1", rows, ["sensor_id"], engine="duckdb",
                               cutoff=True)
    reversed_ = _AlteredFeast(store, lambda df: df.iloc[::-1])
    got = historical_features(reversed_, "sensors_v1", rows, ["sensor_id"], engine="feast",
                              cutoff=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert got["reading_fv__value"].tolist() == [1.0, 5.0, 3.0, 8.0]

    renamed = _AlteredFeast(store, lambda df: df.assign(**{ROW_KEY: df[ROW_KEY].replace("r2", "x")}))
    with pytest.raises(ValueError, match="returned no row for 1 of 4 entity rows, e.g. row_key 'r2'"):
        historical_features(renamed, "sensors_v1", rows, ["sensor_id"], engine="feast",
                            cutoff=True)


# --------------------------------------------------------------------------- object store


def test_offline_store_reads_remote_parquet_through_fsspec(tmp_path):
    """The project's Feast offline store (feature_store*.yaml) reads a non-local FileSource
    through the fsspec filesystem DuckDB gets registered (here fsspec's memory://, standing in
    for s3://): Feast's retrieval, the fast path and materialisation all see the same rows."""
    from datetime import datetime, timezone

    from feast import (
        Entity,
        FeatureService,
        FeatureStore,
        FeatureView,
        Field,
        FileSource,
        ValueType,
    )
    from feast.types import Float64

    base = f"memory://feast-offline-{tmp_path.name}/readings"
    ts = pd.to_datetime(["2024-01-01T00:00Z", "2024-01-02T00:00Z"], utc=True)
    storage.write_parquet(pd.DataFrame({"sensor_id": ["s1", "s1"], "value": [1.0, 2.0],
                                        "event_timestamp": ts, "created_timestamp": ts}),
                          f"{base}/date=1.parquet")
    (tmp_path / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": "remote_test", "provider": "local", "registry": str(tmp_path / "registry.db"),
        "offline_store": {"type": "pipelines.features.offline_store.FsspecDuckDBOfflineStore"},
        "online_store": {"type": "sqlite", "path": str(tmp_path / "online.db")},
        "entity_key_serialization_version": 3}))
    sensor = Entity(name="sensor", join_keys=["sensor_id"], value_type=ValueType.STRING)
    fv = FeatureView(name="reading_fv", entities=[sensor], ttl=timedelta(days=2),
                     schema=[Field(name="value", dtype=Float64)],
                     source=FileSource(name="readings", path=f"{base}/*.parquet",
                                       timestamp_field="event_timestamp",
                                       created_timestamp_column="created_timestamp"))
    store = FeatureStore(repo_path=str(tmp_path))
    store.apply([sensor, fv, FeatureService(name="svc", features=[fv])])
    rows = pd.DataFrame({ROW_KEY: ["a", "b"], "sensor_id": ["s1", "s1"],
                         PREDICTION_TIME: pd.to_datetime(["2024-01-01T12:00Z", "2024-01-03T00:00Z"],
                                                         utc=True)})
    feast = historical_features(store, "svc", rows, ["sensor_id"], engine="feast", cutoff=True)
    fast = historical_features(store, "svc", rows, ["sensor_id"], engine="duckdb", cutoff=True)
    assert feast["reading_fv__value"].tolist() == fast["reading_fv__value"].tolist() == [1.0, 2.0]
    store.materialize(start_date=datetime(2023, 12, 31, tzinfo=timezone.utc),
                      end_date=datetime(2024, 1, 3, tzinfo=timezone.utc))
    online = store.get_online_features(features=["reading_fv:value"],
                                       entity_rows=[{"sensor_id": "s1"}]).to_dict()
    assert online["value"] == [2.0]


def test_feast_config_selects_online_store_and_registry(monkeypatch, tmp_path):
    """FEAST_ONLINE_STORE picks the yaml (unset: Redis if FEAST_REDIS_CONNECTION is set); the
    registry defaults beside the data when the data is in an object store."""
    from dataclasses import replace as dc_replace

    from feast.repo_config import load_repo_config

    from pipelines.core.settings import get_settings
    from pipelines.features import store as features

    for name in ("FEAST_ONLINE_STORE", "FEAST_REDIS_CONNECTION", "FEAST_REGISTRY_PATH",
                 "FEAST_ONLINE_PATH", "FEAST_STATE_DIR", "FEAST_S3_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    def local():  # the environment is read into Settings: read it again after each change
        return dc_replace(get_settings(), state_uri=str(tmp_path / "state"),
                          data_uri=str(tmp_path / "state" / "data"))

    assert features.online_store_kind(local()) == "sqlite"
    env = features.feast_env(local())
    assert env["FEAST_REGISTRY_PATH"] == f"{tmp_path}/state/feast/registry.db"
    assert env["FEAST_ONLINE_PATH"] == f"{tmp_path}/state/feast/online.db"
    assert features.feast_yaml(local()).endswith("/feature_store.yaml")

    monkeypatch.setenv("FEAST_ONLINE_STORE", "redis")
    with pytest.raises(ValueError, match="FEAST_REDIS_CONNECTION"):
        features.feast_env(local())
    monkeypatch.delenv("FEAST_ONLINE_STORE")
    monkeypatch.setenv("FEAST_REDIS_CONNECTION", "127.0.0.1:6390,password=rsecret,db=1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    assert features.online_store_kind(local()) == "redis"
    remote = dc_replace(local(), data_uri="s3://bucket/data")
    env = features.feast_env(remote)
    assert env == {"FEAST_REGISTRY_PATH": "s3://bucket/data/feast/registry.db",
                   "FEAST_S3_ENDPOINT_URL": "http://127.0.0.1:8333"}
    path = features.feast_yaml(remote)
    assert path.endswith("/feature_store.redis.yaml")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = load_repo_config(Path(remote.feature_repo), Path(path))
    assert config.online_store.type == "redis" and config.online_store.skip_dedup is True
    assert config.online_store.connection_string == "127.0.0.1:6390,password=rsecret,db=1"
    assert config.offline_store.type == "pipelines.features.offline_store.FsspecDuckDBOfflineStore"
    assert config.registry.path == "s3://bucket/data/feast/registry.db"
    monkeypatch.setenv("FEAST_ONLINE_STORE", "bigtable")
    with pytest.raises(ValueError, match="FEAST_ONLINE_STORE"):
        features.online_store_kind(local())


# -- the Arrow retrieval (batch scoring's path) -------------------------------------------------

def _arrow_rows(rows: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(rows, preserve_index=False)


@pytest.mark.parametrize("engine", ["duckdb", "feast"])
def test_arrow_retrieval_equals_the_pandas_retrieval(sensors, engine):
    """`historical_features_table` returns exactly the columns `historical_features` converts
    to pandas (entity rows first, then the features; nulls, late rows, expired and unknown
    entities, duplicate times and a null join key included), with the same checks."""
    from pipelines.features.retrieval import historical_features_table

    store, _ = sensors
    at = [_at(0, 11), _at(1, 0), _at(1, 12), _at(2, 11), _at(2, 23), _at(5), _at(1, 12), _at(3)]
    rows = pd.DataFrame({ROW_KEY: [f"r{i}" for i in range(len(at))], PREDICTION_TIME: at,
                         "sensor_id": pd.array(["s1", "s2", "s1", "s1", "s3", "s1", None, "s9"],
                                               dtype="string"),
                         "distance": [1.0, 2.0, None, 4.0, 5.0, 6.0, 7.0, 8.0]})
    want = historical_features(store, "sensors_v1", rows, ["sensor_id"], engine=engine,
                               cutoff=True)
    got = historical_features_table(store, "sensors_v1", _arrow_rows(rows), ["sensor_id"],
                                    engine=engine, cutoff=True)
    assert got.column_names == list(want.columns)
    pd.testing.assert_frame_equal(got.to_pandas(), want)
    assert got["device_fv__model_year"].null_count == 2  # the null key and the unknown sensor

    naive = rows.assign(**{PREDICTION_TIME: [t.tz_localize(None) for t in at]})
    with pytest.raises(ValueError, match="timezone-aware"):
        historical_features_table(store, "sensors_v1", _arrow_rows(naive), ["sensor_id"],
                                  engine=engine, cutoff=True)
    twice = rows.assign(**{ROW_KEY: ["a"] * len(at)})
    with pytest.raises(ValueError, match="duplicate row_key"):
        historical_features_table(store, "sensors_v1", _arrow_rows(twice), ["sensor_id"],
                                  engine=engine, cutoff=True)


@pytest.mark.parametrize("keys", [["a", "b", "c"], ["a", "b", "a"], [None, "a", "b"],
                                  [None, None, "b"], [None], [], ["a", None, "a", None]])
def test_row_keys_are_counted_as_pyarrow_counts_them(keys):
    """The entity rows' duplicate check (DuckDB) counts distinct row keys as
    `pyarrow.compute.count_distinct(mode="all")` does: a null is one value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines.core import duck
    from pipelines.features.retrieval import _distinct

    column = pa.chunked_array([pa.array(keys, pa.string())])
    assert _distinct(duck.connect(), column) == pc.count_distinct(column, mode="all").as_py()


def test_arrow_retrieval_check_judges_dtypes_as_the_pandas_check():
    """`check_retrieval_table` accepts and refuses exactly what `check_retrieval` does on the
    frame `to_pandas()` gives (an Int64 feature with nulls arrives as float, and so on)."""
    import pyarrow as pa

    from pipelines.features.retrieval import check_retrieval_table

    rows = pa.table({ROW_KEY: ["a", "b"]})
    cases = [({"plane_fv__engines": pa.array([2.0, None]), "plane_fv__year": [2001.0, None]},
              None),
             ({"plane_fv__engines": pa.array([2, None]), "plane_fv__year": pa.array([2001, None])},
              None),  # ints with nulls: float64 in pandas
             ({"plane_fv__engines": [2, 1], "plane_fv__year": pa.array([2001, 2002])},
              "plane_fv.year: declared Float64"),  # ints without nulls: int64 in pandas
             ({"plane_fv__engines": [2.5, 1.0], "plane_fv__year": ["2001", "x"]},
              "plane_fv.engines: declared Int64")]
    for columns, error in cases:
        out = rows
        for name, values in columns.items():
            out = out.append_column(name, pa.chunked_array([values]) if isinstance(
                values, pa.Array) else pa.chunked_array([pa.array(values)]))
        pandas_error = None
        try:
            check_retrieval(out.to_pandas(), rows.to_pandas(), _schema())
        except TypeError as exc:
            pandas_error = str(exc)
        if error is None:
            assert pandas_error is None
            check_retrieval_table(out, rows, _schema())
        else:
            assert error in pandas_error
            with pytest.raises(TypeError, match=error):
                check_retrieval_table(out, rows, _schema())
    three = pa.table({ROW_KEY: ["a", "b", "b"], "plane_fv__engines": [1, 2, 2],
                      "plane_fv__year": [1.0, 2.0, 2.0]})
    for check, args in ((check_retrieval, (three.to_pandas(), rows.to_pandas())),
                        (check_retrieval_table, (three, rows))):
        with pytest.raises(ValueError, match="feature retrieval returned 3 rows for 2 entity"):
            check(*args, _schema())


# -- request-time features: one function offline, in batch scoring and online -----------------

def _spec(**features):
    from pipelines.core.specs import parse_request_spec

    return parse_request_spec(json.dumps(features))


CALENDAR = {"kind": "calendar", "input": PREDICTION_TIME, "timezone": "Europe/Berlin",
            "fields": ["hour", "weekday"]}
# a request column other than the prediction time, with missing values
REACH = {"kind": "expression", "inputs": ["distance"], "expr": "log1p(distance)",
         "dtype": "float64"}
BUCKET = {"kind": "expression", "inputs": ["distance"], "expr": "floor(distance / 2)",
          "dtype": "int64", "field": "half", "on_missing": "fill", "fill_value": -1}


def _request_rows() -> pd.DataFrame:
    at = [_at(0, 11), _at(1, 0), _at(1, 12), _at(2, 11), _at(2, 23), _at(5), _at(1, 12), _at(3)]
    return pd.DataFrame({ROW_KEY: [f"r{i}" for i in range(len(at))], PREDICTION_TIME: at,
                         "sensor_id": pd.array(["s1", "s2", "s1", "s1", "s3", "s1", None, "s9"],
                                               dtype="string"),
                         "distance": [1.0, 2.0, None, 4.0, 5.0, 6.0, 7.0, 8.0]})


def test_request_features_are_the_same_offline_in_batch_scoring_and_serving(sensors):
    """Training's retrieval (pandas), batch scoring's (Arrow) and the serving function (entity
    keys + request fields as JSON) compute the same request-time features, with the same
    view features beside them; a non-time request column with missing values included."""
    from pipelines.features.retrieval import historical_features_table
    from pipelines.features.serving import serving_features

    store, _ = sensors
    spec = _spec(calendar=CALENDAR, reach=REACH, bucket=BUCKET)
    rows = _request_rows()
    train = historical_features(store, "sensors_v1", rows, ["sensor_id"], engine="duckdb",
                                cutoff=True, request_time=spec)
    added = ["calendar__hour", "calendar__weekday", "reach__value", "bucket__half"]
    assert list(train.columns)[-4:] == added
    # 2024-03-01 is a Friday; 11:00 UTC is 12:00 in Berlin (CET)
    assert train.loc[0, ["calendar__hour", "calendar__weekday"]].tolist() == [12, 4]
    assert _nullable(train["reach__value"])[:3] == [pytest.approx(np.log1p(1.0)),
                                                    pytest.approx(np.log1p(2.0)), None]
    assert train["bucket__half"].tolist() == [0, 1, -1, 2, 2, 3, 3, 4]
    for engine in ("duckdb", "feast"):
        batch = historical_features_table(store, "sensors_v1", _arrow_rows(rows), ["sensor_id"],
                                          engine=engine, cutoff=True, request_time=spec)
        pd.testing.assert_frame_equal(batch.to_pandas(), train)

    for day in range(3):
        materialize_interval(store, D0 + timedelta(days=day), lateness_days=1)
    requests = [{"sensor_id": r.sensor_id if pd.notna(r.sensor_id) else None,
                 PREDICTION_TIME: r.event_timestamp.isoformat(),
                 "distance": None if pd.isna(r.distance) else r.distance}
                for r in rows.itertuples(index=False)]
    served = serving_features(store, "sensors_v1", spec, json.loads(json.dumps(requests)),
                              as_of=_at(3))
    for col in added:
        assert _nullable(served[col]) == _nullable(train[col]), col
    # the view features come from the online store (as of the request): s1's latest reading
    assert served["reading_fv__value"].tolist()[:1] == [3.0]
    assert served.loc[6, "reading_fv__value"] is None  # a missing key matches nothing


DST = [  # zone, UTC instant, local hour, weekday (Monday = 0)
    ("America/New_York", "2024-03-10T06:30:00Z", 1, 6),  # EST
    ("America/New_York", "2024-03-10T07:30:00Z", 3, 6),  # EDT: 02:30 does not exist
    ("America/New_York", "2024-11-03T05:30:00Z", 1, 6),  # EDT: the first 01:30
    ("America/New_York", "2024-11-03T06:30:00Z", 1, 6),  # EST: the second 01:30
    ("America/New_York", "2024-11-03T07:30:00Z", 2, 6),
    ("America/New_York", "2013-01-05T03:30:00Z", 22, 4),  # Saturday in UTC, Friday there
    ("Europe/Berlin", "2024-03-31T00:30:00Z", 1, 6),  # CET
    ("Europe/Berlin", "2024-03-31T01:30:00Z", 3, 6),  # CEST
    ("Europe/Berlin", "2024-10-27T00:30:00Z", 2, 6),  # CEST: the first 02:30
    ("Europe/Berlin", "2024-10-27T01:30:00Z", 2, 6),  # CET: the second 02:30
    ("Europe/Berlin", "2024-10-27T02:30:00Z", 3, 6),
]


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin"])
def test_calendar_hours_follow_daylight_saving_time(zone):
    import pyarrow as pa

    from pipelines.features import request

    cases = [c for c in DST if c[0] == zone]
    spec = _spec(cal={**CALENDAR, "timezone": zone})
    utc = pd.to_datetime([c[1] for c in cases], utc=True)
    want = {"cal__hour": [c[2] for c in cases], "cal__weekday": [c[3] for c in cases]}
    frame = pd.DataFrame({PREDICTION_TIME: utc})
    for got in (request.compute(spec, frame),  # training
                request.compute(spec, pa.table({PREDICTION_TIME: pa.array(utc)})).to_pandas(),
                # serving: the same instants written with the zone's own offsets
                request.compute(spec, request.serving_frame(
                    [{PREDICTION_TIME: t.tz_convert(zone).isoformat()} for t in utc], spec))):
        assert {c: got[c].tolist() for c in want} == want


@pytest.mark.parametrize("on_missing", ["propagate", "fill", "error"])
def test_calendar_fields_of_missing_times_follow_on_missing(on_missing):
    """A missing request time (null text, NaT) is a missing field under `propagate`, the fill
    value under `fill`, an error naming feature, field and row under `error`; whatever zone the
    times were given in, the fields are the calendar zone's."""
    from pipelines.features import request

    cal = {**CALENDAR, "timezone": "America/Chicago", "on_missing": on_missing,
           **({"fill_value": -1} if on_missing == "fill" else {})}
    spec = _spec(cal=cal)
    given = [pd.Series(["2013-06-01T10:00:00Z", None, "2013-06-02T23:30:00-05:00"]),
             pd.Series(pd.to_datetime(["2013-06-01T10:00:00Z", None, "2013-06-03T04:30:00Z"],
                                      utc=True).tz_convert("Asia/Tokyo"))]
    for times in given:
        frame = pd.DataFrame({PREDICTION_TIME: times})
        if on_missing == "error":
            with pytest.raises(ValueError, match=r"features\.request_time\.cal\.hour "
                                                 r"\(event_timestamp in America/Chicago\): 1 "
                                                 r"rows .* e\.g\. rows \[1\]"):
                request.compute(spec, frame)
            continue
        got = request.compute(spec, frame)
        gap = None if on_missing == "propagate" else -1
        assert [None if pd.isna(v) else v for v in got["cal__hour"]] == [5, gap, 23]
        assert [None if pd.isna(v) else v for v in got["cal__weekday"]] == [5, gap, 6]
        assert got["cal__hour"].dtype == ("float64" if gap is None else "int64")


@pytest.mark.parametrize("value", ["2024-03-10 01:30:00", pd.Timestamp("2024-03-10 01:30")])
def test_naive_request_times_are_refused_not_read_as_utc(value):
    from pipelines.features import request

    spec = _spec(cal=CALENDAR)
    with pytest.raises(ValueError, match="refusing to assume UTC"):
        request.compute(spec, pd.DataFrame({PREDICTION_TIME: [value]}))
    with pytest.raises(ValueError, match=r"request-time feature 'cal' reads \['event_timestamp'\]"):
        request.compute(spec, pd.DataFrame({"other": [1]}))
    with pytest.raises(ValueError, match=r"lack the request columns \['event_timestamp'\]"):
        request.serving_frame([{"sensor_id": "s1"}], spec)


def test_skew_check_covers_request_features_with_any_request_column(sensors, monkeypatch):
    """The skew check serves sampled entity rows (keys + request columns as JSON) through the
    serving function and compares the request-time features with the offline retrieval; a
    request column other than the prediction time is covered, and a serving path that reads
    a request column differently is caught, naming feature, entity and both values."""
    from pipelines.features import request

    store, _ = sensors
    for day in range(3):
        report = materialize_interval(store, D0 + timedelta(days=day), lateness_days=1)
    as_of = pd.Timestamp(report["as_of"]).to_pydatetime()
    spec = _spec(calendar=CALENDAR, reach=REACH, bucket=BUCKET)
    sample = _request_rows().drop(columns=[ROW_KEY])
    result = skew_report(store, "sensors_v1", ["sensor_id"], as_of, n=50, seed=0,
                         request_time=spec, request_rows=sample)
    assert result["mismatches"] == []
    assert result["request_rows"] == 8 and result["compared"] == 13 + 8 * 4
    assert_no_skew(result)
    # the prediction time as the only request column: every hour of the day before as_of
    hours = skew_report(store, "sensors_v1", ["sensor_id"], as_of, n=50, seed=0,
                        request_time=_spec(calendar=CALENDAR))
    assert hours["request_rows"] == 24 and hours["compared"] == 13 + 24 * 2

    real = request.serving_frame

    def misreads_distance(rows, spec):  # a server that takes the distance in other units
        frame = real(rows, spec)
        return frame.assign(distance=frame["distance"] * 1000)

    monkeypatch.setattr(request, "serving_frame", misreads_distance)
    skewed = skew_report(store, "sensors_v1", ["sensor_id"], as_of, n=50, seed=0,
                         request_time=spec, request_rows=sample)
    with pytest.raises(SkewError) as err:
        assert_no_skew(skewed)
    msg = str(err.value)
    assert "14 of 45 feature values differ" in msg  # reach and bucket of the 7 known distances
    assert ("reach__value for {'event_timestamp': '2024-03-01T11:00:00+00:00', 'distance': 1.0}: "
            f"online={float(np.log1p(1000.0))!r} offline={float(np.log1p(1.0))!r}") in msg


# -- the Feast registry holds data only ---------------------------------------------------------

PLANTED = '''
from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64

request = RequestSource(name="planted_request", schema=[Field(name="x", dtype=Float64)])


# the default value runs whenever the function's source is executed: in every reader
@on_demand_feature_view(sources=[request], schema=[Field(name="y", dtype=Float64)],
                        mode="pandas")
def planted(inputs, _=__import__("pathlib").Path("MARKER").write_text("ran")):
    return inputs.rename(columns={"x": "y"})
'''


def test_a_registry_holding_code_is_refused_before_feast_runs_it(tmp_path, monkeypatch):
    """Anyone who can write the registry could add an on-demand view: Feast runs its function
    in every process that lists views. The project refuses such a registry when it opens the
    store (`get_store`), before Feast deserialises anything."""
    import importlib.util

    from feast import FeatureStore

    from pipelines.features.store import (
        RegistryCodeError,
        assert_data_only,
        get_store,
        registry_code,
    )

    store = _repo(tmp_path / "repo")
    assert_data_only(store)  # views, entities, sources and services: data only
    marker = tmp_path / "udf-ran"
    module = tmp_path / "planted.py"
    module.write_text(PLANTED.replace("MARKER", str(marker)))
    spec = importlib.util.spec_from_file_location("planted_udf", module)
    planted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(planted)
    store.apply([planted.request, planted.planted])
    marker.unlink()  # written when this test defined it: only readers matter here

    reader = FeatureStore(repo_path=str(tmp_path / "repo"))
    with pytest.raises(RegistryCodeError, match="OnDemandFeatureView at registry"
                                                ".on_demand_feature_views"):
        assert_data_only(reader)
    assert not marker.exists()
    found = registry_code(reader.registry.proto())
    assert any("bytes at registry.on_demand_feature_views" in f for f in found)
    # the project's own entry point refuses the same registry
    for name, value in {"FEAST_REGISTRY_PATH": str(tmp_path / "repo" / "registry.db"),
                        "FEAST_ONLINE_PATH": str(tmp_path / "online.db"),
                        "FEAST_ONLINE_STORE": "sqlite"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RegistryCodeError, match="planted"):
        get_store(get_settings())
    assert not marker.exists()
    # what the refusal prevents: any Feast reader runs the planted function
    reader.list_on_demand_feature_views()
    assert marker.read_text() == "ran"
