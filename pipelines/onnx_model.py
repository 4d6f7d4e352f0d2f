"""ONNX export of the fitted scikit-learn pipeline, parity check, and onnxruntime scoring.

Each model input column is its own ONNX input (float32 numerics, string categoricals), so
scoring feeds columns by name and never unpickles anything.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd


def export(pipeline: Any, numeric: list[str], categorical: list[str]) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [(c, FloatTensorType([None, 1])) for c in numeric]
    inputs += [(c, StringTensorType([None, 1])) for c in categorical]
    # A fixed graph name: skl2onnx otherwise names the graph with a random uuid, and the same
    # model would get a different sha256 on every export.
    onx = convert_sklearn(pipeline, name="model", initial_types=inputs,
                          target_opset={"": 17, "ai.onnx.ml": 3},
                          options={id(pipeline): {"zipmap": False}})
    return onx.SerializeToString()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_native_frame(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """The exact frame both the native model and ONNX see: float32 numerics, str categoricals."""
    out = pd.DataFrame(index=df.index)
    for c in numeric:
        out[c] = pd.to_numeric(df[c], errors="coerce").astype("float32")
    for c in categorical:
        out[c] = df[c].astype("object").where(df[c].notna(), "").astype(str)
    return out


def feeds(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> dict[str, np.ndarray]:
    out = {c: frame[c].to_numpy(dtype=np.float32).reshape(-1, 1) for c in numeric}
    out.update({c: frame[c].to_numpy(dtype=object).astype(str).reshape(-1, 1) for c in categorical})
    return out


class OnnxScorer:
    """An onnxruntime session for a model's bytes (single-threaded unless told otherwise)."""

    def __init__(self, model_bytes: bytes, numeric: list[str], categorical: list[str],
                 threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        self.numeric, self.categorical = numeric, categorical
        self.prob_output = self.session.get_outputs()[1].name

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """P(label = 1) for each row of a frame made by `to_native_frame`."""
        (probs,) = self.session.run([self.prob_output], feeds(frame, self.numeric, self.categorical))
        return np.asarray(probs)[:, 1].astype(np.float64)


def parity(p_native: np.ndarray, p_onnx: np.ndarray, tolerance: float) -> dict[str, Any]:
    diff = np.abs(np.asarray(p_native, float) - np.asarray(p_onnx, float))
    return {
        "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
        "mean_abs_diff": float(diff.mean()) if len(diff) else 0.0,
        "tolerance": tolerance,
        "n": int(len(diff)),
        "passed": bool(len(diff) == 0 or (np.isfinite(diff).all() and diff.max() <= tolerance)),
    }
