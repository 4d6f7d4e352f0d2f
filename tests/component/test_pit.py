"""Point-in-time retrieval: the fast path (pipelines.features.pit) against a brute-force reference and Feast.

- property: random entity and feature streams (ties on event time, late rows, rows created
  before their event time, TTL expiry, unknown and null entities, duplicate entity rows and
  duplicate feature rows) -> pit.retrieve equals a brute-force scan, row for row;
- the reference is Feast's semantics: Feast's own get_historical_features agrees with it on
  random streams too (a tiny local Feast repo);
- realistic data: the project's definitions and real flights, Feast == the fast path, with
  and without the created-timestamp cutoff, late corrections and ties injected;
- leakage and time zones.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.core import storage
from pipelines.data.events import PREDICTION_TIME, ROW_KEY
from pipelines.features import pit

REPO = Path(__file__).resolve().parents[2]
BASE = datetime(2024, 3, 9, tzinfo=UTC)  # a DST weekend in New York: UTC must not care
KEYS = ["a", "b", "c"]
TTLS = {"nottl_fv": None, "short_fv": timedelta(hours=1), "long_fv": timedelta(hours=4)}


def _t(hours: int) -> datetime:
    return BASE + timedelta(hours=hours)


# -- the reference: a brute-force scan of Feast's semantics -------------------------------------

def reference(entities: list[tuple], rows: list[tuple], ttl: timedelta | None, cutoff: bool,
              created: bool = True) -> list[int | None]:
    """For each (key, T): the value of the latest (event, created) row with event <= T,
    created <= T if cutoff, event >= T - ttl if ttl; None if there is none."""
    out = []
    for key, at in entities:
        seen = [r for r in rows if key is not None and r[0] == key and r[1] <= at
                and (not (cutoff and created) or r[2] <= at) and (not ttl or r[1] >= at - ttl)]
        out.append(max(seen, key=lambda r: (r[1], r[2]))[3] if seen else None)
    return out


def _write_source(path: Path, rows: list[tuple], key: str = "k", created: bool = True) -> None:
    cols = {key: pa.array([r[0] for r in rows], pa.string()),
            "event_timestamp": pa.array([r[1] for r in rows], pa.timestamp("us", "UTC")),
            "value": pa.array([r[3] for r in rows], pa.int64()),
            "half": pa.array([r[3] / 2 for r in rows], pa.float64())}
    if created:
        cols["created_timestamp"] = pa.array([r[2] for r in rows], pa.timestamp("us", "UTC"))
    pq.write_table(pa.table(cols), path)


def _spec(name: str, path: Path, key: str, ttl: timedelta | None, created: bool = True):
    return pit.ViewSpec(name=name, path=str(path), timestamp_field="event_timestamp",
                        created_timestamp_column="created_timestamp" if created else None,
                        ttl=ttl, join_keys=((key, key),), features=("value", "half"))


def _values(series: pd.Series) -> list[int | None]:
    return [None if pd.isna(v) else int(v) for v in series]


# feature rows: (key, event hour, created delay in hours, value); delay < 0: known before its
# event time (a forecast), 0: on time, > 0: a late row
feature_row = st.tuples(st.sampled_from(KEYS), st.integers(0, 24),
                        st.sampled_from([-2, 0, 0, 0, 0, 1, 3, 8]), st.integers(0, 10_000))
entity_row = st.tuples(st.sampled_from([*KEYS, "unknown", None]), st.integers(-1, 32))


def _stream(raw: list[tuple], dup: list[int]) -> list[tuple]:
    """Distinct (key, event, created) rows, plus exact duplicates of some (harmless)."""
    unique = {}
    for key, hour, delay, value in raw:
        unique.setdefault((key, _t(hour), _t(hour + delay)), value)
    rows = [(*k, v) for k, v in unique.items()]
    return rows + [rows[i % len(rows)] for i in dup] if rows else rows


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("pit")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.lists(feature_row, max_size=30), dup=st.lists(st.integers(0, 100), max_size=3),
       raw2=st.lists(feature_row, max_size=10), ents=st.lists(entity_row, min_size=1, max_size=20),
       ttl=st.sampled_from([None, timedelta(0), timedelta(hours=1), timedelta(hours=4)]),
       cutoff=st.booleans())
def test_retrieval_equals_brute_force(scratch, raw, dup, raw2, ents, ttl, cutoff):
    rows = _stream(raw, dup)
    # a second view without created timestamps, keyed by another entity column
    rows2 = [(k, _t(h), _t(h), v) for (k, h), v in {(k, h): v for k, h, _, v in raw2}.items()]
    _write_source(scratch / "v1.parquet", rows)
    _write_source(scratch / "v2.parquet", rows2, key="k2", created=False)
    entities = pd.DataFrame({"k": [k for k, _ in ents], "k2": [k for k, _ in reversed(ents)],
                             PREDICTION_TIME: [_t(h) for _, h in ents]})
    entities[PREDICTION_TIME] = pd.to_datetime(entities[PREDICTION_TIME], utc=True)
    specs = [_spec("v1", scratch / "v1.parquet", "k", ttl),
             _spec("v2", scratch / "v2.parquet", "k2", ttl, created=False)]
    out = pit.retrieve(entities, specs, PREDICTION_TIME, cutoff=cutoff).to_pandas()

    assert len(out) == len(entities)  # exactly one row per entity row, duplicates included
    pairs = list(zip(entities["k"], entities[PREDICTION_TIME]))
    assert _values(out["v1__value"]) == reference(pairs, rows, ttl, cutoff)
    pairs2 = list(zip(entities["k2"], entities[PREDICTION_TIME]))
    assert _values(out["v2__value"]) == reference(pairs2, rows2, ttl, cutoff, created=False)
    assert (out["v1__half"].isna() == out["v1__value"].isna()).all()


def test_no_feature_value_from_after_the_prediction_time(scratch):
    """Values encode their own event and created times: none may be later than the row's time."""
    rng = np.random.default_rng(7)
    n = 5_000
    ts = BASE + pd.to_timedelta(rng.integers(0, 7 * 24 * 60, n), unit="min")
    created = ts + pd.to_timedelta(rng.choice([0, 0, 0, 30, 600, 3000], n), unit="min")
    src = pd.DataFrame({"k": rng.choice(KEYS, n), "event_timestamp": ts, "created_timestamp": created,
                        "value": ts.astype("int64") // 10**9, "half": created.astype("int64") // 10**9})
    src.to_parquet(scratch / "leak.parquet")
    at = BASE + pd.to_timedelta(rng.integers(0, 8 * 24 * 60, 2_000), unit="min")
    entities = pd.DataFrame({"k": rng.choice(KEYS, 2_000), PREDICTION_TIME: at})
    spec = _spec("leak", scratch / "leak.parquet", "k", None)
    for cutoff in (True, False):
        out = pit.retrieve(entities, [spec], PREDICTION_TIME, cutoff=cutoff).to_pandas()
        limit = entities[PREDICTION_TIME].astype("int64") // 10**9
        assert (out["leak__value"].dropna() <= limit[out["leak__value"].notna()]).all()
        if cutoff:  # nor a value written after it
            assert (out["leak__half"].dropna() <= limit[out["leak__half"].notna()]).all()
        else:  # without the cutoff late corrections do leak: the trap the cutoff closes
            assert (out["leak__half"] > limit).any()


# -- time zones ---------------------------------------------------------------------------------

def test_naive_entity_timestamps_are_rejected(scratch):
    _write_source(scratch / "tz.parquet", [("a", _t(0), _t(0), 1)])
    entities = pd.DataFrame({"k": ["a"], PREDICTION_TIME: [pd.Timestamp("2024-03-09 05:00")]})
    with pytest.raises(ValueError, match="timezone-aware"):
        pit.retrieve(entities, [_spec("tz", scratch / "tz.parquet", "k", None)], PREDICTION_TIME)


def test_naive_source_timestamps_are_rejected(scratch):
    pd.DataFrame({"k": ["a"], "event_timestamp": [pd.Timestamp("2024-03-09 05:00")],
                  "created_timestamp": [pd.Timestamp("2024-03-09 05:00")], "value": [1],
                  "half": [0.5]}).to_parquet(scratch / "naive.parquet")
    entities = pd.DataFrame({"k": ["a"], PREDICTION_TIME: [_t(10)]})
    with pytest.raises(ValueError, match="naive timestamp"):
        pit.retrieve(entities, [_spec("naive", scratch / "naive.parquet", "k", None)],
                     PREDICTION_TIME)


def test_other_time_zones_are_normalised_to_the_same_instant(scratch):
    _write_source(scratch / "tz.parquet", [("a", _t(0), _t(0), 1), ("a", _t(5), _t(5), 2)])
    at = pd.Series([_t(4), _t(5)]).dt.tz_convert("America/New_York")  # 5 hours apart from UTC
    out = pit.retrieve(pd.DataFrame({"k": ["a", "a"], PREDICTION_TIME: at}),
                       [_spec("tz", scratch / "tz.parquet", "k", None)], PREDICTION_TIME)
    assert out.column("tz__value").to_pylist() == [1, 2]


@pytest.mark.parametrize("keys,expected", [([None, None], [None, None]),
                                           ([float("nan")] * 2, [None, None]),
                                           (["a", None], [1, None]),
                                           (pd.array([pd.NA, "a"], dtype="string"), [None, 1])])
def test_null_join_keys_match_nothing(scratch, keys, expected):
    _write_source(scratch / "keys.parquet", [("a", _t(0), _t(0), 1)])
    entities = pd.DataFrame({"k": keys, PREDICTION_TIME: [_t(1), _t(2)]})
    out = pit.retrieve(entities, [_spec("keys", scratch / "keys.parquet", "k", None)],
                       PREDICTION_TIME)
    assert out.column("keys__value").to_pylist() == expected


# -- the order of the output rows ---------------------------------------------------------------

class _Swapping:
    """A real DuckDB connection whose query results come back with their first two rows
    swapped (a fault injected into the real client: the join's own SQL runs as it is)."""

    def __init__(self, con):
        self._con = con

    def __getattr__(self, name):
        return getattr(self._con, name)

    def sql(self, query: str):
        table = self._con.sql(query).to_arrow_table()
        return SimpleNamespace(
            to_arrow_table=lambda: table.take([1, 0, *range(2, table.num_rows)]))


@pytest.mark.parametrize("arrow", [False, True], ids=["retrieve", "retrieve_table"])
def test_rows_out_of_entity_row_order_fail_the_join(scratch, arrow):
    _write_source(scratch / "order.parquet", [("a", _t(0), _t(0), 1), ("b", _t(0), _t(0), 2)])
    entities = pd.DataFrame({"k": ["a", "b", "a"],
                             PREDICTION_TIME: pd.to_datetime([_t(1)] * 3, utc=True)})
    retrieve = pit.retrieve_table if arrow else pit.retrieve
    ents = pa.Table.from_pandas(entities, preserve_index=False) if arrow else entities
    specs = [_spec("order", scratch / "order.parquet", "k", None)]
    out = retrieve(ents, specs, PREDICTION_TIME)
    assert out.column_names == ["order__value", "order__half"]  # the row numbers are dropped
    assert out.column("order__value").to_pylist() == [1, 2, 1]
    with duckdb.connect() as con:
        swapped = _Swapping(con)
        assert swapped.sql("SELECT 1 AS x UNION ALL SELECT 2 ORDER BY x").to_arrow_table() \
            .column("x").to_pylist() == [2, 1]  # the fault is real: unchecked, row 0 gets b's 2
        with pytest.raises(ValueError, match="point-in-time join returned rows out of "
                                             "entity-row order: output row 0 is entity row 1"):
            retrieve(ents, specs, PREDICTION_TIME, con=swapped)
    # no feature view (a service of request-time features only): no column, every entity row
    alone = retrieve(ents, [], PREDICTION_TIME)
    assert alone.column_names == [] and alone.num_rows == 3


# -- Feast itself agrees with the reference ----------------------------------------------------

def _feast_repo(path: Path, objects: list) -> "object":
    from feast import FeatureStore

    path.mkdir(parents=True, exist_ok=True)
    (path / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": "pit_test", "provider": "local", "registry": str(path / "registry.db"),
        "offline_store": {"type": "duckdb"},
        "online_store": {"type": "sqlite", "path": str(path / "online.db")},
        "entity_key_serialization_version": 3}))
    store = FeatureStore(repo_path=str(path))
    store.apply(objects)
    return store


