"""Point-in-time retrieval: the project's path vs DuckDB's ASOF JOIN, pandas' `merge_asof` and
polars' `join_asof` (and Feast's own) on the same data.

1,000,000 entity rows against 5,000,000 feature rows (100,000 entities, 10 features; about 2%
of entity rows name an unknown entity). The project's path is `pipelines.features.retrieval.
historical_features` (pandas in and out: training's entry point) over a real Feast repo
(FileSource -> FeatureView -> FeatureService, the definitions read from the registry) with the
fast engine and the created-timestamp cutoff on; the baselines are one DuckDB `ASOF LEFT JOIN`
over the same Parquet files, pandas `merge_asof` (both frames read from Parquet and sorted on
the event timestamp, as it requires) and polars `join_asof` (the same reads and sorts, the
result converted to pandas). `project_arrow` is the same retrieval by
`historical_features_table`, batch scoring's entry point: the entity rows read as Arrow (as the
DuckDB side reads them, no pandas conversion of the row keys), the result converted to pandas
like the others; its ratios are reported beside the project's. The baselines return their
join's row order (the comparison sorts them by row key); the project returns entity row order
and checks it, one output row per entity row. Feast's own `get_historical_features` (DuckDB
offline store) runs on `feast_rows` entity rows against the same 5,000,000 feature rows.

Each side runs alone in a fresh child process, `ROUNDS` times, the sides interleaved (each
round starts with another side); its seconds are the median of its runs (every run is printed)
and cover reading the entity rows to a pandas frame with the features (module imports
excluded, the FeatureStore included); its peak memory is the largest of its children's
`ru_maxrss` (imports included). Every side's rows are compared with
the project's, value for value (same row count, same row keys, NaN equal to NaN), before the
times are reported. DuckDB and polars use every core; pandas one. Every pandas frame, read or
returned, is made the same way (`_pandas`: Arrow, then pyarrow's conversion without interning
strings, the fastest of those tried for every side); until 2026-12-07 21:50 DuckDB's result
used its `.df()` and the others `to_pandas()` with its defaults, and until 22:45 the pandas
sides read their Parquet with `pd.read_parquet` (which interns).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

FEATURES = 10
# every side runs ROUNDS times, each time alone in a fresh process, the sides interleaved;
# `seconds` is each side's median (one run of one side moved by up to 40% here)
ROUNDS = 3
BASELINES = ("duckdb_asof", "pandas_asof", "polars_asof")
# the project's two entry points: `historical_features` (pandas in and out: training's) and
# `historical_features_table` (Arrow in and out: batch scoring's), its result then to pandas
PROJECT = ("project", "project_arrow")


def _generate(tmp: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n_ent, n_feat = max(rows // 10, 1), rows * 5
    per = n_feat // n_ent
    base = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64)
    span_s = 90 * 86_400
    ent = np.repeat(np.arange(n_ent), per)
    # distinct event times per entity (seconds apart), so there are no ties for ASOF to guess
    ts = base + (rng.integers(0, span_s // per, ent.size) * per + np.tile(np.arange(per), n_ent)) * 10**6
    order = rng.permutation(ent.size)
    stamp = pa.array(ts[order], pa.timestamp("us", "UTC"))
    cols = {"entity_id": pa.array(np.char.add("e", ent[order].astype(str))),
            "event_timestamp": stamp, "created_timestamp": stamp}
    for i in range(FEATURES):
        cols[f"f{i}"] = pa.array(rng.standard_normal(ent.size))
    pq.write_table(pa.table(cols), tmp / "features.parquet")
    who = rng.integers(0, int(n_ent * 1.02) + 1, rows)  # ids >= n_ent are unknown entities
    pq.write_table(pa.table({
        "row_key": pa.array([f"r{i:08d}" for i in range(rows)]),
        "event_timestamp": pa.array(base + rng.integers(0, span_s, rows) * 10**6,
                                    pa.timestamp("us", "UTC")),
        "entity_id": pa.array(np.char.add("e", who.astype(str)))}), tmp / "entities.parquet")


def _repo(tmp: Path) -> None:
    import yaml
    from feast import (
        Entity,
        FeatureService,
        FeatureStore,
        FeatureView,
        Field,
        FileSource,
    )
    from feast.types import Float64

    (tmp / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": "bench", "provider": "local", "registry": str(tmp / "registry.db"),
        "offline_store": {"type": "duckdb"},
        "online_store": {"type": "sqlite", "path": str(tmp / "online.db")},
        "entity_key_serialization_version": 3}))
    entity = Entity(name="entity", join_keys=["entity_id"])
    view = FeatureView(name="bench_fv", entities=[entity], ttl=timedelta(0),
                       schema=[Field(name=f"f{i}", dtype=Float64) for i in range(FEATURES)],
                       source=FileSource(name="bench_source", path=str(tmp / "features.parquet"),
                                         timestamp_field="event_timestamp",
                                         created_timestamp_column="created_timestamp"))
    FeatureStore(repo_path=str(tmp)).apply([entity, view,
                                            FeatureService(name="bench_service", features=[view])])


def _pandas(table: "pa.Table") -> "pd.DataFrame":
    """An Arrow result as a pandas frame, the same way on every side that has one: pyarrow's
    fastest conversion (no interning of repeated strings: 0.15 s instead of 0.45-0.65 s for the
    entity rows here; DuckDB's own `.df()` took 2.9-3.4 s where this took 2.1-2.5 s)."""
    return table.to_pandas(deduplicate_objects=False)


def _side(name: str, tmp: str, limit: int, out: mp.Queue) -> None:
    """One retrieval in this (fresh) process: seconds, peak RSS, result written to Parquet."""
    import resource

    import duckdb
    import pandas as pd
    import pyarrow.parquet as pq

    if name == "polars_asof":
        import polars as pl
    if name in ("project", "project_arrow", "feast"):
        from feast import FeatureStore

        from pipelines.features.retrieval import (
            historical_features,
            historical_features_table,
        )

        FeatureStore(repo_path=tmp)  # the first store in a process finishes Feast's imports
    t0 = time.perf_counter()
    if name == "duckdb_asof":
        feats = ", ".join(f"f.f{i}" for i in range(FEATURES))
        duckdb.execute("SET enable_progress_bar = false").fetchall()
        df = _pandas(duckdb.sql(f"""SELECT e.*, {feats}
                                    FROM read_parquet('{tmp}/entities.parquet') e
                                    ASOF LEFT JOIN read_parquet('{tmp}/features.parquet') f
                                    ON e.entity_id = f.entity_id
                                    AND e.event_timestamp >= f.event_timestamp""").to_arrow_table())
    elif name == "pandas_asof":
        feat_cols = ["entity_id", "event_timestamp", *(f"f{i}" for i in range(FEATURES))]
        ent = _pandas(pq.read_table(f"{tmp}/entities.parquet")).sort_values("event_timestamp",
                                                                            kind="stable")
        feat = _pandas(pq.read_table(f"{tmp}/features.parquet", columns=feat_cols)).sort_values(
            "event_timestamp", kind="stable")
        df = pd.merge_asof(ent, feat, on="event_timestamp", by="entity_id",
                           direction="backward", allow_exact_matches=True)
    elif name == "polars_asof":
        feat_cols = ["entity_id", "event_timestamp", *(f"f{i}" for i in range(FEATURES))]
        ent = pl.read_parquet(f"{tmp}/entities.parquet").sort("event_timestamp")
        feat = pl.read_parquet(f"{tmp}/features.parquet", columns=feat_cols).sort("event_timestamp")
        df = _pandas(ent.join_asof(feat, on="event_timestamp", by="entity_id",
                                   strategy="backward", allow_exact_matches=True,
                                   check_sortedness=False).to_arrow())
    elif name == "project_arrow":  # batch scoring's path: Arrow in, Arrow out, then pandas
        table = pq.read_table(f"{tmp}/entities.parquet").slice(0, limit)
        store = FeatureStore(repo_path=tmp)
        df = _pandas(historical_features_table(store, "bench_service", table, ["entity_id"],
                                               engine="duckdb", cutoff=True))
    else:
        rows = _pandas(pq.read_table(f"{tmp}/entities.parquet")).head(limit)
        store = FeatureStore(repo_path=tmp)
        if name == "project":
            df = historical_features(store, "bench_service", rows, ["entity_id"],
                                     engine="duckdb", cutoff=True)
        else:
            df = store.get_historical_features(
                entity_df=rows, features=store.get_feature_service("bench_service"),
                full_feature_names=True).to_df()
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    df.to_parquet(f"{tmp}/out_{name}.parquet")
    out.put({"seconds": round(seconds, 3), "peak_mb": round(peak_mb), "rows": len(df)})


def _run_side(name: str, tmp: Path, limit: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_side, args=(name, str(tmp), limit, q))
    p.start()
    result = q.get()
    p.join()
    return result


def _compare(tmp: Path, name: str, n: int) -> dict:
    """Same row count, same row keys, same values (NaN equal to NaN) as the project's, row by row
    (the first `n` row keys: Feast's side retrieves only those)."""
    import numpy as np
    import pandas as pd

    project = pd.read_parquet(tmp / "out_project.parquet").head(n)
    other = pd.read_parquet(tmp / f"out_{name}.parquet").sort_values("row_key")
    same_count = len(other) == n
    other = other.head(n).rename(columns={f"f{i}": f"bench_fv__f{i}" for i in range(FEATURES)})
    cols = [f"bench_fv__f{i}" for i in range(FEATURES)]
    same_keys = len(project) == len(other) and bool(
        (project["row_key"].to_numpy() == other["row_key"].to_numpy()).all())
    a = project[cols].to_numpy(dtype="float64", na_value=np.nan)
    b = other[cols].to_numpy(dtype="float64", na_value=np.nan)
    same_values = same_keys and bool(np.array_equal(a, b, equal_nan=True))
    return {"identical": same_count and same_keys and same_values,
            "rows_compared": int(n), "rows_with_features": int((~np.isnan(a[:, 0])).sum())}


def run(rows: int = 1_000_000, feast_rows: int | None = None) -> dict:
    feast_rows = feast_rows or max(rows // 10, 1)
    with tempfile.TemporaryDirectory(prefix="bench_pit_") as name:
        tmp = Path(name)
        t = time.perf_counter()
        _generate(tmp, rows)
        _repo(tmp)
        setup_s = time.perf_counter() - t
        names = (*PROJECT, *BASELINES)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(ROUNDS):  # each round in another order: no side always runs first
            for name in names[r % len(names):] + names[:r % len(names)]:
                runs[name].append(_run_side(name, tmp, rows))
        sides = {name: {"seconds": median(x["seconds"] for x in got),
                        "peak_mb": max(x["peak_mb"] for x in got), "rows": got[-1]["rows"]}
                 for name, got in runs.items()}
        feast = _run_side("feast", tmp, feast_rows)
        checks = {name: _compare(tmp, name, rows) for name in (*PROJECT[1:], *BASELINES)}
        feast_check = _compare(tmp, "feast", feast_rows)
    seconds = {name: side["seconds"] for name, side in sides.items()}
    fastest = min(BASELINES, key=seconds.__getitem__)
    return {
        "entity_rows": rows, "feature_rows": rows * 5, "entities": rows // 10,
        "features": FEATURES, "setup_s": round(setup_s, 1), "cpus": os.cpu_count(),
        "output_rows": {name: side["rows"] for name, side in sides.items()},
        "identical_to_project": {name: c["identical"] for name, c in checks.items()},
        "rows_lost": rows - sides["project"]["rows"],
        "rows_with_features": checks["duckdb_asof"]["rows_with_features"],
        "seconds": seconds,
        "rounds": ROUNDS,
        "seconds_every_round": {name: [x["seconds"] for x in got] for name, got in runs.items()},
        "peak_mb": {name: side["peak_mb"] for name, side in sides.items()},
        "ratio_project_over": {name: round(seconds["project"] / seconds[name], 2)
                               for name in BASELINES},
        "fastest_baseline": fastest,
        "ratio_project_over_fastest": round(seconds["project"] / seconds[fastest], 2),
        "ratio_project_arrow_over": {name: round(seconds["project_arrow"] / seconds[name], 2)
                                     for name in BASELINES},
        "ratio_project_arrow_over_fastest": round(seconds["project_arrow"] / seconds[fastest],
                                                  2),
        "feast_entity_rows": feast_rows, "feast_s": feast["seconds"],
        "feast_peak_mb": feast["peak_mb"], "feast_output_rows": feast["rows"],
        "identical_to_feast": feast_check["identical"],
    }
