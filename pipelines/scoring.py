"""Batch scoring of one data interval with onnxruntime: plan -> score chunks -> publish.

A partition is `<predictions>/date=YYYY-MM-DD/`: content-addressed Parquet part files and
`_manifest.json`, written last (the commit point). Readers trust only the files the manifest
names, so a run killed at any point leaves the previous partition (or none) visible, and a re-run
of the same interval replaces it with byte-identical parts.

`plan_interval` stages the interval's entity rows as chunks of `scoring.chunk_rows` (Airflow maps
one task per chunk); `score_chunk` fetches point-in-time features for one chunk and scores it in
batches of `scoring.batch_rows` into one part file; `publish` validates every part and writes the
manifest. Memory per task follows the chunk and batch sizes, not the size of the interval.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines import registry, storage
from pipelines.config import Config, ScoringConfig
from pipelines.dataset import PREDICTION_TIME, ROW_KEY, load_events, model_passthrough
from pipelines.dates import day_start
from pipelines.settings import Settings

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from pipelines.onnx_model import OnnxScorer

log = logging.getLogger(__name__)
MANIFEST = "_manifest.json"
PROBABILITY = "probability"
STAGING = "_staging"
META = [ROW_KEY, "event_time", PREDICTION_TIME]
PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
CHAMPION_MOVES = ("promote", "forced_promote", "rollback")
VALIDATION_MEMORY = "64MB"  # DuckDB's limit when validating a partition; it spills beyond


def partition_uri(settings: Settings, day: date) -> str:
    return storage.join(settings.predictions_uri, f"date={day.isoformat()}")


def staging_uri(settings: Settings, day: date) -> str:
    """Chunk inputs of a run in progress (never read as predictions)."""
    return storage.join(settings.predictions_uri, STAGING, f"date={day.isoformat()}")


def read_manifest(settings: Settings, day: date) -> dict[str, Any] | None:
    uri = storage.join(partition_uri(settings, day), MANIFEST)
    return storage.read_json(uri) if storage.exists(uri) else None


def read_partition(settings: Settings, day: date) -> pd.DataFrame:
    """The published predictions of `day` (only the files its manifest names)."""
    manifest = read_manifest(settings, day)
    if manifest is None:
        raise FileNotFoundError(f"no published prediction partition for {day}")
    base = partition_uri(settings, day)
    frames = [storage.read_parquet(storage.join(base, f)) for f in manifest["files"]]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@contextmanager
def pickle_disabled() -> Iterator[None]:
    """MLflow refuses pickle, cloudpickle and skops model deserialisation inside this block."""
    old = os.environ.get(PICKLE_ENV)
    os.environ[PICKLE_ENV] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PICKLE_ENV, None)
        else:
            os.environ[PICKLE_ENV] = old


# -- the model: resolved once per run, pinned ------------------------------------------------

def champion_at(history: list[dict[str, Any]], name: str, when: datetime) -> dict[str, Any] | None:
    """The last promotion-history move of `name`'s champion at or before `when` (or None)."""
    moves = [e for e in history if e.get("model") == name and e.get("action") in CHAMPION_MOVES
             and datetime.fromisoformat(e["at"]) <= when]
    return max(moves, key=lambda e: datetime.fromisoformat(e["at"]), default=None)


def describe_version(settings: Settings, name: str, version: str) -> dict[str, Any]:
    """Version, run, ONNX location and hash, and inputs of one registered version."""
    return registry.describe(name, registry.client(settings).get_model_version(name, str(version)))


def resolve_model(cfg: Config, settings: Settings, day: date) -> dict[str, Any]:
    """The version that scores `day`, chosen by `scoring.backfill_model` and recorded.

    `current`: the champion alias now. `champion_at_interval`: the version that was champion at
    the end of the interval according to the promotion history.
    """
    name, policy = cfg.registry.model_name, cfg.scoring.backfill_model
    with pickle_disabled():
        if policy == "current":
            model = registry.resolve_champion(settings, name)
            choice = "champion alias when the run started"
        else:
            end = day_start(day + timedelta(days=1))
            move = champion_at(registry.history(settings), name, end)
            if move is None:
                raise registry.RegistryError(
                    f"scoring.backfill_model=champion_at_interval: {name!r} had no champion at "
                    f"{end.isoformat()} (no {'/'.join(CHAMPION_MOVES)} in the promotion history "
                    f"before it); set scoring.backfill_model: current to score {day} with today's "
                    f"champion")
            model = describe_version(settings, name, move["to_version"])
            choice = f"{move['action']} to v{move['to_version']} at {move['at']}"
    log.info("score: %s pinned %s v%s (%s: %s)", day, name, model["version"], policy, choice)
    return {**model, "policy": policy, "choice": choice}