@pytest.fixture(scope="module")
def tiny_feast(scratch):
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    source = FileSource(name="random_source", path=str(scratch / "random.parquet"),
                        timestamp_field="event_timestamp",
                        created_timestamp_column="created_timestamp")
    key = Entity(name="key", join_keys=["k"], value_type=ValueType.STRING)
    views = [FeatureView(name=name, entities=[key], ttl=ttl or timedelta(0), source=source,
                         schema=[Field(name="value", dtype=Int64), Field(name="half", dtype=Float64)])
             for name, ttl in TTLS.items()]
    service = FeatureService(name="random_service", features=views)
    _write_source(scratch / "random.parquet", [("a", _t(0), _t(0), 1)])
    return _feast_repo(scratch / "feast", [key, *views, service])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.lists(feature_row, min_size=1, max_size=30), ents=st.lists(entity_row, min_size=1,
                                                                         max_size=20))
def test_feast_agrees_with_the_reference(tiny_feast, scratch, raw, ents):
    from pipelines.features.retrieval import historical_features

    rows = _stream(raw, [0, 1])
    _write_source(scratch / "random.parquet", rows)
    entities = pd.DataFrame({ROW_KEY: [f"r{i}" for i in range(len(ents))],
                             PREDICTION_TIME: pd.to_datetime([_t(h) for _, h in ents], utc=True),
                             "k": pd.array([k for k, _ in ents], dtype="string")})
    pairs = list(zip(entities["k"].astype(object).where(entities["k"].notna(), None),
                     entities[PREDICTION_TIME]))
    for cutoff in (True, False):
        feast = historical_features(tiny_feast, "random_service", entities, ["k"],
                                    engine="feast", cutoff=cutoff)
        fast = historical_features(tiny_feast, "random_service", entities, ["k"],
                                   engine="duckdb", cutoff=cutoff)
        pd.testing.assert_frame_equal(feast, fast)
        for name, ttl in TTLS.items():
            assert _values(feast[f"{name}__value"]) == reference(pairs, rows, ttl, cutoff), name


