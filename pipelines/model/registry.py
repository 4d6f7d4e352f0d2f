"""MLflow model registry by aliases: champion, challenger, previous_champion.

Every alias move is verified after it is made and recorded as one JSON document in the
promotion history (`<registry_uri>/history/`). Stages are never used (deprecated in MLflow).

Longer than our other modules on purpose: every call to the registry goes through this one
module (`GuardedClient`), so the rule that "not found" and "could not ask" are different answers
has a single home, next to the alias moves that depend on it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pipelines.core import locations, storage
from pipelines.core.locks import alias_lock
from pipelines.core.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"


class RegistryError(RuntimeError):
    pass


class RegistryNotFound(RegistryError):
    """The registry answered: the model, version or alias does not exist."""


class RegistryUnavailable(RegistryError):
    """The registry could not be asked (down, timed out, refused, failed): never "absent"."""


def _not_found(exc: BaseException) -> bool:
    """True only for the registry's own "does not exist" answers.

    MLflow says RESOURCE_DOES_NOT_EXIST for a missing model or version, and
    INVALID_PARAMETER_VALUE "... alias X not found." for a missing alias (SQL and REST stores).
    """
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    code = getattr(exc, "error_code", "")
    message = str(getattr(exc, "message", exc)).lower()
    return code == "RESOURCE_DOES_NOT_EXIST" or (
        code == "INVALID_PARAMETER_VALUE" and "alias" in message and "not found" in message)


def safe_uri(uri: str) -> str:
    """A URI with any user:password@ removed (for messages and logs)."""
    import re

    return re.sub(r"(://)[^/@]*@", r"\1", uri)


class GuardedClient:
    """An MlflowClient whose every call answers "not found" or "could not ask", never both.

    A registry error that is not the registry's own "does not exist" answer (a 503, a timeout,
    a refused connection, a locked database) is raised as RegistryUnavailable naming the
    registry, the call and the error, so no caller can mistake an outage for an absent alias.
    """

    def __init__(self, inner: "MlflowClient", uri: str) -> None:
        self._inner, self.uri = inner, safe_uri(uri)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except RegistryError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified, then re-raised with its cause
                what = f"{name}({', '.join(map(repr, args))})"
                detail = f"{type(exc).__name__}: {str(exc)[:400]}"
                if _not_found(exc):
                    raise RegistryNotFound(f"MLflow registry at {self.uri}: {what}: {detail}") from exc
                raise RegistryUnavailable(f"could not ask the MLflow registry at {self.uri}: "
                                          f"{what} failed with {detail}") from exc

        return call


def _mlflow_client(uri: str) -> "MlflowClient":
    import mlflow

    return mlflow.MlflowClient(uri)


def configure_mlflow(settings: Settings) -> None:
    """Point MLflow at the configured tracking URI with the project's bounded HTTP retries and
    timeouts (MLflow's defaults wait about 4 minutes before failing) and pickle loading off."""
    import mlflow

    for key, value in settings.mlflow_env().items():
        os.environ.setdefault(key, value)
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # forced, whatever was set
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(settings.mlflow_tracking_uri[len("sqlite:///"):]), exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)


def download(settings: Settings, artifact_uri: str, dst_path: str) -> str:
    """Download a run artifact into dst_path; a failure names the store and the artifact."""
    import mlflow

    configure_mlflow(settings)
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=dst_path)
    except Exception as exc:  # noqa: BLE001 - re-raised with its cause
        raise RegistryUnavailable(
            f"could not download {artifact_uri} through the MLflow tracking server at "
            f"{safe_uri(settings.mlflow_tracking_uri)}: {type(exc).__name__}: {str(exc)[:400]}"
        ) from exc


def client(settings: Settings) -> GuardedClient:
    configure_mlflow(settings)
    return GuardedClient(_mlflow_client(settings.mlflow_tracking_uri), settings.mlflow_tracking_uri)


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


def ensure_registered_model(c: GuardedClient, name: str) -> None:
    try:
        c.get_registered_model(name)
    except RegistryNotFound:
        try:
            c.create_registered_model(name, description="Managed by the Airflow MLOps pipeline: "
                                      "aliases champion / challenger / previous_champion.")
        except RegistryUnavailable as exc:  # created concurrently
            if "already exists" not in str(exc.__cause__).lower():
                raise


def by_alias(c: GuardedClient, name: str, alias: str) -> "ModelVersion | None":
    """The version holding `alias`, or None when the registry says it is absent (or the model
    does not exist yet). Any other failure raises RegistryUnavailable: an outage is never
    "no champion"."""
    try:
        return c.get_model_version_by_alias(name, alias)
    except RegistryNotFound:
        return None


def _move(c: GuardedClient, name: str, alias: str, version: str) -> None:
    """Point `alias` at `version` (retrying a concurrent SQLite writer outside our lock)."""
    for attempt in range(5):
        try:
            c.set_registered_model_alias(name, alias, version)
            return
        except RegistryUnavailable as exc:  # a concurrent writer outside our lock (rare)
            if attempt == 4 or not any(s in str(exc.__cause__) for s in ("UNIQUE", "locked")):
                raise
            time.sleep(0.2 * (attempt + 1))


def _verify(c: GuardedClient, name: str, alias: str, version: str) -> None:
    got = by_alias(c, name, alias)
    if got is None or str(got.version) != str(version):
        raise RegistryError(f"alias {alias!r} of {name} should point at {version}, reads "
                            f"{None if got is None else got.version}")


