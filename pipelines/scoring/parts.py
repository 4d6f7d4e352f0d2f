"""The files of a scoring run: staged chunk inputs (the plan) and part files (one per chunk),
with, when `scoring.explain_top_k` is set, each part's per-row top contributions beside it.

Both are content-addressed Parquet written through `scoring_io` (Arrow, fixed writer settings,
atomic writes): a retry rewrites a file with the same bytes under the same name.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import ScoringConfig
from pipelines.core.locations import When
from pipelines.core.settings import Settings
from pipelines.data.events import PREDICTION_TIME, ROW_KEY
from pipelines.scoring.inputs import META, ModelInputs, prepare_inputs
from pipelines.scoring.io import parquet_bytes

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.model.onnx_model import OnnxScorer
    from pipelines.model.tree_shap import TreeShap

PROBABILITY = "probability"


def stage_chunks(settings: Settings, day: When, frames: Iterable[pd.DataFrame | pa.Table],
                 chunk_rows: int) -> list[dict[str, Any]]:
    """Re-cut a stream of entity-row frames into content-addressed chunk files.

    Each frame is converted to Arrow once (keeping its pandas metadata, so a chunk reads back
    with the frame's dtypes) and cut by zero-copy slices.
    """
    import pyarrow as pa

    t0, pending, n = time.perf_counter(), [], 0
    chunks: list[dict[str, Any]] = []

    def flush(table: pa.Table) -> None:
        data = parquet_bytes(table, statistics=[])  # read whole by one task, never filtered
        sha = hashlib.sha256(data).hexdigest()
        uri = storage.join(locations.staging(settings, day), f"chunk-{len(chunks):05d}-{sha[:16]}.parquet")
        storage.write_bytes(uri, data)
        chunks.append({"chunk": len(chunks), "uri": uri, "rows": table.num_rows, "sha256": sha})

    def joined(tables: list[pa.Table]) -> pa.Table:
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    for frame in frames:
        table = (frame if isinstance(frame, pa.Table)
                 else pa.Table.from_pandas(frame, preserve_index=False, nthreads=1))
        pending.append(table)
        n += table.num_rows
        while n >= chunk_rows:
            rows = joined(pending)
            flush(rows.slice(0, chunk_rows))
            pending, n = [rows.slice(chunk_rows)], n - chunk_rows
    if n:
        flush(joined(pending))
    for c in chunks:
        c["plan_s"] = round(time.perf_counter() - t0, 3)
    return chunks


def output_schema(model: dict[str, Any]) -> pa.Schema:
    """The columns of every part file (fixed, so every batch and every re-run write the same)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema([(ROW_KEY, pa.string()), ("event_time", ts), (PREDICTION_TIME, ts),
                      *[(c, pa.float64()) for c in model["numeric"]],
                      *[(c, pa.string()) for c in model["categorical"]],
                      (PROBABILITY, pa.float64()), ("model_name", pa.string()),
                      ("model_version", pa.string())])


def part_table(inputs: ModelInputs, probs: np.ndarray, model: dict[str, Any]) -> pa.Table:
    """The part's rows: keys and times, the model inputs as scored (missing and non-finite
    values null), the probability, and the model name and version on every row."""
    import pyarrow as pa

    schema, n, t = output_schema(model), len(inputs), inputs.table
    cols = [t[c].cast(schema.field(c).type) for c in META]
    cols += [pa.array(v, mask=np.isnan(v)) for v in inputs.numeric]
    cols += inputs.categorical
    cols += [pa.array(probs, type=pa.float64()),
             pa.repeat(pa.scalar(model["model"], pa.string()), n),
             pa.repeat(pa.scalar(str(model["version"]), pa.string()), n)]
    return pa.Table.from_arrays(cols, schema=schema)


def contributions_schema(k: int) -> pa.Schema:
    """The columns of a contributions file: the row key, the `k` inputs with the largest
    |contribution| and their contributions, largest first, the sum of the other inputs'
    (`rest_shap`) and the base value: `base_value + top1_shap + ... + rest_shap` is the row's
    model output in the manifest's `contributions.space`."""
    import pyarrow as pa

    return pa.schema([(ROW_KEY, pa.string()),
                      *[f for i in range(1, k + 1) for f in ((f"top{i}_feature", pa.string()),
                                                             (f"top{i}_shap", pa.float64()))],
                      ("rest_shap", pa.float64()), ("base_value", pa.float64())])


def contributions_table(keys: pa.ChunkedArray | pa.Array, values: np.ndarray,
                        inputs: list[str], base_value: float, k: int) -> pa.Table:
    """Each row's top `k` contributions (ties: in input order), as `contributions_schema`."""
    import pyarrow as pa

    n = len(values)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(values, order, axis=1)
    names = pa.array(inputs, pa.string())
    cols: list[Any] = [keys]
    for i in range(k):
        cols += [pa.DictionaryArray.from_arrays(pa.array(order[:, i], pa.int32()), names
                                                ).cast(pa.string()),
                 pa.array(top[:, i], pa.float64())]
    cols += [pa.array(values.sum(axis=1) - top.sum(axis=1), pa.float64()),
             pa.repeat(pa.scalar(base_value, pa.float64()), n)]
    return pa.Table.from_arrays(cols, schema=contributions_schema(k))


def _explain(inputs: ModelInputs, scorer: OnnxScorer, model: dict[str, Any],
             scoring: ScoringConfig) -> tuple[np.ndarray, tuple[np.ndarray, TreeShap]]:
    """Probabilities, and contributions with their explainer, of a chunk's rows."""
    from pipelines.model.tree_shap import ExplainingScorer

    k = scoring.explain_top_k
    if not isinstance(scorer, ExplainingScorer):
        raise ValueError(f"scoring.explain_top_k={k} needs an explaining scorer "
                         f"(run.load_scorer(..., explain_top_k=...))")
    if k > len(scorer.shap.inputs):
        raise ValueError(f"scoring.explain_top_k={k}, but {model['model']} "
                         f"v{model['version']} has {len(scorer.shap.inputs)} inputs; set it to "
                         f"at most {len(scorer.shap.inputs)}")
    probs, values = inputs.explain(scorer, scoring.batch_rows)
    return probs, (values, scorer.shap)


def write_part(settings: Settings, day: When, chunk: int, rows: pd.DataFrame | pa.Table,
               model: dict[str, Any], scorer: OnnxScorer | None,
               scoring: ScoringConfig) -> dict[str, Any]:
    """Score `rows` (one chunk: a pandas frame as Feast returns it, or an Arrow table) into one
    content-addressed part file (and, with `scoring.explain_top_k`, a contributions file
    beside it, see `contributions_schema`).

    onnxruntime sees `scoring.batch_rows` rows at a time. The name and the bytes depend only on
    the rows and the model, so a retry overwrites a part with itself. `scorer` may be None only
    for an empty frame (the empty partition's part).
    """
    t0 = time.perf_counter()
    inputs, counts = prepare_inputs(rows, model["numeric"], model["categorical"],
                                    scoring.missing_features)
    probs = np.empty(0, dtype=np.float64)
    explained = None
    if len(inputs):
        if scorer is None:
            raise ValueError("a non-empty chunk needs a scorer")
        if scoring.explain_top_k:
            probs, explained = _explain(inputs, scorer, model, scoring)
        else:
            probs = inputs.predict(scorer, scoring.batch_rows)
    if not np.isfinite(probs).all():  # onnxruntime returns NaN for NaN inputs without an error
        raise ValueError(f"{int((~np.isfinite(probs)).sum())} non-finite probabilities in chunk "
                         f"{chunk} of {locations.key(day)}: the model cannot impute these inputs; set "
                         f"scoring.missing_features: reject")
    table = part_table(inputs, probs, model)
    # statistics for what readers filter on (keys, times, probability, model, categoricals);
    # the numeric inputs are read whole (drift), never filtered
    data = parquet_bytes(table, [c for c in table.column_names if c not in model["numeric"]])
    sha = hashlib.sha256(data).hexdigest()
    name = f"part-{chunk:05d}-{sha[:16]}.parquet"
    storage.write_bytes(storage.join(locations.predictions(settings, day), name), data)
    counts["policy"] = scoring.missing_features
    contributions = None
    if scoring.explain_top_k:
        contributions = _write_contributions(settings, day, chunk, inputs, explained,
                                             scoring.explain_top_k)
    return {"chunk": chunk, "file": name, "sha256": sha, "input_rows": len(rows),
            "rows": len(inputs), "model_version": str(model["version"]),
            "missing_features": counts, "contributions": contributions,
            "seconds": round(time.perf_counter() - t0, 3)}


def _write_contributions(settings: Settings, day: When, chunk: int, inputs: ModelInputs,
                         explained: tuple[np.ndarray, TreeShap] | None, k: int
                         ) -> dict[str, Any]:
    """The chunk's contributions file (empty for an empty chunk), content-addressed."""
    if explained is None:
        table = contributions_schema(k).empty_table()
        space, base = None, None
    else:
        values, shap = explained
        table = contributions_table(inputs.table[ROW_KEY], values, shap.inputs,
                                    shap.base_value, k)
        space, base = shap.space, shap.base_value
    data = parquet_bytes(table, [ROW_KEY])
    sha = hashlib.sha256(data).hexdigest()
    name = locations.contributions_name(chunk, sha)
    storage.write_bytes(storage.join(locations.predictions(settings, day), name), data)
    return {"file": name, "sha256": sha, "rows": table.num_rows, "top_k": k, "space": space,
            "base_value": base}