# -- realistic data: the project's definitions on real flights ---------------------------------

@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    """Real flights, weather, planes and aggregates for a week of January 2013, Feast applied,
    with late corrections and ties injected into the weather and carrier sources."""
    tmp = tmp_path_factory.mktemp("pit_flights")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"MLOPS_STATE_URI": str(tmp / "state"),
                            "FEAST_REGISTRY_PATH": str(tmp / "state/feast/registry.db"),
                            "FEAST_ONLINE_PATH": str(tmp / "state/feast/online.db")}.items():
            mp.setenv(name, value)
        from pipelines.core.config import load_config
        from pipelines.core.settings import get_settings
        from pipelines.data.events import load_events
        from pipelines.data.ingest import ingest
        from pipelines.features.sources import build_feature_sources
        from pipelines.features.store import apply_definitions, get_store

        cfg, settings = load_config(REPO / "params.yaml"), get_settings()
        ingest(cfg, settings.landing_uri, date(2013, 1, 1), date(2013, 1, 8))
        for d in range(7):
            build_feature_sources(cfg, settings, date(2013, 1, 1) + timedelta(days=d))
        features = Path(settings.features_uri)
        weather = pd.read_parquet(features / "weather" / "date=2013-01-04.parquet")
        late = weather.sample(40, random_state=1).assign(
            temp=lambda d: d["temp"] + 100.0,  # corrections written 30 minutes late
            created_timestamp=lambda d: d["event_timestamp"] + timedelta(minutes=30))
        tie = weather.sample(10, random_state=2).assign(  # same event, created an hour later
            humid=-1.0, created_timestamp=lambda d: d["created_timestamp"] + timedelta(hours=1))
        storage.write_parquet(pd.concat([late, tie]), str(features / "weather" / "late.parquet"))
        # the 3 January statistics (valid from 5 January 00:00) corrected six hours later
        stats = pd.read_parquet(features / "carrier_stats" / "date=2013-01-03.parquet")
        storage.write_parquet(stats.assign(label_rate=0.999, created_timestamp=lambda d: d[
            "created_timestamp"] + timedelta(hours=6)), str(features / "carrier_stats" / "late.parquet"))
        apply_definitions(settings)
        events = load_events(cfg, settings.landing_uri, date(2013, 1, 3), date(2013, 1, 8))
        extra = events.sample(50, random_state=3).assign(  # duplicate entity rows, new row keys
            row_key=lambda d: d["row_key"] + "-dup")
        unknown = events.sample(50, random_state=4).assign(
            row_key=lambda d: d["row_key"] + "-unk", tailnum="NOPLANE", route="XXX-YYY")
        rows = pd.concat([events, extra, unknown], ignore_index=True)
        yield cfg, get_store(settings), rows