# -- plan: the interval's entity rows as chunk files --------------------------------------------

def _parquet_bytes(df: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="zstd",
                   coerce_timestamps="us")
    return buf.getvalue()


def stage_chunks(settings: Settings, day: date, frames: Iterable[pd.DataFrame],
                 chunk_rows: int) -> list[dict[str, Any]]:
    """Re-cut a stream of entity-row frames into content-addressed chunk files."""
    t0, chunks, pending, n = time.perf_counter(), [], [], 0

    def flush(frame: pd.DataFrame) -> None:
        data = _parquet_bytes(frame.reset_index(drop=True))
        sha = hashlib.sha256(data).hexdigest()
        uri = storage.join(staging_uri(settings, day), f"chunk-{len(chunks):05d}-{sha[:16]}.parquet")
        storage.write_bytes(uri, data)
        chunks.append({"chunk": len(chunks), "uri": uri, "rows": len(frame), "sha256": sha})

    for frame in frames:
        pending.append(frame)
        n += len(frame)
        while n >= chunk_rows:
            rows = pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0]
            flush(rows.iloc[:chunk_rows])
            pending, n = [rows.iloc[chunk_rows:]], n - chunk_rows
    if n:
        flush(pd.concat(pending, ignore_index=True))
    for c in chunks:
        c["plan_s"] = round(time.perf_counter() - t0, 3)
    return chunks


def plan_interval(cfg: Config, settings: Settings, day: date) -> list[dict[str, Any]]:
    """Stage every event of [day, day+1) as chunks; one mapped score task per chunk."""
    events = load_events(cfg, settings.landing_uri, day, day + timedelta(days=1))
    if events.empty:
        return []
    if events[ROW_KEY].duplicated().any():
        raise ValueError(f"{int(events[ROW_KEY].duplicated().sum())} duplicate row keys on {day}")
    keep = list(dict.fromkeys([*META, *cfg.features.join_keys, *model_passthrough(cfg)]))
    chunks = stage_chunks(settings, day, [events[keep]], cfg.scoring.chunk_rows)
    log.info("score: %s planned %d rows in %d chunks", day, len(events), len(chunks))
    return chunks


# -- score: one chunk -> one part file -----------------------------------------------------------

def clean_inputs(frame: pd.DataFrame, numeric: list[str], categorical: list[str],
                 policy: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Apply `scoring.missing_features` to a chunk; count what was missing, by reason.

    `missing` is a null value (e.g. Feast had no row for the entity), `non_finite` is +-inf.
    impute: non-finite numerics become null, which the model's imputer fills (a null
    categorical becomes the unknown category); reject: the row is dropped and counted.
    """
    values = frame[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
    null, inf = np.isnan(values), np.isinf(values)
    cat_null = (frame[categorical].isna().to_numpy() if categorical
                else np.zeros((len(frame), 0), dtype=bool))
    missing_row = null.any(axis=1) | cat_null.any(axis=1)
    bad = missing_row | inf.any(axis=1)
    per_col = np.concatenate([null.sum(axis=0) + inf.sum(axis=0), cat_null.sum(axis=0)])
    counts = {"rows_with_missing_features": int(bad.sum()),
              "missing_values": int(per_col.sum()),
              "by_reason": {"missing": int(missing_row.sum()), "non_finite": int(inf.any(axis=1).sum())},
              "by_feature": {c: int(k) for c, k in zip([*numeric, *categorical], per_col) if k},
              "rejected_rows": 0}
    out = frame[[*META, *numeric, *categorical]]
    if inf.any():
        out = out.copy()
        out[numeric] = np.where(inf, np.nan, values)
    if policy == "reject":
        counts["rejected_rows"] = int(bad.sum())
        out = out[~bad]
    return out, counts


def add_counts(total: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Sum two missing-feature count records (nested dicts of ints)."""
    out = dict(total)
    for k, v in more.items():
        out[k] = add_counts(out.get(k, {}), v) if isinstance(v, dict) else out.get(k, 0) + v
    return out


