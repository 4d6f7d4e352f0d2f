"""Publish: validate a run's staged parts, then write the manifest (the commit point).

A partition is `<predictions>/date=YYYY-MM-DD/` (one per data interval): content-addressed
Parquet part files and `_manifest.json`, written last. Readers trust only the files the manifest names, so a run killed
at any point leaves the previous partition (or none) visible.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from datetime import date
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.core import duck, locations, storage
from pipelines.core.config import Config
from pipelines.core.intervals import Interval
from pipelines.core.locations import When
from pipelines.core.settings import Settings
from pipelines.data.events import ROW_KEY
from pipelines.scoring.inputs import META, add_counts
from pipelines.scoring.parts import PROBABILITY, write_part

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)
VALIDATION_MEMORY = "64MB"  # DuckDB's limit when validating a partition; it spills beyond
VALIDATION_THREADS = 1  # like the score tasks: one core per task, whatever the worker has


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
         ) -> tuple[Any, ...]:
    row = con.execute(sql, params).fetchone()
    if row is None:  # an aggregate without GROUP BY always returns one row
        raise RuntimeError(f"no result row for {sql!r}")
    return row


def validate_parts(uris: list[str], expected_rows: int, version: str) -> dict[str, int]:
    """Row count, unique non-null keys, probabilities in [0, 1], one model version.

    DuckDB over the staged files with a fixed memory limit (it spills beyond it), so checking
    the whole interval does not take memory in proportion to its size. One scan counts
    everything, keys by their 64-bit hash; only if two keys share a hash are the keys themselves
    grouped, to count the real duplicates (a hash collision is not one).
    """
    with tempfile.TemporaryDirectory(prefix="scoring-validate-") as spill:
        con = duck.connect(memory_limit=VALIDATION_MEMORY, spill_dir=spill,
                           threads=VALIDATION_THREADS, ordered=False)
        con.read_parquet([duck.readable(con, u) for u in uris]).create_view("parts")
        cols = ["rows", "null_keys", "null_probabilities", "out_of_range", "other_version"]
        *counts, shared_hashes = _one(con,
            f"""SELECT count(*), count(*) FILTER ({ROW_KEY} IS NULL),
                       count(*) FILTER ({PROBABILITY} IS NULL OR isnan({PROBABILITY})),
                       count(*) FILTER ({PROBABILITY} < 0 OR {PROBABILITY} > 1),
                       count(*) FILTER (model_version IS DISTINCT FROM ?),
                       count({ROW_KEY}) - count(DISTINCT hash({ROW_KEY}))
                           FILTER ({ROW_KEY} IS NOT NULL)
                FROM parts""", [version])
        got = dict(zip(cols, counts))
        got["duplicate_keys"] = 0 if not shared_hashes else _one(con,
            f"SELECT count(*) FROM (SELECT {ROW_KEY} FROM parts WHERE {ROW_KEY} IS NOT NULL "
            f"GROUP BY {ROW_KEY} HAVING count(*) > 1)")[0]
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


def part_uris(settings: Settings, day: When, parts: list[dict[str, Any]]) -> list[str]:
    """URIs of a run's staged part files (for checks that run before `publish`)."""
    return [storage.join(locations.predictions(settings, day), p["file"]) for p in parts]


def _check_staged(base: str, part: dict[str, Any], version: str) -> None:
    for staged in [part, part.get("contributions") or {}]:
        if not staged:
            continue
        uri = storage.join(base, staged["file"])
        if not storage.exists(uri):
            raise FileNotFoundError(f"staged file {uri} is gone; re-run the interval")
        if hashlib.sha256(storage.read_bytes(uri)).hexdigest() != staged["sha256"]:
            raise ValueError(f"staged file {uri} does not hold the bytes its task wrote")
    if part.get("contributions") and part["contributions"]["rows"] != part["rows"]:
        raise ValueError(f"{part['contributions']['file']} explains "
                         f"{part['contributions']['rows']} rows, {part['file']} holds "
                         f"{part['rows']}")
    if part["model_version"] != version:
        raise ValueError(f"{part['file']} was scored by v{part['model_version']}, the run pinned "
                         f"v{version}")


