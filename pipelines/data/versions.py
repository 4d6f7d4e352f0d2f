"""Data versions for lineage: what a run actually read, not what the repository last committed.

- `data_version`: sha256 over the landing batches of the intervals a run reads (each batch's
  table, partition and content hash) and the reference snapshots: two runs on the same bytes
  agree, one changed cell anywhere in them changes it, whatever dataset is configured.
- `expectations_version`: sha256 over the suite files in use (`settings.expectations_dir`): a
  changed rule shows in lineage even when the data did not change.
- `dvc_version`: the landing zone's hash in `dvc.lock`, only when DVC's `ingest` stage is what
  produced the landing zone read (same folder; every parameter the lock recorded, e.g.
  `dataset.sources`, `ingest`, `orchestration.interval`, as the params file in use has it);
  otherwise "untracked", never another dataset's hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.core import locations, storage
from pipelines.core.config import Config, read_yaml
from pipelines.core.intervals import Interval
from pipelines.core.settings import REPO_ROOT, Settings

UNTRACKED = "untracked"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_version(cfg: Config, settings: Settings, intervals: Iterable[Interval]) -> dict[str, Any]:
    """{"sha256", "batches"}: the content of every landed batch of the intervals (and of the
    snapshots), in a fixed order; an absent batch is not part of it."""
    entries = []
    for table, source in cfg.dataset.sources.items():
        parts = [None] if source.timestamp is None else sorted(set(intervals))
        for iv in parts:
            uri = locations.batch(settings.landing_uri, table, iv)
            if storage.exists(uri):
                entries.append(f"{table}/{locations.partition(iv)}:{_sha(storage.read_bytes(uri))}")
    return {"sha256": _sha("\n".join(entries).encode()), "batches": len(entries)}


def expectations_version(settings: Settings) -> str:
    """sha256 over the suite files (name and content) of the expectations folder in use."""
    folder = settings.expectations_dir
    names = sorted(n for n in storage.listdir(folder) if n.endswith(".json"))
    lines = [f"{n}:{_sha(storage.read_bytes(storage.join(folder, n)))}" for n in names]
    return _sha("\n".join(lines).encode())


def dvc_version(settings: Settings, root: Path = REPO_ROOT) -> str:
    """The DVC hash of the landing zone if `dvc.lock`'s ingest stage made the one read (its
    output is this landing folder and every parameter it recorded has the value the params file
    in use gives it), else "untracked"."""
    lock = root / "dvc.lock"
    if not lock.exists() or not storage.is_local(settings.landing_uri):
        return UNTRACKED
    stage = ((read_yaml(lock.read_text()) or {}).get("stages") or {}).get("ingest") or {}
    landing = Path(storage.local_path(settings.landing_uri)).resolve()
    out = next((o for o in stage.get("outs", [])
                if (root / o.get("path", "")).resolve() == landing), None)
    params = read_yaml(Path(settings.params_path).read_text()) or {}
    recorded = {k: v for values in (stage.get("params") or {}).values() for k, v in values.items()}
    same = bool(recorded) and all(_dotted(params, k) == v for k, v in recorded.items())
    return str(out["md5"]) if out and out.get("md5") and same else UNTRACKED


def _dotted(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def lineage(cfg: Config, settings: Settings, intervals: Iterable[Interval]) -> dict[str, Any]:
    """What a run records about its data: the batches' hash, the suites' hash, DVC's hash."""
    data = data_version(cfg, settings, intervals)
    return {"sha256": data["sha256"], "batches": data["batches"],
            "expectations_sha256": expectations_version(settings),
            "dvc": dvc_version(settings)}
