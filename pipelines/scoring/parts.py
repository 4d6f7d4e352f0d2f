"""The files of a scoring run: staged chunk inputs (the plan) and part files (one per chunk).

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


def write_part(settings: Settings, day: When, chunk: int, rows: pd.DataFrame | pa.Table,
               model: dict[str, Any], scorer: OnnxScorer | None,
               scoring: ScoringConfig) -> dict[str, Any]:
    """Score `rows` (one chunk: a pandas frame as Feast returns it, or an Arrow table) into one
    content-addressed part file.

    onnxruntime sees `scoring.batch_rows` rows at a time. The name and the bytes depend only on
    the rows and the model, so a retry overwrites a part with itself. `scorer` may be None only
    for an empty frame (the empty partition's part).
    """
    t0 = time.perf_counter()
    inputs, counts = prepare_inputs(rows, model["numeric"], model["categorical"],
                                    scoring.missing_features)
    probs = np.empty(0, dtype=np.float64)
    if len(inputs):
        if scorer is None:
            raise ValueError("a non-empty chunk needs a scorer")
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
    return {"chunk": chunk, "file": name, "sha256": sha, "input_rows": len(rows),
            "rows": len(inputs), "model_version": str(model["version"]),
            "missing_features": counts,
            "seconds": round(time.perf_counter() - t0, 3)}