@pytest.mark.parametrize("cutoff", [True, False])
def test_fast_path_equals_feast_on_real_flights(flights, cutoff):
    from pipelines.features.retrieval import historical_features

    cfg, store, rows = flights
    keys, spec = list(cfg.features.join_keys), cfg.features.request_time
    feast = historical_features(store, cfg.features.service, rows, keys, engine="feast",
                                cutoff=cutoff, request_time=spec)
    fast = historical_features(store, cfg.features.service, rows, keys, engine="duckdb",
                               cutoff=cutoff, request_time=spec)
    pd.testing.assert_frame_equal(feast, fast)
    assert len(fast) == len(rows) and (fast[ROW_KEY] == rows[ROW_KEY]).all()
    assert fast["weather_fv__temp"].notna().mean() > 0.95  # the join found real values
    assert fast.loc[fast["tailnum"] == "NOPLANE", "plane_fv__seats"].isna().all()
    assert list(fast.columns)[-2:] == ["calendar__hour", "calendar__weekday"]
    corrected_stats = fast.loc[fast["carrier_stats_fv__label_rate"] == 0.999, PREDICTION_TIME]
    warm = fast["weather_fv__temp"] > 95  # January: only the injected corrections are that warm
    assert len(corrected_stats) > 0
    if cutoff:  # a correction counts from when it was written, never before
        assert corrected_stats.min() >= pd.Timestamp("2013-01-05T06:00Z")
        assert not warm.any()  # written after the only prediction times they could serve
    else:  # without the cutoff they rewrite history: the leak the cutoff closes
        assert corrected_stats.min() < pd.Timestamp("2013-01-05T06:00Z")
        assert warm.any()


