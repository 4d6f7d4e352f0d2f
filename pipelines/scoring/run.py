"""Batch scoring of one data interval with onnxruntime: plan -> score chunks -> publish.

A partition is `<predictions>/date=YYYY-MM-DD/` (one per data interval, `locations.partition`): content-addressed Parquet part files and
`_manifest.json`, written last (the commit point). Readers trust only the files the manifest
names, so a run killed at any point leaves the previous partition (or none) visible, and a re-run
of the same interval replaces it with byte-identical parts.

`plan_interval` stages the interval's entity rows as chunks of `scoring.chunk_rows` (Airflow maps
one task per chunk); `score_chunk` fetches point-in-time features for one chunk (Arrow end to
end: the chunk never goes through pandas) and scores it in batches of `scoring.batch_rows` into
one part file; `publish` validates every part and writes the manifest. Memory per task follows
the chunk and batch sizes, not the size of the interval.

This module resolves the model and runs the stages; the work is in `inputs` (missing-feature
policy, onnxruntime feeds), `parts` (chunk and part files), `publish` (validation, manifest),
`table` (reading predictions back) and `io` (Arrow Parquet I/O); layouts in `core.locations`.
"""

from __future__ import annotations

import logging
import time
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.config import Config
from pipelines.core.contracts import Chunk, ModelPin, Part, Published
from pipelines.core.intervals import Interval
from pipelines.core.settings import Settings
from pipelines.data.events import ROW_KEY, load_events, model_passthrough
from pipelines.model import registry
from pipelines.scoring.inputs import META
from pipelines.scoring.io import read_table
from pipelines.scoring.parts import stage_chunks, write_part
from pipelines.scoring.publish import publish

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.model.onnx_model import OnnxScorer

log = logging.getLogger(__name__)
CHAMPION_MOVES = ("promote", "forced_promote", "rollback")


# -- the model: resolved once per run, pinned ------------------------------------------------

def champion_at(history: list[dict[str, Any]], name: str, when: datetime) -> dict[str, Any] | None:
    """The last promotion-history move of `name`'s champion at or before `when` (or None)."""
    moves = [e for e in history if e.get("model") == name and e.get("action") in CHAMPION_MOVES
             and datetime.fromisoformat(e["at"]) <= when]
    return max(moves, key=lambda e: datetime.fromisoformat(e["at"]), default=None)


def describe_version(settings: Settings, name: str, version: str) -> dict[str, Any]:
    """Version, run, ONNX location and hash, and inputs of one registered version."""
    return registry.describe(name, registry.client(settings).get_model_version(name, str(version)))


def resolve_model(cfg: Config, settings: Settings, day: Interval | date,
                  policy: str | None = None) -> ModelPin:
    """The version that scores an interval, chosen by `scoring.backfill_model` (or `policy`, the
    trigger form's override) and recorded.

    `current`: the champion alias now. `champion_at_interval`: the version that was champion at
    the end of the interval according to the promotion history.
    """
    day = cfg.grain.interval(day)
    name, policy = cfg.registry.model_name, policy or cfg.scoring.backfill_model
    if policy not in ("current", "champion_at_interval"):
        raise ValueError(f"backfill model policy {policy!r}: expected current or "
                         f"champion_at_interval")
    if policy == "current":
        model = registry.resolve_champion(settings, name)
        choice = "champion alias when the run started"
    else:
        end = day.end
        move = champion_at(registry.history(settings), name, end)
        if move is None:
            raise registry.RegistryError(
                f"scoring.backfill_model=champion_at_interval: {name!r} had no champion at "
                f"{end.isoformat()} (no {'/'.join(CHAMPION_MOVES)} in the promotion history "
                f"before it); set scoring.backfill_model: current to score {day} with today's "
                f"champion")
        model = describe_version(settings, name, move["to_version"])
        choice = f"{move['action']} to v{move['to_version']} at {move['at']}"
    log.info("score: %s pinned %s v%s sha256 %s (%s: %s)", day.key, name, model["version"],
             model["onnx_sha256"][:12], policy, choice)
    return {**model, "policy": policy, "choice": choice}  # type: ignore[typeddict-item]


# -- plan: the interval's entity rows as chunk files --------------------------------------------

def plan_interval(cfg: Config, settings: Settings, day: Interval | date) -> list[Chunk]:
    """Stage every event of the interval as chunks; one mapped score task per chunk."""
    day = cfg.grain.interval(day)
    events = load_events(cfg, settings.landing_uri, day.start, day.end)
    if events.empty:
        return []
    if events[ROW_KEY].duplicated().any():
        raise ValueError(f"{int(events[ROW_KEY].duplicated().sum())} duplicate row keys in "
                         f"{day.label}")
    keep = list(dict.fromkeys([*META, *cfg.features.join_keys, *model_passthrough(cfg),
                               *cfg.features.request_inputs]))
    chunks = stage_chunks(settings, day, [events[keep]], cfg.scoring.chunk_rows)
    log.info("score: %s planned %d rows in %d chunks", day.key, len(events), len(chunks))
    return chunks


