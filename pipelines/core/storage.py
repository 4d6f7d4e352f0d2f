"""Read and write through URIs (fsspec), atomically.

Local paths, `file://` and `s3://` URIs all work; `pkg://<package>/<path>` reads data that a
Python package ships. Writers never leave a half-written object visible: a local file is written
beside its target and renamed over it; an object store PUT is atomic per object.

S3 (any S3-compatible store): credentials come from the usual AWS variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) and the endpoint from
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (e.g. http://127.0.0.1:8333 for SeaweedFS).
`filesystem()` is the one place that configures s3fs; DuckDB (pipelines.features.pit, the Feast offline
store in pipelines.features.offline_store) reads through the same fsspec filesystem, never httpfs.
Listings are not cached: another worker may have written since.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import TYPE_CHECKING, Any

import fsspec

if TYPE_CHECKING:
    import pandas as pd


def _pkg_path(uri: str) -> str:
    import importlib.util

    rest = uri[len("pkg://") :]
    package, _, inner = rest.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{uri}: Python package {package!r} is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], inner)


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment (None: AWS itself)."""
    from pipelines.core.settings import get_settings

    return get_settings().s3_endpoint or None


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options for a protocol (only S3 needs any)."""
    if protocol not in ("s3", "s3a"):
        return {}
    options: dict[str, Any] = {"use_listings_cache": False}
    endpoint = s3_endpoint()
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def filesystem(protocol: str) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for a protocol, configured as `resolve` does (cached by fsspec)."""
    return fsspec.filesystem(protocol, **storage_options(protocol))


def resolve(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path inside it for a URI or plain local path."""
    if uri.startswith("pkg://"):
        uri = _pkg_path(uri)
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(protocol_of(uri)))
    return fs, path


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


def is_local(uri: str) -> bool:
    fs, _ = resolve(uri)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.exists(path)


def size(uri: str) -> int:
    fs, path = resolve(uri)
    return int(fs.size(path))


def listdir(uri: str) -> list[str]:
    """Names (not paths) directly under a folder URI; [] if it does not exist."""
    fs, path = resolve(uri)
    if not fs.exists(path):
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open(path, "rb") as fh:
        return fh.read()


def write_bytes(uri: str, data: bytes) -> str:
    """Write an object atomically: readers see the old bytes or the new ones, never a part."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    if is_local(uri):
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{os.path.basename(path)}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)
    return uri


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri).decode("utf-8"))


def read_json_if_exists(uri: str) -> Any:
    """The JSON document at `uri`, or None if there is none."""
    try:
        return read_json(uri)
    except FileNotFoundError:
        return None


def _finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite number as None: JSON has no NaN, and a bare `NaN` in a
    report breaks every strict reader downstream."""
    import math
    import numbers

    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)  # numpy integers too
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def write_json(uri: str, obj: Any) -> str:
    """Write a JSON document atomically (non-finite numbers become null)."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    return write_bytes(uri, text.encode("utf-8"))


def write_parquet(df: "pd.DataFrame", uri: str, metadata: dict[str, str] | None = None) -> str:
    """`df` as Parquet, atomically; `metadata`: key-value pairs added to the file's schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{
            k.encode(): v.encode() for k, v in metadata.items()}})
    # Microsecond timestamps: what DuckDB (Feast's offline store) and most engines read natively.
    pq.write_table(table, buf, compression="zstd", coerce_timestamps="us",
                   allow_truncated_timestamps=False)
    return write_bytes(uri, buf.getvalue())


def parquet_metadata(uri: str, key: str) -> str | None:
    """One key-value pair of a Parquet file's schema metadata (None: no file or no such key);
    reads the footer only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = resolve(uri)
    try:
        meta = pq.read_schema(path, filesystem=fs).metadata or {}
    except (FileNotFoundError, pa.ArrowInvalid):  # absent, or not a Parquet file: no value
        return None  # (any other I/O error is "could not ask": it propagates)
    value = meta.get(key.encode())
    return value.decode() if value is not None else None


def read_parquet(uri: str, columns: list[str] | None = None) -> "pd.DataFrame":
    import pyarrow.parquet as pq

    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs, columns=columns).to_pandas()


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = resolve(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def move(src: str, dst: str) -> None:
    fs, src_path = resolve(src)
    _, dst_path = resolve(dst)
    fs.makedirs(dst_path.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(src_path, dst_path, recursive=True)


def local_path(uri: str) -> str:
    """A local filesystem path for a local URI (for libraries that only take paths)."""
    fs, path = resolve(uri)
    if not is_local(uri):
        raise ValueError(f"{uri} is not on the local filesystem")
    return path
