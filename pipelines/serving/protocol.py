"""The Open Inference Protocol (V2) on the wire: request tensors in, response tensors out.

Both encodings a V2 client may use are read and written: plain JSON (`"data": [...]`) and the
binary tensor data extension of Triton and KServe (the JSON header first, its length in the
`Inference-Header-Content-Length` header, then each tensor's raw bytes; BYTES elements are
4-byte little-endian lengths followed by the bytes), which `tritonclient` sends by default.

A model input here is one column: every tensor holds one value per row (shape `[N]` or
`[N, 1]`). Text columns are BYTES, where an empty string (or a JSON null) is a missing value;
numeric columns accept any numeric datatype, read as float64 (NaN or null: missing). A bad
request raises `RequestError` naming the input; the server answers it with 400 (413 when
too large).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NUMERIC = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
           "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2",
           "FP32": "<f4", "FP64": "<f8"}
HEADER_LENGTH = "inference-header-content-length"


class RequestError(ValueError):
    """A request this server cannot answer, answered with `status` and {"error": message}."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    """A decoded request: one 1-D array per input column (text: object arrays of str or None;
    numbers: float64 with NaN), the outputs asked for and which of them go back as binary."""
    id: str | None
    columns: dict[str, np.ndarray]
    rows: int
    outputs: list[str] | None = None
    binary: set[str] = field(default_factory=set)


def _rows(name: str, shape: Any) -> int:
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or (len(shape) == 2 and shape[1] != 1)):
        raise RequestError(f"input {name!r}: shape {shape!r}; one value per row is expected "
                            f"([N] or [N, 1])")
    return shape[0]


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    return [v for item in data for v in _flatten(item)]


def _text_json(name: str, data: list[Any]) -> np.ndarray:
    bad = [v for v in data if v is not None and not isinstance(v, str)]
    if bad:
        raise RequestError(f"input {name!r}: BYTES data must be strings (or null), got {bad[0]!r}")
    return np.array([v if v else None for v in data], dtype=object)


def _numbers_json(name: str, data: list[Any]) -> np.ndarray:
    bad = [v for v in data if v is not None and (isinstance(v, str) or not isinstance(
        v, (int, float)))]
    if bad:
        raise RequestError(f"input {name!r}: numeric data must be numbers (or null), got "
                            f"{bad[0]!r}")
    return np.array([math.nan if v is None else v for v in data], dtype=np.float64)


def _text_binary(name: str, raw: bytes, n: int) -> np.ndarray:
    out, pos = [], 0
    for _ in range(n):
        if pos + 4 > len(raw):
            raise RequestError(f"input {name!r}: binary BYTES data ends after {len(out)} of {n} "
                                f"elements")
        size = int.from_bytes(raw[pos:pos + 4], "little")
        value = raw[pos + 4:pos + 4 + size]
        if len(value) != size:
            raise RequestError(f"input {name!r}: binary BYTES element {len(out)} is cut short")
        try:
            out.append(value.decode("utf-8") or None)
        except UnicodeDecodeError:
            raise RequestError(f"input {name!r}: element {len(out)} is not UTF-8 text") from None
        pos += 4 + size
    if pos != len(raw):
        raise RequestError(f"input {name!r}: {len(raw) - pos} bytes after {n} BYTES elements")
    return np.array(out, dtype=object)


def _tensor(spec: Any, declared: dict[str, str], binary: memoryview, offset: int
            ) -> tuple[str, np.ndarray, int]:
    """One request input as a column; returns (name, values, bytes of binary data it used)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise RequestError("every input needs a name, datatype, shape and data")
    name, datatype = spec["name"], spec.get("datatype")
    if name not in declared:
        raise RequestError(f"input {name!r} is not an input of this model (inputs: "
                            f"{', '.join(declared)})")
    want = declared[name]
    if datatype != want and not (want != "BYTES" and datatype in NUMERIC):
        raise RequestError(f"input {name!r}: datatype {datatype!r}, expected {want}")
    n = _rows(name, spec.get("shape"))
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise RequestError(f"input {name!r}: binary_data_size {size!r} runs past the "
                                f"{len(binary)} bytes of binary data")
        raw = bytes(binary[offset:offset + size])
        if datatype == "BYTES":
            return name, _text_binary(name, raw, n), size
        dtype = np.dtype(NUMERIC[datatype])
        if size != n * dtype.itemsize:
            raise RequestError(f"input {name!r}: {size} bytes of {datatype} for {n} values")
        return name, np.frombuffer(raw, dtype=dtype).astype(np.float64), size
    if "data" not in spec:
        raise RequestError(f"input {name!r} has neither data nor binary_data_size")
    data = _flatten(spec["data"])
    if len(data) != n:
        raise RequestError(f"input {name!r}: shape {spec['shape']} but {len(data)} values")
    values = _text_json(name, data) if datatype == "BYTES" else _numbers_json(name, data)
    return name, values, 0