def output_schema(model: dict[str, Any]) -> pa.Schema:
    """The columns of every part file (fixed, so every batch and every re-run write the same)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema([(ROW_KEY, pa.string()), ("event_time", ts), (PREDICTION_TIME, ts),
                      *[(c, pa.float64()) for c in model["numeric"]],
                      *[(c, pa.string()) for c in model["categorical"]],
                      (PROBABILITY, pa.float64()), ("model_name", pa.string()),
                      ("model_version", pa.string())])


def write_part(settings: Settings, day: date, chunk: int, rows: pd.DataFrame,
               model: dict[str, Any], scorer: OnnxScorer | None,
               scoring: ScoringConfig) -> dict[str, Any]:
    """Score `rows` (one chunk) into one content-addressed part file.

    onnxruntime sees `scoring.batch_rows` rows at a time. The name and the bytes depend only on
    the rows and the model, so a retry overwrites a part with itself. `scorer` may be None only
    for an empty frame (the empty partition's part).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.onnx_model import to_native_frame

    t0 = time.perf_counter()
    numeric, categorical = model["numeric"], model["categorical"]
    out, counts = clean_inputs(rows, numeric, categorical, scoring.missing_features)
    probs = np.empty(len(out), dtype=np.float64)
    if len(out):
        if scorer is None:
            raise ValueError("a non-empty chunk needs a scorer")
        native = to_native_frame(out, numeric, categorical)
        for start in range(0, len(out), scoring.batch_rows):
            stop = start + scoring.batch_rows
            probs[start:stop] = scorer.predict_proba(native.iloc[start:stop])
        del native
    if not np.isfinite(probs).all():  # onnxruntime returns NaN for NaN inputs without an error
        raise ValueError(f"{int((~np.isfinite(probs)).sum())} non-finite probabilities in chunk "
                         f"{chunk} of {day}: the model cannot impute these inputs; set "
                         f"scoring.missing_features: reject")
    out[PROBABILITY] = probs
    out["model_name"], out["model_version"] = model["model"], str(model["version"])
    table = pa.Table.from_pandas(out, schema=output_schema(model), preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(None), buf, compression="zstd")
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    name = f"part-{chunk:05d}-{sha[:16]}.parquet"
    storage.write_bytes(storage.join(partition_uri(settings, day), name), data)
    counts["policy"] = scoring.missing_features
    return {"chunk": chunk, "file": name, "sha256": sha, "input_rows": len(rows),
            "rows": len(out), "model_version": str(model["version"]),
            "missing_features": counts, "seconds": round(time.perf_counter() - t0, 3)}


def load_scorer(settings: Settings, model: dict[str, Any]) -> OnnxScorer:
    """An onnxruntime session for the pinned version; its ONNX sha256 must match the registry."""
    from pipelines.onnx_model import OnnxScorer
    from pipelines.tracking import load_onnx

    with pickle_disabled():
        data = load_onnx(settings, model["onnx_uri"], model["onnx_sha256"])
    return OnnxScorer(data, model["numeric"], model["categorical"])


def score_chunk(cfg: Config, settings: Settings, day: date, chunk: dict[str, Any],
                model: dict[str, Any]) -> dict[str, Any]:
    """Point-in-time features for one staged chunk, scored into a part file (idempotent)."""
    from pipelines.features import get_store, historical_features

    t0 = time.perf_counter()
    with pickle_disabled():
        rows = storage.read_parquet(chunk["uri"])
        if len(rows) != chunk["rows"]:
            raise ValueError(f"{chunk['uri']}: {len(rows)} rows, the plan staged {chunk['rows']}")
        scorer = load_scorer(settings, model)
        feats = historical_features(get_store(settings),
                                    model.get("feature_service") or cfg.features.service, rows,
                                    list(cfg.features.join_keys))
        part = write_part(settings, day, chunk["chunk"], feats, model, scorer, cfg.scoring)
    part["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("score: %s chunk %d -> %d rows in %s (%.2fs)", day, chunk["chunk"], part["rows"],
             part["file"], part["seconds"])
    return part


# -- publish: validate all parts, write the manifest (the commit point) -------------------------

def _connect(memory_limit: str, spill_dir: str | None = None) -> duckdb.DuckDBPyConnection:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit='{memory_limit}'")
    con.execute("SET preserve_insertion_order=false")
    con.execute("SET enable_progress_bar=false")
    if spill_dir:  # beyond the limit DuckDB spills here, not into the working directory
        con.execute(f"SET temp_directory='{spill_dir}'")
    return con


def _duckdb_paths(con: duckdb.DuckDBPyConnection, uris: list[str]) -> list[str]:
    """Paths DuckDB can read: local paths, or URIs through a registered fsspec filesystem."""
    out = []
    for uri in uris:
        fs, path = storage.resolve(uri)
        if storage.is_local(uri):
            out.append(path)
        else:
            if not con.filesystem_is_registered(fs.protocol if isinstance(fs.protocol, str)
                                                else fs.protocol[0]):
                con.register_filesystem(fs)
            out.append(uri)
    return out


def validate_parts(uris: list[str], expected_rows: int, version: str) -> dict[str, int]:
    """Row count, unique non-null keys, probabilities in [0, 1], one model version.

    DuckDB over the staged files with a fixed memory limit (it spills beyond it), so checking
    the whole interval does not take memory in proportion to its size.
    """
    with tempfile.TemporaryDirectory(prefix="scoring-validate-") as spill:
        con = _connect(VALIDATION_MEMORY, spill)
        con.read_parquet(_duckdb_paths(con, uris)).create_view("parts")
        cols = ["rows", "null_keys", "null_probabilities", "out_of_range", "other_version"]
        got = dict(zip(cols, con.execute(
            f"""SELECT count(*), count(*) FILTER ({ROW_KEY} IS NULL),
                       count(*) FILTER ({PROBABILITY} IS NULL OR isnan({PROBABILITY})),
                       count(*) FILTER ({PROBABILITY} < 0 OR {PROBABILITY} > 1),
                       count(*) FILTER (model_version IS DISTINCT FROM ?) FROM parts""",
            [version]).fetchone()))
        got["duplicate_keys"] = con.execute(
            f"SELECT count(*) FROM (SELECT {ROW_KEY} FROM parts WHERE {ROW_KEY} IS NOT NULL "
            f"GROUP BY {ROW_KEY} HAVING count(*) > 1)").fetchone()[0]
        con.close()
    problems = []
    if got["rows"] != expected_rows:
        problems.append(f"{got['rows']} output rows for {expected_rows} expected "
                        f"(input rows - rejected rows)")
    problems += [f"{got[k]} rows with {k.replace('_', ' ')}" for k in cols[1:] if got[k]]
    if got["duplicate_keys"]:
        problems.append(f"{got['duplicate_keys']} duplicated row keys")
    if problems:
        raise ValueError("prediction partition failed validation, nothing published: "
                         + "; ".join(problems))
    return got


def part_uris(settings: Settings, day: date, parts: list[dict[str, Any]]) -> list[str]:
    """URIs of a run's staged part files (for checks that run before `publish`)."""
    return [storage.join(partition_uri(settings, day), p["file"]) for p in parts]


def _check_staged(base: str, part: dict[str, Any], version: str) -> None:
    uri = storage.join(base, part["file"])
    if not storage.exists(uri):
        raise FileNotFoundError(f"staged part {uri} is gone; re-run the interval")
    if hashlib.sha256(storage.read_bytes(uri)).hexdigest() != part["sha256"]:
        raise ValueError(f"staged part {uri} does not hold the bytes its task wrote")
    if part["model_version"] != version:
        raise ValueError(f"{part['file']} was scored by v{part['model_version']}, the run pinned "
                         f"v{version}")


def publish(cfg: Config, settings: Settings, day: date, chunks: list[dict[str, Any]],
            parts: list[dict[str, Any]], model: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Validate the staged parts of a run and make them the partition of `day`, atomically."""
    from pipelines.training import dvc_data_version

    t0 = time.perf_counter()
    base, version = partition_uri(settings, day), str(model["version"])
    parts = sorted(parts, key=lambda p: p["chunk"])
    if [p["chunk"] for p in parts] != [c["chunk"] for c in chunks]:
        raise ValueError(f"{day}: parts for chunks {[p['chunk'] for p in parts]}, planned "
                         f"{[c['chunk'] for c in chunks]}")
    for part in parts:
        _check_staged(base, part, version)
    if not parts:  # an empty interval is an empty partition, with the schema, not a crash
        parts = [write_part(settings, day, 0, pd.DataFrame(columns=META + model["numeric"]
                                                           + model["categorical"]),
                            model, None, cfg.scoring)]
    policies = {p["missing_features"]["policy"] for p in parts}
    if policies != {cfg.scoring.missing_features}:
        raise ValueError(f"{day}: parts scored under missing_features {sorted(policies)}, this "
                         f"run is configured with {cfg.scoring.missing_features!r}; re-run it")
    counts: dict[str, Any] = {}
    for part in parts:
        counts = add_counts(counts, {k: v for k, v in part["missing_features"].items()
                                     if k != "policy"})
    input_rows = sum(c["rows"] for c in chunks)
    stats = validate_parts(part_uris(settings, day, parts), input_rows - counts["rejected_rows"],
                           version)
    files = [p["file"] for p in parts]
    manifest = {
        "date": day.isoformat(), "files": files, "input_rows": input_rows,
        "output_rows": stats["rows"], "rejected_rows": counts["rejected_rows"],
        "parts": [{k: p[k] for k in ("file", "chunk", "input_rows", "rows", "sha256")}
                  for p in parts],
        "model": model["model"], "model_version": version, "onnx_sha256": model["onnx_sha256"],
        "feature_service": model.get("feature_service") or cfg.features.service,
        "model_run_id": model["run_id"],
        "backfill_model": model.get("policy", "pinned by caller"),
        "model_choice": model.get("choice", "pinned by caller"),
        "airflow_run_id": run_id,
        "missing_features": {"policy": cfg.scoring.missing_features, **counts},
        "data_version": {"dvc": dvc_data_version(), "input_sha256": hashlib.sha256(
            "".join(c["sha256"] for c in chunks).encode()).hexdigest()},
        "chunk_rows": cfg.scoring.chunk_rows, "batch_rows": cfg.scoring.batch_rows,
        "timings": {"plan_s": chunks[0]["plan_s"] if chunks else 0.0,
                    "score_s_total": round(sum(p["seconds"] for p in parts), 3),
                    "score_s_max_chunk": max(p["seconds"] for p in parts),
                    "publish_s": round(time.perf_counter() - t0, 3)},
    }
    storage.write_json(storage.join(base, MANIFEST), manifest)  # the commit point
    for name in storage.listdir(base):  # parts of earlier runs, and leftovers of killed ones
        if name != MANIFEST and name not in files:
            storage.remove(storage.join(base, name))
    storage.remove(staging_uri(settings, day), recursive=True)
    log.info("score: published %s: %d of %d rows with %s v%s into %s", day, stats["rows"],
             input_rows, model["model"], version, base)
    return {"partition_uri": base, "rows": stats["rows"], "model_version": version,
            "files": len(files)}


def score_interval(cfg: Config, settings: Settings, day: date, model: dict[str, Any] | None,
                   run_id: str) -> dict[str, Any]:
    """Plan, score and publish one interval in this process (the CLI's path; Airflow maps it)."""
    model = model or resolve_model(cfg, settings, day)
    chunks = plan_interval(cfg, settings, day)
    parts = [score_chunk(cfg, settings, day, c, model) for c in chunks]
    return publish(cfg, settings, day, chunks, parts, model, run_id)


# -- the predictions as a table ------------------------------------------------------------------

def published_files(settings: Settings, start: date | None = None,
                    end: date | None = None) -> list[str]:
    """URIs of every file a published manifest names, for days in [start, end)."""
    uris = []
    for name in storage.listdir(settings.predictions_uri):
        if not name.startswith("date="):
            continue
        day = date.fromisoformat(name[len("date="):])
        if (start and day < start) or (end and day >= end):
            continue
        manifest = read_manifest(settings, day)
        if manifest is not None:
            uris += [storage.join(settings.predictions_uri, name, f) for f in manifest["files"]]
    return uris


def predictions_relation(settings: Settings, con: duckdb.DuckDBPyConnection | None = None,
                         start: date | None = None, end: date | None = None
                         ) -> duckdb.DuckDBPyRelation:
    """The published predictions as one DuckDB relation, with a `date` column.

    A snapshot: it names the files the manifests name now; files of runs in progress or killed
    are never read. Partitions scored by versions with different inputs are unioned by name.
    """
    import duckdb

    con = con or duckdb.connect()
    uris = published_files(settings, start, end)
    if not uris:
        return con.sql(f"SELECT NULL::VARCHAR AS {ROW_KEY}, NULL::DOUBLE AS {PROBABILITY}, "
                       "NULL::VARCHAR AS model_version, NULL::DATE AS date WHERE false")
    return con.read_parquet(_duckdb_paths(con, uris), hive_partitioning=True, union_by_name=True)


def create_predictions_view(con: duckdb.DuckDBPyConnection, settings: Settings,
                            name: str = "predictions") -> None:
    """`CREATE VIEW <name>` over the published predictions (see `predictions_relation`)."""
    predictions_relation(settings, con).create_view(name, replace=True)
