"""A chunk's model inputs: the missing-feature policy (counted) and onnxruntime feeds, on Arrow.

The feeds are exactly what `onnx_model.feeds(onnx_model.to_native_frame(...))` gives (the
conversion training and the parity gate use): float32 numerics with NaN where a value is missing,
strings for categoricals with "" for a missing one. They are built once per chunk straight from
Arrow/numpy columns (numerics as one float32 matrix, one contiguous row per feature; string
categoricals through their dictionary), so onnxruntime batches are zero-copy slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.data.events import PREDICTION_TIME, ROW_KEY

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TypeAlias

    import pyarrow as pa

    from pipelines.model.onnx_model import OnnxScorer
    from pipelines.model.tree_shap import ExplainingScorer

    # a chunk's columns: a pandas frame, pandas or numpy columns by name, or an Arrow table
    Rows: TypeAlias = pd.DataFrame | Mapping[str, pd.Series | np.ndarray] | pa.Table

META = [ROW_KEY, "event_time", PREDICTION_TIME]
FEW_ROWS = 64  # a categorical column of up to this many rows skips pandas' factorize


@dataclass
class ModelInputs:
    """The rows a chunk scores, after the missing-feature policy.

    `table`: the META columns of the kept rows (Arrow). `numeric`: float64, shape (features,
    rows), NaN where a value is missing or was non-finite; `numeric32`: the same as float32 (what
    the model sees). `strings`: per categorical, numpy str, "" where missing (what the model
    sees); `categorical`: the same columns as Arrow strings, null where missing (what is stored).
    """

    table: pa.Table
    numeric_names: list[str]
    categorical_names: list[str]
    numeric: np.ndarray
    numeric32: np.ndarray
    strings: list[np.ndarray]
    categorical: list[pa.Array]

    def __len__(self) -> int:
        return self.table.num_rows

    def slice(self, start: int, stop: int) -> ModelInputs:
        """Rows [start, stop) (views, no copy)."""
        return ModelInputs(self.table.slice(start, stop - start), self.numeric_names,
                           self.categorical_names, self.numeric[:, start:stop],
                           self.numeric32[:, start:stop], [s[start:stop] for s in self.strings],
                           [a.slice(start, stop - start) for a in self.categorical])

    @classmethod
    def concat(cls, parts: list[ModelInputs]) -> ModelInputs:
        """The rows of `parts` (inputs of the same model), one after another."""
        import pyarrow as pa

        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return cls(pa.concat_tables([p.table for p in parts]), first.numeric_names,
                   first.categorical_names, np.concatenate([p.numeric for p in parts], axis=1),
                   np.concatenate([p.numeric32 for p in parts], axis=1),
                   [np.concatenate([p.strings[i] for p in parts])
                    for i in range(len(first.strings))],
                   [pa.concat_arrays([p.categorical[i] for p in parts])
                    for i in range(len(first.categorical))])

    def feeds(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """onnxruntime inputs for rows [start, stop): one (n, 1) array per model input."""
        out = {c: self.numeric32[i, start:stop].reshape(-1, 1)
               for i, c in enumerate(self.numeric_names)}
        out.update({c: self.strings[i][start:stop].reshape(-1, 1)
                    for i, c in enumerate(self.categorical_names)})
        return out

    def predict(self, scorer: OnnxScorer, batch_rows: int) -> np.ndarray:
        """P(label = 1) per row, `batch_rows` rows per onnxruntime call (as `predict_proba`)."""
        probs = np.empty(len(self), dtype=np.float64)
        for start in range(0, len(self), batch_rows):
            stop = min(start + batch_rows, len(self))
            (out,) = scorer.session.run([scorer.prob_output], self.feeds(start, stop))
            probs[start:stop] = np.asarray(out)[:, 1].astype(np.float64)
        return probs

    def explain(self, scorer: ExplainingScorer, batch_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """P(label = 1) per row (as `predict`) and its contributions (rows, `scorer.shap.inputs`),
        `batch_rows` rows per onnxruntime call; the scorer checks that they add up."""
        probs = np.empty(len(self), dtype=np.float64)
        values = np.empty((len(self), len(scorer.shap.inputs)), dtype=np.float64)
        for start in range(0, len(self), batch_rows):
            stop = min(start + batch_rows, len(self))
            probs[start:stop], _, values[start:stop] = scorer.explain(self.feeds(start, stop))
        return probs, values


def as_table(rows: Rows, columns: list[str]) -> pa.Table:
    """`columns` of a pandas frame (e.g. Feast's output), pandas columns by name or an Arrow
    table, as Arrow."""
    import pyarrow as pa

    if isinstance(rows, pa.Table):
        return rows.select(columns)
    # column by column: `Table.from_pandas` converts each the same way, with more overhead
    return pa.Table.from_arrays([pa.Array.from_pandas(rows[c]) for c in columns], names=columns)


def _float64(col: pd.Series | np.ndarray | pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64 with NaN for null (`to_numpy(float64, na_value=nan)`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, (pd.Series, np.ndarray)):
        if col.dtype == object:  # e.g. a feature store's Python values: as `to_numpy` below
            return np.array([np.nan if v is None or v is pd.NA or v is pd.NaT else v
                             for v in col.tolist()], dtype=np.float64)  # with less overhead
        if isinstance(col, np.ndarray):
            return col.astype(np.float64)
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)
            or pa.types.is_boolean(col.type) or pa.types.is_null(col.type)):
        raise TypeError(f"model input {col!r} is {col.type}, not numeric")
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)


def _native_strings(s: pd.Series) -> np.ndarray:
    """`to_native_frame`'s conversion itself: str() of each value, "" where missing."""
    return s.astype("object").where(s.notna(), "").astype(str).to_numpy(dtype=object).astype(str)


def _dictionary_strings(codes: np.ndarray, values: list[str]) -> np.ndarray:
    """Codes into string values (-1: missing) as numpy str, "" where missing."""
    return np.array([*values, ""], dtype=object).astype(str)[codes]


def _categorical(rows: Rows, name: str) -> tuple[np.ndarray, pa.Array]:
    """A categorical column as the model sees it (numpy str) and as it is stored (Arrow string,
    null where missing).

    String columns go through their dictionary (a handful of distinct values: one str() per
    value, not per row); anything else through `to_native_frame`'s own conversion (of an Arrow
    table's column as `table.to_pandas()` gives it).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    col = rows[name]
    if isinstance(col, np.ndarray):  # e.g. a feature store's values, None where missing
        col = pd.Series(col)
    if isinstance(col, pd.Series) and len(col) <= FEW_ROWS:  # e.g. a serving request
        listed = col.tolist()  # text or missing only: what the dictionary path below gives
        if all(type(v) is str or v is None or v is pd.NA or (type(v) is float and v != v)
               for v in listed):
            text = [v if type(v) is str else None for v in listed]
            return (np.array([v or "" for v in text], dtype=object).astype(str),
                    pa.array(text, pa.string()))
    if isinstance(col, pd.Series):
        codes, uniques = pd.factorize(col, use_na_sentinel=True)
        values = list(uniques)
        if all(type(v) is str for v in values):  # str equals only str: the mapping is exact
            dictionary = pa.DictionaryArray.from_arrays(
                pa.array(codes, type=pa.int32(), mask=codes < 0), pa.array(values, pa.string()))
            return _dictionary_strings(codes, values), dictionary.cast(pa.string())
        strings = _native_strings(col)
        return strings, pa.array(strings, pa.string(), mask=col.isna().to_numpy())
    arr = col.combine_chunks()
    if pa.types.is_dictionary(arr.type):  # nulls may hide in the dictionary: decode first
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        encoded = pc.dictionary_encode(arr)
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        return (_dictionary_strings(codes, encoded.dictionary.to_pylist()),
                arr.cast(pa.string()))
    strings = _native_strings(rows.select([name]).to_pandas()[name])
    return strings, pa.array(strings, pa.string(), mask=arr.is_null().to_numpy(
        zero_copy_only=False))


def prepare_inputs(rows: Rows, numeric: list[str], categorical: list[str], policy: str
                   ) -> tuple[ModelInputs, dict[str, Any]]:
    """Apply `scoring.missing_features` to a chunk; count what was missing, by reason.

    `rows`: a pandas frame (what Feast returns), pandas or numpy columns by name, or an Arrow
    table; either way no column makes a round trip through the other. `missing` is a null
    value (e.g. Feast had no row for the entity; NaN counts as null), `non_finite` is +-inf.
    impute: non-finite numerics become missing, which the model's imputer fills (a missing
    categorical is the unknown category); reject: the row is dropped and counted.
    """
    import pyarrow as pa

    table = as_table(rows, META)
    n = table.num_rows
    values = np.empty((len(numeric), n), dtype=np.float64)
    for i, c in enumerate(numeric):
        values[i] = _float64(rows[c])
    cats = [_categorical(rows, c) for c in categorical]
    null, inf = np.isnan(values), np.isinf(values)
    cat_null = np.array([a.is_null().to_numpy(zero_copy_only=False) for _, a in cats],
                        dtype=bool).reshape(len(categorical), n)
    missing_row = null.any(axis=0) | cat_null.any(axis=0)
    inf_row = inf.any(axis=0)
    bad = missing_row | inf_row
    per_col = np.concatenate([null.sum(axis=1) + inf.sum(axis=1), cat_null.sum(axis=1)])
    counts = {"rows_with_missing_features": int(bad.sum()),
              "missing_values": int(per_col.sum()),
              "by_reason": {"missing": int(missing_row.sum()), "non_finite": int(inf_row.sum())},
              "by_feature": {c: int(k) for c, k in zip([*numeric, *categorical], per_col) if k},
              "rejected_rows": 0}
    if inf_row.any():
        values[inf] = np.nan
    if policy == "reject":
        counts["rejected_rows"] = int(bad.sum())
        if bad.any():
            keep = ~bad
            mask = pa.array(keep)
            values, table = values[:, keep], table.filter(mask)
            cats = [(s[keep], a.filter(mask)) for s, a in cats]
    return ModelInputs(table, list(numeric), list(categorical), values,
                       values.astype(np.float32), [s for s, _ in cats],
                       [a for _, a in cats]), counts


def add_counts(total: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Sum two missing-feature count records (nested dicts of ints)."""
    out = dict(total)
    for k, v in more.items():
        out[k] = add_counts(out.get(k, {}), v) if isinstance(v, dict) else out.get(k, 0) + v
    return out