def decode(body: bytes, header_length: str | None, declared: dict[str, str],
           max_rows: int, optional: dict[str, str] | None = None) -> InferRequest:
    """A V2 inference request (JSON, or JSON + binary tensors) -> columns, checked against the
    model's `declared` inputs (name -> BYTES | FP64): each one present once, the same number of
    rows, at most `max_rows`; `optional` inputs (same form) may be given too."""
    split = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(f"Inference-Header-Content-Length {header_length!r} does not fit "
                                f"a body of {len(body)} bytes")
        split = int(header_length)
    try:
        request = json.loads(body[:split])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"request body is not JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError("request body must be a JSON object with an 'inputs' list")
    binary, offset, columns = memoryview(body)[split:], 0, {}
    accepted = {**(optional or {}), **declared}
    for spec in request["inputs"]:
        name, values, used = _tensor(spec, accepted, binary, offset)
        if name in columns:
            raise RequestError(f"input {name!r} is given twice")
        columns[name], offset = values, offset + used
    if offset != len(binary):
        raise RequestError(f"{len(binary) - offset} bytes of binary data belong to no input")
    missing = [c for c in declared if c not in columns]
    if missing:
        raise RequestError(f"input {missing[0]!r} is missing (this model needs "
                            f"{', '.join(declared)})")
    counts = {name: len(v) for name, v in columns.items()}
    if len(set(counts.values())) != 1:
        raise RequestError(f"inputs have different numbers of rows: {counts}")
    rows = next(iter(counts.values()))
    if rows == 0:
        raise RequestError("the request has no rows")
    if rows > max_rows:
        raise RequestError(f"{rows} rows in one request; at most {max_rows} "
                            f"(serving.max_rows)", status=413)
    rid = request.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError(f"id must be a string, got {rid!r}")
    outputs, binary_out = _outputs(request)
    return InferRequest(rid, columns, rows, outputs, binary_out)


def _outputs(request: dict[str, Any]) -> tuple[list[str] | None, set[str]]:
    """The outputs asked for (None: all) and those to return as binary data."""
    every = bool((request.get("parameters") or {}).get("binary_data_output"))
    specs = request.get("outputs")
    if specs is None:
        return None, {"*"} if every else set()
    if not isinstance(specs, list) or not all(isinstance(s, dict) and isinstance(
            s.get("name"), str) for s in specs):
        raise RequestError("outputs must be a list of objects with a name")
    names = [s["name"] for s in specs]
    binary = {s["name"] for s in specs if every or (s.get("parameters") or {}).get("binary_data")}
    return names, binary


def encode(request: InferRequest, model_name: str, model_version: str,
           tensors: dict[str, tuple[str, np.ndarray]],
           parameters: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The V2 response body and its headers: the outputs asked for (all by default), in JSON
    or, where asked, as binary data after the JSON header."""
    names = request.outputs if request.outputs is not None else list(tensors)
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise RequestError(f"output {unknown[0]!r} is not an output of this model (outputs: "
                            f"{', '.join(tensors)})")
    outputs, chunks = [], []
    for name in names:
        datatype, values = tensors[name]
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [len(values)]}
        if name in request.binary or "*" in request.binary:
            raw = (b"".join(len(b).to_bytes(4, "little") + b for b in
                            (str(v).encode("utf-8") for v in values))
                   if datatype == "BYTES" else values.astype(NUMERIC[datatype]).tobytes())
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = values.tolist()
        outputs.append(out)
    response = {"model_name": model_name, "model_version": model_version, "outputs": outputs,
                "parameters": parameters}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       "inference-header-content-length": str(len(header))}
