"""The Feast feature store: which definitions and stores, `feast apply`, and what a feature
service is (its hash for lineage, its output schema).

Feature definitions live only in `feature_repo/`; `feature_store*.yaml` reads locations from
the environment, which `feast_env` sets from the project's settings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING

from pipelines.core import locations, storage
from pipelines.core.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


# feature_repo/<file> per online store (FEAST_ONLINE_STORE); both share registry and offline store.
FEAST_YAML = {"sqlite": "feature_store.yaml", "redis": "feature_store.redis.yaml"}


def online_store_kind() -> str:
    """`FEAST_ONLINE_STORE` (sqlite | redis); unset: redis if FEAST_REDIS_CONNECTION is set."""
    kind = os.environ.get("FEAST_ONLINE_STORE", "").strip().lower()
    if not kind:
        kind = "redis" if os.environ.get("FEAST_REDIS_CONNECTION", "").strip() else "sqlite"
    if kind not in FEAST_YAML:
        raise ValueError(f"FEAST_ONLINE_STORE={kind!r}: expected one of {sorted(FEAST_YAML)}")
    return kind


def feast_yaml(settings: Settings) -> str:
    """The feature_store*.yaml of the configured online store."""
    return os.path.join(settings.feature_repo, FEAST_YAML[online_store_kind()])


def feast_env(settings: Settings) -> dict[str, str]:
    """Environment that the feature_store*.yaml expands (registry and online store locations).

    Defaults: the registry beside the data (`<MLOPS_DATA_URI>/feast/registry.db`) when the data
    is in an object store, else in the local state folder (`<state>/feast`, or FEAST_STATE_DIR),
    where the SQLite online store also lives. The Redis online store needs
    FEAST_REDIS_CONNECTION (host:port,password=...,db=N).
    """
    kind = online_store_kind()
    env: dict[str, str] = {}

    def feast_dir() -> str:
        path = os.environ.get("FEAST_STATE_DIR") or f"{storage.local_path(settings.state_uri)}/feast"
        os.makedirs(path, exist_ok=True)
        return path

    registry = os.environ.get("FEAST_REGISTRY_PATH", "").strip()
    if not registry:
        registry = (f"{feast_dir()}/registry.db" if storage.is_local(settings.data_uri)
                    else locations.feast_registry(settings))
    env["FEAST_REGISTRY_PATH"] = registry
    if kind == "sqlite":
        env["FEAST_ONLINE_PATH"] = (os.environ.get("FEAST_ONLINE_PATH", "").strip()
                                    or f"{feast_dir()}/online.db")
    elif not os.environ.get("FEAST_REDIS_CONNECTION", "").strip():
        raise ValueError("FEAST_ONLINE_STORE=redis needs FEAST_REDIS_CONNECTION "
                         "(host:port,password=...,db=N)")
    endpoint = storage.s3_endpoint()
    if registry.startswith("s3://") and endpoint and not os.environ.get("FEAST_S3_ENDPOINT_URL"):
        env["FEAST_S3_ENDPOINT_URL"] = endpoint  # what Feast's S3 registry store reads
    return env


def get_store(settings: Settings) -> "FeatureStore":
    from pathlib import Path

    from feast import FeatureStore

    os.environ.update(feast_env(settings))
    return FeatureStore(repo_path=settings.feature_repo, fs_yaml_file=Path(feast_yaml(settings)))


def apply_definitions(settings: Settings) -> None:
    """`feast apply` on the feature repo (idempotent)."""
    env = {**os.environ, **feast_env(settings)}
    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    out = subprocess.run([feast, "-f", feast_yaml(settings), "apply"], cwd=settings.feature_repo,
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"feast apply failed ({out.returncode}):\n{out.stdout[-2000:]}\n"
                           f"{out.stderr[-4000:]}")


def _without_meta(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _without_meta(v) for k, v in obj.items() if k != "meta"}
    return [_without_meta(v) for v in obj] if isinstance(obj, list) else obj


def feature_service_hash(store: "FeatureStore", service_name: str) -> str:
    """Hash of the service's and its views' specs, without registry (apply) timestamps."""
    import json

    from google.protobuf.json_format import MessageToDict

    service = store.get_feature_service(service_name)
    specs = [MessageToDict(service.to_proto().spec)]
    odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
    for projection in sorted(service.feature_view_projections, key=lambda p: p.name):
        fv = odfvs.get(projection.name) or store.get_feature_view(projection.name)
        spec = fv.to_proto().spec
        if projection.name in odfvs:  # pickled UDF bytes differ per apply; its source does not
            spec.ClearField("feature_transformation")
            spec.ClearField("user_defined_function")
            specs.append({"udf": fv.feature_transformation.udf_string})
        specs.append(MessageToDict(spec))
    text = json.dumps(_without_meta(specs), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def service_schema(store: "FeatureStore", service_name: str) -> dict[str, tuple[str, str, object]]:
    """Output column -> (view, feature, declared Feast dtype) of every feature of the service."""
    service = store.get_feature_service(service_name)
    return {f"{p.name_to_use()}__{f.name}": (p.name_to_use(), f.name, f.dtype)
            for p in service.feature_view_projections for f in p.features}