def _set_alias(c: GuardedClient, name: str, alias: str, version: str) -> None:
    _move(c, name, alias, version)
    _verify(c, name, alias, version)


MAX_REASON = 500


def check_reason(reason: str) -> str:
    """A history reason: non-empty, at most MAX_REASON characters."""
    reason = str(reason).strip()
    if not reason:
        raise ValueError("a reason is required for the promotion history")
    if len(reason) > MAX_REASON:
        raise ValueError(f"reason is {len(reason)} characters; the promotion history keeps at "
                         f"most {MAX_REASON}")
    return reason


def record(settings: Settings, event: dict[str, Any]) -> str:
    """Append one event to the promotion history (one immutable JSON object per event)."""
    at = datetime.now(timezone.utc)
    event = {"at": at.isoformat(), **event}
    uri = storage.join(locations.history(settings),
                       f"{at.strftime('%Y%m%dT%H%M%S%fZ')}-{event['action']}-v{event.get('to_version')}.json")
    storage.write_json(uri, event)
    return uri


def history(settings: Settings) -> list[dict[str, Any]]:
    folder = locations.history(settings)
    return [storage.read_json(storage.join(folder, n)) for n in storage.listdir(folder)
            if n.endswith(".json")]


def promote(settings: Settings, name: str, version: str, actor: str, reason: str,
            gate_report_uri: str | None, forced: bool = False,
            user: str | None = None) -> dict[str, Any]:
    """Make `version` the champion; the old champion stays addressable as previous_champion.

    `actor` is the run that moved it, `user` the person who triggered that run (if any).
    """
    reason = check_reason(reason)
    with alias_lock(settings):
        return _promote(settings, name, version, actor, reason, gate_report_uri, forced, user)


def _promote(settings: Settings, name: str, version: str, actor: str, reason: str,
             gate_report_uri: str | None, forced: bool, user: str | None) -> dict[str, Any]:
    c = client(settings)
    c.get_model_version(name, version)  # RegistryNotFound if the version does not exist
    old = by_alias(c, name, CHAMPION)
    if old is not None and str(old.version) == str(version):
        _drop_challenger(c, name, str(version))  # a retried promotion finishes its clean-up
        return {"action": "noop", "to_version": str(version), "reason": "already champion"}
    if old is not None:
        _set_alias(c, name, PREVIOUS, str(old.version))
    _move(c, name, CHAMPION, str(version))
    # recorded as soon as the move is made: a failure after it (read-back, clean-up) fails the
    # task, and its retry is a no-op that finishes the clean-up
    event = {"action": "forced_promote" if forced else "promote", "model": name,
             "from_version": str(old.version) if old else None, "to_version": str(version),
             "actor": actor, "user": user, "reason": reason, "gate_report": gate_report_uri}
    event["history_uri"] = record(settings, event)
    _verify(c, name, CHAMPION, str(version))
    _drop_challenger(c, name, str(version))
    log.info("registry: %s champion %s -> %s (%s)", name, event["from_version"], version, reason)
    return event


def _drop_challenger(c: GuardedClient, name: str, version: str) -> None:
    if (ch := by_alias(c, name, CHALLENGER)) is not None and str(ch.version) == version:
        c.delete_registered_model_alias(name, CHALLENGER)


def rollback(settings: Settings, name: str, target: str, actor: str, reason: str,
             user: str | None = None) -> dict[str, Any]:
    """Move champion back to `target` (a version number, or 'previous')."""
    reason = check_reason(reason)
    with alias_lock(settings):
        return _rollback(settings, name, target, actor, reason, user)


def _rollback(settings: Settings, name: str, target: str, actor: str, reason: str,
              user: str | None) -> dict[str, Any]:
    c = client(settings)
    current = by_alias(c, name, CHAMPION)
    if target == "previous":
        prev = by_alias(c, name, PREVIOUS)
        if prev is None:
            raise RegistryError(f"{name} has no previous_champion to roll back to")
        target = str(prev.version)
    c.get_model_version(name, target)  # RegistryNotFound if the version does not exist
    if current is not None and str(current.version) == target:
        raise RegistryError(f"version {target} is already the champion of {name}")
    _move(c, name, CHAMPION, target)
    event = {"action": "rollback", "model": name, "to_version": target, "actor": actor,
             "user": user, "from_version": str(current.version) if current else None,
             "reason": reason}
    event["history_uri"] = record(settings, event)
    _verify(c, name, CHAMPION, target)
    if current is not None:  # after the move: a failure here never loses the rollback target
        _set_alias(c, name, PREVIOUS, str(current.version))
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
            "feature_service": tags.get("feature_service"),
            "request_features": tags.get("request_features", "{}")}


def load_onnx(settings: Settings, onnx_uri: str, expected_sha256: str) -> bytes:
    """Download a version's ONNX file and refuse it unless its sha256 matches the registry."""
    import hashlib

    with tempfile.TemporaryDirectory() as tmp:
        path = download(settings, onnx_uri, tmp)
        with open(path, "rb") as fh:
            data = fh.read()
    got = hashlib.sha256(data).hexdigest()
    if got != expected_sha256:
        raise RegistryError(f"{onnx_uri}: sha256 {got} does not match the registry's "
                            f"{expected_sha256}; refusing to load")
    return data