def test_calendar_fields_are_local_to_the_origin(flights):
    from pipelines.features.retrieval import historical_features

    cfg, store, rows = flights
    one = rows.head(1).assign(**{PREDICTION_TIME: pd.Timestamp("2013-01-05T03:30Z")})
    out = historical_features(store, cfg.features.service, one, list(cfg.features.join_keys),
                              engine="duckdb", cutoff=True, request_time=cfg.features.request_time)
    # 03:30 UTC on Saturday 5 January is 22:30 on Friday in New York
    assert out["calendar__hour"].iloc[0] == 22 and out["calendar__weekday"].iloc[0] == 4


def test_specs_come_from_the_feast_definitions(flights):
    cfg, store, _ = flights
    by_name = {s.name: s for s in pit.service_views(store, cfg.features.service)}
    assert list(by_name) == ["weather_fv", "plane_fv", "carrier_stats_fv", "route_stats_fv"]
    assert by_name["weather_fv"].ttl == timedelta(hours=6) and by_name["plane_fv"].ttl is None
    assert by_name["plane_fv"].join_keys == (("tailnum", "tailnum"),)
    assert by_name["weather_fv"].created_timestamp_column == "created_timestamp"
    assert by_name["weather_fv"].path.endswith("features/weather/*.parquet")