def publish(cfg: Config, settings: Settings, day: Interval | date, chunks: list[dict[str, Any]],
            parts: list[dict[str, Any]], model: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Validate the staged parts of a run and make them the partition of the interval,
    atomically (an interval without rows: an empty partition, with its manifest)."""
    from pipelines.data.checks import lookback
    from pipelines.data.versions import lineage

    t0 = time.perf_counter()
    day = cfg.grain.interval(day)
    base, version = locations.predictions(settings, day), str(model["version"])
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
    top_k = {(p.get("contributions") or {}).get("top_k", 0) for p in parts}
    if top_k != {cfg.scoring.explain_top_k}:
        raise ValueError(f"{day}: parts scored with explain_top_k {sorted(top_k)}, this run is "
                         f"configured with scoring.explain_top_k={cfg.scoring.explain_top_k}; "
                         f"re-run it")
    counts: dict[str, Any] = {}
    for part in parts:
        counts = add_counts(counts, {k: v for k, v in part["missing_features"].items()
                                     if k != "policy"})
    input_rows = sum(c["rows"] for c in chunks)
    stats = validate_parts(part_uris(settings, day, parts), input_rows - counts["rejected_rows"],
                           version)
    files = [p["file"] for p in parts]
    explained = [p["contributions"] for p in parts if p.get("contributions")]
    manifest = {
        "date": day.key, "interval": [day.start.isoformat(), day.end.isoformat()],
        "files": files, "input_rows": input_rows,
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
        # the batches this interval's features read, the suites that validated them, DVC's
        # hash when DVC made that landing zone, and the entity rows scored
        "data_version": {**lineage(cfg, settings, [*lookback(cfg, day), day]),
                         "input_sha256": hashlib.sha256(
                             "".join(c["sha256"] for c in chunks).encode()).hexdigest()},
        # per-row top contributions beside the parts (scoring.explain_top_k; None when off):
        # base_value + top<i>_shap + rest_shap is each row's model output in `space`
        "contributions": None if not explained else {
            "top_k": cfg.scoring.explain_top_k,
            "method": "path-dependent TreeSHAP over the ONNX trees (covers recorded at export)",
            "space": next((c["space"] for c in explained if c["space"]), None),
            "base_value": next((c["base_value"] for c in explained if c["space"]), None),
            "files": [c["file"] for c in explained],
            "parts": [{"chunk": p["chunk"], **{k: p["contributions"][k]
                                               for k in ("file", "rows", "sha256")}}
                      for p in parts]},
        "chunk_rows": cfg.scoring.chunk_rows, "batch_rows": cfg.scoring.batch_rows,
        "timings": {"plan_s": chunks[0]["plan_s"] if chunks else 0.0,
                    "score_s_total": round(sum(p["seconds"] for p in parts), 3),
                    "score_s_max_chunk": max(p["seconds"] for p in parts),
                    "publish_s": round(time.perf_counter() - t0, 3)},
    }
    storage.write_json(storage.join(base, locations.MANIFEST), manifest)  # the commit point
    keep = {locations.MANIFEST, *files, *(c["file"] for c in explained)}
    for name in storage.listdir(base):  # files of earlier runs, and leftovers of killed ones
        if name not in keep:
            storage.remove(storage.join(base, name))
    storage.remove(locations.staging(settings, day), recursive=True)
    log.info("score: published %s: %d of %d rows with %s v%s into %s", day.key, stats["rows"],
             input_rows, model["model"], version, base)
    return {"partition_uri": base, "rows": stats["rows"], "model_version": version,
            "files": len(files)}


def validate_staged(cfg: Config, settings: Settings, day: Interval | date,
                    parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The staged parts of a run against the `predictions` suite, before anything publishes
    them (raises DataValidationError: the manifest is then never written)."""
    from pipelines.data.checks import validate_predictions

    day = cfg.grain.interval(day)
    report = validate_predictions(cfg, settings, day, part_uris(settings, day, parts))
    log.info("predictions of %s: staged parts passed the predictions suite (%s)", day.key,
             report.get("report_uri"))
    return {k: v for k, v in report.items() if isinstance(v, (str, int, float, bool))}
