"""MLflow model registry by aliases: champion, challenger, previous_champion.

Every alias move is verified after it is made and recorded as one JSON document in the
promotion history (`<registry_uri>/history/`). Stages are never used (deprecated in MLflow).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pipelines import storage
from pipelines.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"


class RegistryError(RuntimeError):
    pass


def client(settings: Settings) -> "MlflowClient":
    import mlflow

    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(settings.mlflow_tracking_uri[len("sqlite:///"):]), exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return mlflow.MlflowClient(settings.mlflow_tracking_uri)


def ensure_experiment(settings: Settings, name: str) -> str:
    """Use experiment `name`, creating it with artifacts under the configured root."""
    import mlflow

    c = client(settings)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        location = settings.mlflow_artifacts_uri or None  # None: the tracking server's default
        if location and ":/" not in location:  # a plain path (s3://, mlflow-artifacts:/ pass)
            location = f"file://{os.path.abspath(location)}"
        exp_id = c.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def ensure_registered_model(c: "MlflowClient", name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name, description="Managed by the Airflow MLOps pipeline: "
                                      "aliases champion / challenger / previous_champion.")
        except MlflowException as exc:  # created concurrently
            if "already exists" not in str(exc).lower():
                raise


def by_alias(c: "MlflowClient", name: str, alias: str) -> "ModelVersion | None":
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def lock_url() -> str | None:
    """Postgres URL for locks across machines: $MLOPS_LOCK_URL, else $MLOPS_METRICS_DB if that
    is Postgres; None: a file lock in the local state folder."""
    for name in ("MLOPS_LOCK_URL", "MLOPS_METRICS_DB"):
        url = os.environ.get(name, "").strip()
        if url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
            return url
    return None


@contextmanager
def pg_advisory_lock(url: str, name: str, timeout: float = 300.0) -> Iterator[None]:
    """A Postgres session-level advisory lock on `name`, held while the block runs (released
    on exit, or by the server if this process dies: the lock lives in its connection)."""
    import hashlib

    import psycopg2

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    con = psycopg2.connect("postgresql://" + url.split("://", 1)[1], connect_timeout=30)
    try:
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("SET lock_timeout = %s", (f"{int(timeout * 1000)}ms",))
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            with con.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        con.close()


@contextmanager
def alias_lock(settings: Settings) -> Iterator[None]:
    """Serialise alias moves between processes.

    Concurrent `set_registered_model_alias` calls on SQLite were seen to fail with a UNIQUE
    constraint error. With a Postgres lock URL (MLOPS_LOCK_URL, or MLOPS_METRICS_DB when it is
    Postgres) this is an advisory lock, which holds across machines; otherwise a file lock in
    the local state folder (processes of one machine). The Airflow pool `model_registry` (one
    slot) also serialises the DAG tasks that move aliases.
    """
    from filelock import FileLock

    url = lock_url()
    if url:
        with pg_advisory_lock(url, "mlops:registry-aliases"):
            yield
        return
    if not storage.is_local(settings.state_uri):
        yield
        return
    path = os.path.join(storage.local_path(settings.state_uri), "registry.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileLock(path, timeout=300):
        yield


def _set_alias(c: "MlflowClient", name: str, alias: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    for attempt in range(5):
        try:
            c.set_registered_model_alias(name, alias, version)
            break
        except MlflowException as exc:  # a concurrent writer outside our lock (rare)
            if attempt == 4 or not any(s in str(exc) for s in ("UNIQUE", "locked")):
                raise
            time.sleep(0.2 * (attempt + 1))
    got = by_alias(c, name, alias)
    if got is None or str(got.version) != str(version):
        raise RegistryError(f"alias {alias!r} of {name} should point at {version}, reads {got}")


def record(settings: Settings, event: dict[str, Any]) -> str:
    """Append one event to the promotion history (one immutable JSON object per event)."""
    at = datetime.now(timezone.utc)
    event = {"at": at.isoformat(), **event}
    uri = storage.join(settings.registry_uri, "history",
                       f"{at.strftime('%Y%m%dT%H%M%S%fZ')}-{event['action']}-v{event.get('to_version')}.json")
    storage.write_json(uri, event)
    return uri


def history(settings: Settings) -> list[dict[str, Any]]:
    folder = storage.join(settings.registry_uri, "history")
    return [storage.read_json(storage.join(folder, n)) for n in storage.listdir(folder)
            if n.endswith(".json")]


def promote(settings: Settings, name: str, version: str, actor: str, reason: str,
            gate_report_uri: str | None, forced: bool = False) -> dict[str, Any]:
    """Make `version` the champion; the old champion stays addressable as previous_champion."""
    with alias_lock(settings):
        return _promote(settings, name, version, actor, reason, gate_report_uri, forced)


def _promote(settings: Settings, name: str, version: str, actor: str, reason: str,
             gate_report_uri: str | None, forced: bool) -> dict[str, Any]:
    c = client(settings)
    c.get_model_version(name, version)  # raises if the version does not exist
    old = by_alias(c, name, CHAMPION)
    if old is not None and str(old.version) == str(version):
        return {"action": "noop", "to_version": str(version), "reason": "already champion"}
    if old is not None:
        _set_alias(c, name, PREVIOUS, str(old.version))
    _set_alias(c, name, CHAMPION, str(version))
    if (ch := by_alias(c, name, CHALLENGER)) is not None and str(ch.version) == str(version):
        c.delete_registered_model_alias(name, CHALLENGER)
    event = {"action": "forced_promote" if forced else "promote", "model": name,
             "from_version": str(old.version) if old else None, "to_version": str(version),
             "actor": actor, "reason": reason, "gate_report": gate_report_uri}
    event["history_uri"] = record(settings, event)
    log.info("registry: %s champion %s -> %s (%s)", name, event["from_version"], version, reason)
    return event


def rollback(settings: Settings, name: str, target: str, actor: str, reason: str) -> dict[str, Any]:
    """Move champion back to `target` (a version number, or 'previous')."""
    with alias_lock(settings):
        return _rollback(settings, name, target, actor, reason)


def _rollback(settings: Settings, name: str, target: str, actor: str, reason: str) -> dict[str, Any]:
    c = client(settings)
    current = by_alias(c, name, CHAMPION)
    if target == "previous":
        prev = by_alias(c, name, PREVIOUS)
        if prev is None:
            raise RegistryError(f"{name} has no previous_champion to roll back to")
        target = str(prev.version)
    c.get_model_version(name, target)  # raises if the version does not exist
    if current is not None and str(current.version) == target:
        raise RegistryError(f"version {target} is already the champion of {name}")
    if current is not None:
        _set_alias(c, name, PREVIOUS, str(current.version))
    _set_alias(c, name, CHAMPION, target)
    event = {"action": "rollback", "model": name, "to_version": target, "actor": actor,
             "from_version": str(current.version) if current else None, "reason": reason}
    event["history_uri"] = record(settings, event)
    return event


def delete_version(settings: Settings, name: str, version: str) -> None:
    """Delete a model version, unless it holds champion or previous_champion."""
    with alias_lock(settings):
        c = client(settings)
        held = [a for a in (CHAMPION, PREVIOUS)
                if (mv := by_alias(c, name, a)) is not None and str(mv.version) == str(version)]
        if held:
            raise RegistryError(f"refusing to delete {name} v{version}: it holds {held}")
        c.delete_model_version(name, str(version))
        record(settings, {"action": "delete", "model": name, "to_version": str(version),
                          "actor": "pipeline", "reason": "deleted"})


def resolve_champion(settings: Settings, name: str) -> dict[str, Any]:
    """The champion's version, run and ONNX hash, pinned for a whole scoring run."""
    c = client(settings)
    mv = by_alias(c, name, CHAMPION)
    if mv is None:
        raise RegistryError(f"model {name!r} has no 'champion' alias: train and promote a model "
                            f"first (trigger the `training` DAG)")
    return describe(name, mv)


def describe(name: str, mv: "ModelVersion") -> dict[str, Any]:
    """What scoring pins of a registered version: run, ONNX location and hash, inputs."""
    tags = dict(mv.tags)
    if "onnx_sha256" not in tags:
        raise RegistryError(f"{name} v{mv.version} has no ONNX artifact tags; cannot score")
    return {"model": name, "version": str(mv.version), "run_id": mv.run_id,
            "onnx_sha256": tags["onnx_sha256"], "onnx_uri": tags["onnx_uri"],
            "numeric": tags["numeric_inputs"].split(","),
            "categorical": [x for x in tags["categorical_inputs"].split(",") if x],
            "feature_service": tags.get("feature_service")}