def test_feast_apply_of_the_feature_repo_leaves_data_only_in_the_registry(flights):
    """The registry `feast apply` writes from feature_repo/ holds entities, sources, feature
    views and services: no on-demand or stream view, no transformation, no pickled bytes
    (read from the registry proto itself, before Feast deserialises anything)."""
    from feast.protos.feast.core.Registry_pb2 import Registry

    from pipelines.features.store import registry_code

    cfg, store, _ = flights
    proto = Registry.FromString(Path(store.config.registry.path).read_bytes())
    assert registry_code(proto) == []
    assert not proto.on_demand_feature_views and not proto.stream_feature_views
    assert {v.spec.name for v in proto.feature_views} == {
        "weather_fv", "plane_fv", "carrier_stats_fv", "route_stats_fv"}
    assert {s.spec.name for s in proto.feature_services} >= {cfg.features.service}
    assert store.list_on_demand_feature_views() == []


def test_missing_source_files_fail_loudly(scratch):
    entities = pd.DataFrame({"k": ["a"], PREDICTION_TIME: [_t(1)]})
    with pytest.raises(FileNotFoundError, match="gone: no source files"):
        pit.retrieve(entities, [_spec("gone", scratch / "nothing-here" / "*.parquet", "k", None)],
                     PREDICTION_TIME)



def test_check_skew_serves_sampled_events_with_the_configured_request_features(flights):
    """The materialisation DAG's check on the project's own definitions: the views online vs
    offline, and the request-time calendar of 200 sampled events of the day as serving
    computes it (from the rows as JSON) vs the training retrieval."""
    from datetime import date

    from pipelines.core.settings import get_settings
    from pipelines.features.online import check_skew, materialize

    cfg, _, _ = flights
    settings = get_settings()
    done = materialize(cfg, settings, date(2013, 1, 6))
    summary = check_skew(cfg, settings, done["as_of"])
    n = cfg.features.skew_sample_entities
    assert summary["request_rows"] == n and summary["compared"] > n * 2


def test_the_next_intervals_sources_built_between_materialize_and_check_are_no_skew(flights):
    """Intervals are half-open: the weather row stamped exactly at 8 January 00:00 is the next
    interval's. The scoring DAG, running beside the materialisation, may build 8 January's
    sources between `materialize` and `check_skew` of 7 January; the check must still compare
    the same rows the store was loaded with (it failed on this race before)."""
    from datetime import date

    from pipelines.core.settings import get_settings
    from pipelines.data.ingest import ingest
    from pipelines.features.online import check_skew, materialize
    from pipelines.features.sources import build_feature_sources

    cfg, _, _ = flights
    settings = get_settings()
    done = materialize(cfg, settings, date(2013, 1, 7))
    assert done["as_of"] == "2013-01-07T23:59:59.999999+00:00"
    ingest(cfg, settings.landing_uri, date(2013, 1, 8), date(2013, 1, 9))
    build_feature_sources(cfg, settings, date(2013, 1, 8))
    weather = pd.read_parquet(f"{settings.features_uri}/weather/date=2013-01-08.parquet")
    assert (weather["event_timestamp"] == pd.Timestamp("2013-01-08", tz="UTC")).any()
    summary = check_skew(cfg, settings, done["as_of"])
    assert summary["compared"] > 0


def test_online_read_equals_feasts_get_online_features(flights):
    """`serving.online_read` (Feast's steps without its response protos) gives exactly what
    `get_online_features(...).to_dict(include_event_timestamps=True)` gives: every view of the
    service at once, known entities, repeated ones, unknown ones (NOPLANE, XXX-YYY), values and
    event seconds; and one view alone."""
    from datetime import date

    from pipelines.core.settings import get_settings
    from pipelines.features.online import materialize
    from pipelines.features.serving import online_read

    cfg, store, rows = flights
    materialize(cfg, get_settings(), date(2013, 1, 5))
    specs = pit.service_views(store, cfg.features.service)
    refs = [f"{s.name}:{f}" for s in specs for f in s.features]
    keys = list(dict.fromkeys(ek for s in specs for _, ek in s.join_keys))
    sample = pd.concat([rows.head(150), rows.tail(60), rows.head(5)])  # tail: the unknown ones
    entity_rows = [{k: str(r[k]) for k in keys} for _, r in sample.iterrows()]
    want = store.get_online_features(features=refs, entity_rows=entity_rows,
                                     full_feature_names=True).to_dict(include_event_timestamps=True)
    got = online_read(store, refs, entity_rows)
    features = {k: v for k, v in want.items() if k not in keys and k.removesuffix("__ts")
                not in keys}
    assert got == features
    plane = [c for c in got if c.startswith("plane_fv__") and not c.endswith("__ts")][0]
    assert None in got[plane] and any(v is not None for v in got[plane])  # known and unknown
    one = [r for r in refs if r.startswith("carrier_stats_fv:")]
    want_one = store.get_online_features(features=one, entity_rows=entity_rows[:20],
                                         full_feature_names=True).to_dict(
        include_event_timestamps=True)
    assert online_read(store, one, entity_rows[:20]) == {
        k: v for k, v in want_one.items() if k.removesuffix("__ts") not in keys}