# -- score: one chunk -> one part file -----------------------------------------------------------

def load_scorer(settings: Settings, model: ModelPin | dict[str, Any],
                explain_top_k: int = 0) -> OnnxScorer:
    """An onnxruntime session for the pinned version (with `explain_top_k`, one that also
    explains each row by TreeSHAP over the file's own trees).

    The ONNX location, its sha256 and the inputs are read again from the registry by name and
    version (never trusted from the task payload), must agree with what the run pinned, and the
    downloaded bytes must match that sha256.
    """
    from pipelines.model.onnx_model import OnnxScorer
    from pipelines.model.registry import load_onnx
    from pipelines.model.tree_shap import ExplainingScorer

    pinned = describe_version(settings, model["model"], str(model["version"]))
    for key in ("onnx_uri", "onnx_sha256", "numeric", "categorical", "request_features"):
        if key in model and model[key] != pinned[key]:
            raise registry.RegistryError(
                f"{model['model']} v{model['version']}: the run pinned {key}={model[key]!r} "
                f"but the registry holds {pinned[key]!r}; refusing to score")
    data = load_onnx(settings, pinned["onnx_uri"], pinned["onnx_sha256"])
    if not explain_top_k:
        return OnnxScorer(data, pinned["numeric"], pinned["categorical"])
    try:
        return ExplainingScorer(data, pinned["numeric"], pinned["categorical"])
    except ValueError as exc:
        raise ValueError(f"scoring.explain_top_k={explain_top_k}: {model['model']} "
                         f"v{model['version']} cannot be explained per row: {exc}; retrain it "
                         f"or set scoring.explain_top_k: 0") from exc


def read_chunk(chunk: Chunk) -> pa.Table:
    """A staged chunk's entity rows as Arrow, checked against the plan's row count."""
    rows = read_table(chunk["uri"])
    if rows.num_rows != chunk["rows"]:
        raise ValueError(f"{chunk['uri']}: {rows.num_rows} rows, the plan staged {chunk['rows']}")
    return rows


def score_chunk(cfg: Config, settings: Settings, day: Interval | date, chunk: Chunk,
                model: ModelPin) -> Part:
    """Point-in-time features for one staged chunk, scored into a part file (idempotent).

    Arrow end to end: the chunk file, the retrieval (`historical_features_table`) and the model
    inputs never go through pandas; the part is byte-identical to the pandas path's. The
    request-time features are computed by the spec the model was trained with (its
    `request_features` tag, checked against the registry by `load_scorer`), not params.yaml's.
    """
    from pipelines.core.specs import parse_request_spec
    from pipelines.features.retrieval import historical_features_table
    from pipelines.features.store import get_store

    t0 = time.perf_counter()
    day = cfg.grain.interval(day)
    rows = read_chunk(chunk)
    scorer = load_scorer(settings, model, cfg.scoring.explain_top_k)
    spec = model.get("request_features")  # a payload without it: the registry's
    if spec is None:
        spec = describe_version(settings, model["model"], str(model["version"]))["request_features"]
    feats = historical_features_table(get_store(settings),
                                      model.get("feature_service") or cfg.features.service,
                                      rows, list(cfg.features.join_keys),
                                      request_time=parse_request_spec(spec))
    part = write_part(settings, day, chunk["chunk"], feats, model, scorer, cfg.scoring)
    part["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("score: %s chunk %d -> %d rows in %s (%.2fs)", day.key, chunk["chunk"], part["rows"],
             part["file"], part["seconds"])
    return part


def score_interval(cfg: Config, settings: Settings, day: Interval | date,
                   model: ModelPin | None, run_id: str) -> Published:
    """Plan, score and publish one interval in this process (the CLI's path; Airflow maps it)."""
    day = cfg.grain.interval(day)
    model = model or resolve_model(cfg, settings, day)
    chunks = plan_interval(cfg, settings, day)
    parts = [score_chunk(cfg, settings, day, c, model) for c in chunks]
    return publish(cfg, settings, day, chunks, parts, model, run_id)


def score_day(cfg: Config, settings: Settings, day: Interval | date, run_id: str,
              policy: str | None = None) -> Published:
    """The whole `batch_scoring` DAG for one interval, in this process (the CLI's front door):
    pin the model -> validate the raw batches it reads -> write its feature sources -> plan ->
    score every chunk -> validate the staged predictions -> publish."""
    from pipelines.data.checks import validate_interval
    from pipelines.features.sources import build_sources_for_interval
    from pipelines.scoring.publish import validate_staged

    day = cfg.grain.interval(day)
    model = resolve_model(cfg, settings, day, policy)  # first: the registry answers fast
    validate_interval(cfg, settings, day)
    build_sources_for_interval(cfg, settings, day)
    chunks = plan_interval(cfg, settings, day)
    parts = [score_chunk(cfg, settings, day, c, model) for c in chunks]
    if parts:
        validate_staged(cfg, settings, day, parts)
    return publish(cfg, settings, day, chunks, parts, model, run_id)
