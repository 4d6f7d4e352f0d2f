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
from typing import TYPE_CHECKING, Any

from pipelines.core import locations, storage
from pipelines.core.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


# feature_repo/<file> per online store (FEAST_ONLINE_STORE); both share registry and offline store.
FEAST_YAML = {"sqlite": "feature_store.yaml", "redis": "feature_store.redis.yaml"}


def online_store_kind(settings: Settings | None = None) -> str:
    """`FEAST_ONLINE_STORE` (sqlite | redis); unset: redis if FEAST_REDIS_CONNECTION is set."""
    if settings is None:
        from pipelines.core.settings import get_settings

        settings = get_settings()
    kind = settings.feast_online_store
    if not kind:
        kind = "redis" if settings.feast_redis_connection else "sqlite"
    if kind not in FEAST_YAML:
        raise ValueError(f"FEAST_ONLINE_STORE={kind!r}: expected one of {sorted(FEAST_YAML)}")
    return kind


def feast_yaml(settings: Settings) -> str:
    """The feature_store*.yaml of the configured online store."""
    return os.path.join(settings.feature_repo, FEAST_YAML[online_store_kind(settings)])


def feast_env(settings: Settings) -> dict[str, str]:
    """Environment that the feature_store*.yaml expands (registry and online store locations).

    Defaults: the registry beside the data (`<MLOPS_DATA_URI>/feast/registry.db`) when the data
    is in an object store, else in the local state folder (`<state>/feast`, or FEAST_STATE_DIR),
    where the SQLite online store also lives. The Redis online store needs
    FEAST_REDIS_CONNECTION (host:port,password=...,db=N).
    """
    kind = online_store_kind(settings)
    env: dict[str, str] = {}

    def feast_dir() -> str:
        path = settings.feast_state_dir or f"{storage.local_path(settings.state_uri)}/feast"
        os.makedirs(path, exist_ok=True)
        return path

    registry = settings.feast_registry_path
    if not registry:
        registry = (f"{feast_dir()}/registry.db" if storage.is_local(settings.data_uri)
                    else locations.feast_registry(settings))
    env["FEAST_REGISTRY_PATH"] = registry
    if kind == "sqlite":
        env["FEAST_ONLINE_PATH"] = settings.feast_online_path or f"{feast_dir()}/online.db"
    elif not settings.feast_redis_connection:
        raise ValueError("FEAST_ONLINE_STORE=redis needs FEAST_REDIS_CONNECTION "
                         "(host:port,password=...,db=N)")
    endpoint = storage.s3_endpoint()
    if registry.startswith("s3://") and endpoint and not settings.feast_s3_endpoint:
        env["FEAST_S3_ENDPOINT_URL"] = endpoint  # what Feast's S3 registry store reads
    return env


def get_store(settings: Settings) -> "FeatureStore":
    from pathlib import Path

    from feast import FeatureStore

    os.environ.update(feast_env(settings))
    store = FeatureStore(repo_path=settings.feature_repo, fs_yaml_file=Path(feast_yaml(settings)))
    assert_data_only(store)
    return store


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


def feature_service_hash(store: "FeatureStore", service_name: str,
                         request_time: dict[str, Any]) -> str:
    """Hash of what a model's features are: the service's and its views' specs (without
    registry apply timestamps) and the request-time spec it is trained and scored with."""
    import json

    from google.protobuf.json_format import MessageToDict

    from pipelines.core.specs import request_spec_json

    service = store.get_feature_service(service_name)
    specs = [MessageToDict(service.to_proto().spec)]
    for projection in sorted(service.feature_view_projections, key=lambda p: p.name):
        specs.append(MessageToDict(store.get_feature_view(projection.name).to_proto().spec))
    specs.append({"request_time": json.loads(request_spec_json(request_time))})
    text = json.dumps(_without_meta(specs), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def registry_code(proto: Any) -> list[str]:
    """What in a Feast registry proto carries code Feast would run when reading it: on-demand
    and stream feature views (their UDFs are exec'd, or dill-loaded, by every reader), any
    transformation or user-defined function, also inside the version history's snapshots, and
    any other bytes (a pickle). Empty: the registry holds data only."""
    from google.protobuf.message import Message

    found: list[str] = []

    def walk(msg: Message, path: str) -> None:
        kind = msg.DESCRIPTOR.name
        if kind in CODE_MESSAGES:
            found.append(f"{kind} at {path}")
        for fd, value in msg.ListFields():
            where = f"{path}.{fd.name}"
            if kind == "FeatureViewVersionRecord" and fd.name == "feature_view_proto":
                snapshot = _snapshot(msg)  # a serialised view: judged by what it holds
                if snapshot is None:
                    found.append(f"a {msg.feature_view_type} snapshot of "
                                 f"{msg.feature_view_name!r} at {where}")
                else:
                    walk(snapshot, f"{where}[{msg.feature_view_name} v{msg.version_number}]")
                continue
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                items = list(value.values())  # a map: its values (keys are text)
            else:
                items = list(value) if fd.is_repeated else [value]
            for item in items:
                if isinstance(item, Message):
                    walk(item, where)
                elif isinstance(item, bytes) and item:
                    found.append(f"{len(item)} bytes at {where}")

    walk(proto, "registry")
    return found


def _snapshot(record: Any) -> Any:
    """A version-history record's serialised plain feature view (None: any other kind)."""
    from feast.protos.feast.core.FeatureView_pb2 import FeatureView

    if record.feature_view_type != "feature_view":
        return None
    return FeatureView.FromString(record.feature_view_proto)


# protobuf messages that hold code (user-defined functions, transformations, views made of them)
CODE_MESSAGES = {"UserDefinedFunction", "UserDefinedFunctionV2", "FeatureTransformationV2",
                 "SubstraitTransformationV2", "OnDemandFeatureView", "StreamFeatureView"}


class RegistryCodeError(RuntimeError):
    """The Feast registry holds code; refusing to read it (the message names what)."""


def assert_data_only(store: "FeatureStore") -> None:
    """Refuse a registry that holds code, before Feast deserialises (and so runs) any of it.

    Read from the registry proto the store loaded when it was opened (`get_store`, once per
    task). Feast re-reads a registry file that changes while the store is in use: a write in
    that window is not covered; write access to the registry stays the real control.
    """
    found = registry_code(store.registry.proto())
    if found:
        raise RegistryCodeError(
            f"the Feast registry {store.config.registry.path} holds code that every reader "
            f"would run: {'; '.join(found[:10])}. This project keeps code out of the registry "
            "(request-time features are computed by pipelines.features.request); remove these "
            "objects (`feast apply` of feature_repo/ or `feast teardown`) before using it")


def service_schema(store: "FeatureStore", service_name: str) -> dict[str, tuple[str, str, object]]:
    """Output column -> (view, feature, declared Feast dtype) of every feature of the service."""
    service = store.get_feature_service(service_name)
    return {f"{p.name_to_use()}__{f.name}": (p.name_to_use(), f.name, f.dtype)
            for p in service.feature_view_projections for f in p.features}