# -- lineage: a model is scored with the request-time spec it was trained with -----------------

def test_a_model_is_scored_with_the_request_spec_it_was_trained_with(flights, tmp_path,
                                                                     monkeypatch):
    """Training records the request-time spec (in the feature-service hash and a version tag);
    batch scoring computes the features by that spec, so a later change of params.yaml (here
    the calendar's time zone) does not silently change an old model's inputs; a task payload
    claiming another spec than the registry's is refused."""
    import json
    from datetime import date

    from pipelines.core import locations, storage
    from pipelines.core.settings import get_settings
    from pipelines.core.specs import parse_request_spec, request_spec_json
    from pipelines.features.store import feature_service_hash
    from pipelines.model.registry import RegistryError
    from pipelines.model.training import train_and_register
    from pipelines.model.training_set import build_training_set
    from pipelines.scoring import run
    from pipelines.scoring.io import read_table

    cfg, store, _ = flights
    settings = get_settings()
    # MLflow exports the tracking URI it is given: restored afterwards for later tests
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    est = cfg.training.estimator.model_copy(update={"params": {
        **cfg.training.estimator.params, "n_estimators": 10}})
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"estimator": est})})
    trained_with = cfg.features.request_time
    assert trained_with["calendar"].timezone == "America/New_York"
    ts = build_training_set(cfg, settings, date(2013, 1, 2), date(2013, 1, 6),
                            str(tmp_path / "train.parquet"))
    assert ts["request_features"] == request_spec_json(trained_with)
    assert ts["feature_service_hash"] == feature_service_hash(store, cfg.features.service,
                                                              trained_with)
    trained = train_and_register(cfg, settings, ts, {"run_id": "pit-test"})
    model = run.describe_version(settings, cfg.registry.model_name, trained["version"])
    assert {"calendar__hour", "calendar__weekday"} <= set(model["numeric"])
    assert parse_request_spec(model["request_features"]) == trained_with

    # params.yaml changes later: the calendar in Berlin. A new model would hash differently...
    berlin = {"calendar": trained_with["calendar"].model_copy(update={"timezone": "Europe/Berlin"})}
    later = cfg.model_copy(update={"features": cfg.features.model_copy(update={
        "request_time": berlin})})
    assert feature_service_hash(store, cfg.features.service, berlin) != ts["feature_service_hash"]
    # ... but the old model is still scored with New York hours
    day = date(2013, 1, 7)
    chunks = run.plan_interval(later, settings, day)
    parts = [run.score_chunk(later, settings, day, c, model) for c in chunks]
    scored = pd.concat([read_table(storage.join(locations.predictions(settings, day), p["file"]))
                        .to_pandas() for p in parts], ignore_index=True)
    assert len(scored) > 500
    local = scored[PREDICTION_TIME].dt.tz_convert("America/New_York")
    assert (scored["calendar__hour"] == local.dt.hour).all()
    assert (scored["calendar__weekday"] == local.dt.weekday).all()
    assert (scored["calendar__hour"] != scored[PREDICTION_TIME].dt.tz_convert(
        "Europe/Berlin").dt.hour).all()

    tampered = {**model, "request_features": json.dumps({})}
    with pytest.raises(RegistryError, match="the run pinned request_features="):
        run.score_chunk(later, settings, day, chunks[0], tampered)
