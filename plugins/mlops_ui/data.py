"""What the model page shows, as plain dicts: the models holding aliases, the promotion history,
the lineage of a prediction partition and the validation reports of a day.

Read from the MLflow registry (`pipelines.model.registry`), the promotion history, partition manifests
(`pipelines.scoring.io.read_manifest`) and the reports, each where `pipelines.core.locations` puts
it. Report locations stay URIs here; the page turns them into links (`files.href`). A registry
that cannot be asked is said so ("could not ask the registry: ..."), never shown as an empty
one. No Airflow, no HTML.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pipelines.core import locations, storage
from pipelines.core.settings import Settings
from pipelines.model import registry

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipelines.core.config import Config

ROLES = (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS)
HEADLINE = ("roc_auc", "pr_auc", "calibration_error", "brier")
LINEAGE_TAGS = ("training_window", "trigger", "feature_service", "feature_service_hash",
                "dvc_data_version", "training_data_sha256", "git_commit", "params_sha256",
                "airflow_run_id", "onnx_sha256", "gate_verdict")
MOVES = ("promote", "forced_promote", "rollback")  # actions that move the champion alias


def config(settings: Settings) -> Config:
    """The project's params.yaml (re-read when the file changes)."""
    path = settings.params_path
    return _config(path, os.stat(path).st_mtime_ns)


@lru_cache(maxsize=2)
def _config(path: str, mtime_ns: int) -> Config:
    from pipelines.core.config import load_config

    return load_config(path)


def _iso_ms(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds") if ms else None


def gate_report_uri(settings: Settings, name: str, version: str) -> str | None:
    """The gate report `evaluate_challenger` wrote for a version, if there is one."""
    uri = locations.gate_report(settings, name, version)
    return uri if storage.exists(uri) else None


def head_to_head(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a version's gate measured against the champion it faced, both models on the same
    rows (the version's evaluation set): the champion's version and both models' headline
    metrics. None when the gate had no champion to compare with (or there is no report).

    Each version's own run metrics are on its own evaluation window: two versions trained on
    different windows cannot be compared by them, only by this."""
    comparison = (report or {}).get("comparison") or {}
    champion = comparison.get("champion_metrics")
    if not champion or not report.get("champion_version"):
        return None
    own = report.get("metrics") or {}
    return {"champion_version": str(report["champion_version"]),
            "metrics": {k: own[k] for k in HEADLINE if k in own},
            "champion_metrics": {k: champion[k] for k in HEADLINE if k in champion}}


def card_uri(settings: Settings, name: str, version: str) -> str | None:
    """A version's model card (`pipelines.model.card`), if it has one."""
    uri = locations.model_card(settings, name, version)
    return uri if storage.exists(uri) else None


def model_cards(settings: Settings, name: str,
                models: dict[str, dict[str, Any] | None] | None) -> dict[str, dict[str, Any] | None]:
    """The champion's and the challenger's model cards, side by side: each card's text with
    its datasheet and SHAP plot, or `error` saying plainly that the version has none and where
    it was looked for (never an empty card). None for a role no version holds."""
    from pipelines.model.card import DATASHEET_MD, SHAP_PNG

    out: dict[str, dict[str, Any] | None] = {}
    for role in (registry.CHAMPION, registry.CHALLENGER):
        m = (models or {}).get(role)
        if m is None:
            out[role] = None
            continue
        version = str(m["version"])
        uri = locations.model_card(settings, name, version)
        extra = {key: storage.join(locations.card_folder(settings, name, version), f)
                 for key, f in (("datasheet_uri", DATASHEET_MD), ("plot_uri", SHAP_PNG))}
        card = {"role": role, "version": version, "uri": uri, "text": None, "error": None,
                **{k: v if storage.exists(v) else None for k, v in extra.items()}}
        if storage.exists(uri):
            card["text"] = storage.read_bytes(uri).decode("utf-8")
        else:
            card["error"] = (f"{name} v{version} has no model card: nothing at {uri}. It was "
                             f"registered without one (before model cards existed, or its "
                             f"training run failed before writing it); retrain to get one")
        out[role] = card
    return out


def describe_version(c: MlflowClient, settings: Settings, name: str, version: str,
                     role: str | None = None) -> dict[str, Any]:
    """One registered version: its run's metrics and params, lineage tags, gate verdict."""
    mv = c.get_model_version(name, str(version))
    tags = dict(mv.tags)
    run = c.get_run(mv.run_id) if mv.run_id else None
    metrics = dict(run.data.metrics) if run else {}
    params = dict(run.data.params) if run else {}
    # the gate report read once: whether it exists, and what it compared
    report_uri = locations.gate_report(settings, name, str(mv.version))
    report = storage.read_json_if_exists(report_uri)
    return {
        "role": role, "model": name, "version": str(mv.version), "run_id": mv.run_id,
        "aliases": sorted(getattr(mv, "aliases", []) or []),
        "created": _iso_ms(mv.creation_timestamp),
        "metrics": {k: metrics[k] for k in HEADLINE if k in metrics},
        "other_metrics": {k: v for k, v in sorted(metrics.items()) if k not in HEADLINE},
        "params": {k: params[k] for k in ("estimator", "train_rows", "eval_rows", "window_start",
                                          "window_end") if k in params},
        "tags": {k: tags[k] for k in LINEAGE_TAGS if k in tags},
        "gate_report_uri": report_uri if report is not None else None,
        "head_to_head": head_to_head(report),
        "card_uri": card_uri(settings, name, str(mv.version)),
    }


def registry_exists(settings: Settings) -> bool:
    """False for an embedded MLflow store that nothing has written yet (a page must not create it)."""
    uri = settings.mlflow_tracking_uri
    return not uri.startswith("sqlite:///") or os.path.exists(uri[len("sqlite:///"):])


def unavailable(exc: registry.RegistryUnavailable) -> str:
    """What the page says when the registry could not be asked: the cause, credentials removed."""
    cause = exc.__cause__ or exc
    return f"could not ask the registry: {registry.safe_uri(f'{type(cause).__name__}: {cause}')[:600]}"


def models(settings: Settings, name: str) -> dict[str, dict[str, Any] | None]:
    """The versions holding champion, challenger and previous_champion (None where unset).

    Raises RegistryUnavailable when the registry cannot be asked (an outage is not "none")."""
    if not registry_exists(settings):
        return dict.fromkeys(ROLES)
    c = registry.client(settings)
    out: dict[str, dict[str, Any] | None] = {}
    for role in ROLES:
        mv = registry.by_alias(c, name, role)
        out[role] = None if mv is None else describe_version(c, settings, name, str(mv.version), role)
    return out


def models_or_error(settings: Settings, name: str) -> tuple[dict[str, dict[str, Any] | None] | None,
                                                           str | None]:
    """`models`, or None and why the registry could not be asked."""
    try:
        return models(settings, name), None
    except registry.RegistryUnavailable as exc:
        return None, unavailable(exc)


def promotion_history(settings: Settings, name: str, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first: every registration, alias move, rejection and approval wait of `name`.

    An event without its own gate report (a registration, a rollback) points at the report of
    the version it concerns, marked `gate_report_of_version`.
    """
    events = [e for e in registry.history(settings) if e.get("model", name) == name]
    events.sort(key=lambda e: e.get("at", ""), reverse=True)
    out = []
    for e in events[:limit]:
        version = e.get("to_version")
        own = e.get("gate_report")
        fallback = None if own or version is None else gate_report_uri(settings, name, str(version))
        out.append({
            "at": e.get("at"), "action": e.get("action"), "from_version": e.get("from_version"),
            "to_version": version, "actor": e.get("actor"), "user": e.get("user"),
            "reason": e.get("reason"),
            "failed_gates": e.get("failed_gates") or [], "moves_champion": e.get("action") in MOVES,
            "gate_report": own or fallback, "gate_report_of_version": bool(fallback),
            "history_uri": e.get("history_uri"), "run_id": e.get("run_id"),
            "card": card_uri(settings, name, str(version)) if version is not None else None,
        })
    return out


def _partition_day(entry: str) -> date | None:
    """The day of a partition folder name (`locations.partition`), else None."""
    try:
        day = date.fromisoformat(entry[-10:])
    except ValueError:
        return None
    return day if locations.partition(day) == entry else None


def partitions(settings: Settings) -> list[str]:
    """Days with a published prediction partition (a manifest), newest first."""
    days = [d for d in map(_partition_day, storage.listdir(settings.predictions_uri)) if d]
    return sorted((d.isoformat() for d in days if storage.exists(locations.manifest(settings, d))),
                  reverse=True)


def _read_manifest(settings: Settings, day: date) -> dict[str, Any] | None:
    from pipelines.scoring.io import read_manifest  # pyarrow: only when a page needs it

    return read_manifest(settings, day)


def lineage(settings: Settings, day: date) -> dict[str, Any] | None:
    """data version -> feature service -> training run -> model version -> ONNX -> partition.

    Each step carries what the manifest says and what the registry says; `ok` is False where
    they disagree (the partition was not scored by what the registry holds for that version),
    None where nothing was compared: `registry_error` says when the registry could not be asked,
    and `consistent` is then None (unknown), not False.
    """
    manifest = _read_manifest(settings, day)
    if manifest is None:
        return None
    name, version = manifest["model"], str(manifest["model_version"])
    registry_error = None
    try:
        mv = describe_version(registry.client(settings), settings, name, version)
    except registry.RegistryNotFound as exc:  # a deleted version: a mismatch, shown
        mv = {"version": version, "run_id": None, "tags": {}, "error": str(exc)}
    except registry.RegistryUnavailable as exc:  # nothing known: no step can be compared
        registry_error = unavailable(exc)
        mv = {"version": version, "run_id": None, "tags": {}}
    tags = mv["tags"]
    data_version = manifest.get("data_version") or {}
    steps = [
        {"step": "data version", "value": tags.get("dvc_data_version"),
         "detail": {"training data sha256": tags.get("training_data_sha256"),
                    "training window": tags.get("training_window")}, "ok": None},
        {"step": "feature service", "value": manifest.get("feature_service"),
         "detail": {"hash at training": tags.get("feature_service_hash"),
                    "service at training": tags.get("feature_service")},
         "ok": _same(manifest.get("feature_service"), tags.get("feature_service"))},
        {"step": "training run", "value": manifest.get("model_run_id"), "run_id": manifest.get("model_run_id"),
         "detail": {"trigger": tags.get("trigger"), "git commit": tags.get("git_commit"),
                    "airflow run": tags.get("airflow_run_id")},
         "ok": _same(manifest.get("model_run_id"), mv.get("run_id"))},
        {"step": "model version", "value": f"{name} v{version}", "model": name, "version": version,
         "detail": {"gate verdict": tags.get("gate_verdict"), "policy": manifest.get("backfill_model"),
                    "chosen as": manifest.get("model_choice")},
         "ok": False if "error" in mv else None},
        {"step": "ONNX sha256", "value": manifest.get("onnx_sha256"),
         "detail": {"registry": tags.get("onnx_sha256")},
         "ok": _same(manifest.get("onnx_sha256"), tags.get("onnx_sha256"))},
        {"step": "partition", "value": locations.partition(day),
         "uri": locations.manifest(settings, day),
         "detail": {"rows": manifest.get("output_rows"), "input rows": manifest.get("input_rows"),
                    "files": len(manifest.get("files", [])), "airflow run": manifest.get("airflow_run_id"),
                    "input data (dvc)": data_version.get("dvc"),
                    "input sha256": data_version.get("input_sha256")}, "ok": None},
    ]
    consistent = None if registry_error else all(s["ok"] is not False for s in steps)
    return {"date": day.isoformat(), "model": name, "version": version, "steps": steps,
            "consistent": consistent, "registry_error": registry_error, "manifest": manifest}


def _same(a: Any, b: Any) -> bool | None:
    return None if a is None or b is None else str(a) == str(b)


def validation_reports(settings: Settings, days: list[date]) -> list[dict[str, Any]]:
    """Validation reports of the given days: every table of params.yaml (a reference table's
    snapshot) and the predictions, each where `locations.validation_report` puts it."""
    from pipelines.data.checks import PREDICTIONS  # suite name of the predictions check

    sources = config(settings).dataset.sources
    wanted = [(t, locations.partition(None)) for t, s in sources.items() if not s.timestamp]
    wanted += [(t, locations.partition(d)) for d in days
               for t in [*(t for t, s in sources.items() if s.timestamp), PREDICTIONS]]
    rows = []
    for table, part in wanted:
        uri = locations.validation_report(settings, table, part)
        try:
            report = storage.read_json(uri)
        except (OSError, ValueError):
            continue  # not validated (or being replaced): nothing to list
        site = storage.join(locations.data_docs(settings, table, part), "index.html")  # GX's site
        rows.append({"table": table, "partition": part,
                     "success": report.get("success"), "rows": report.get("rows"),
                     "checks": report.get("n_checks"),
                     "failures": len(report.get("failures") or []),
                     "warnings": len(report.get("warnings") or []),
                     "report_uri": uri, "expectations_report_uri": report.get("expectations_report_uri"),
                     "data_docs_uri": report.get("data_docs_uri"),
                     "data_docs_site": site if storage.exists(site) else None})
    return sorted(rows, key=lambda r: (r["partition"], r["table"]))


def days_between(start: date, end: date) -> list[date]:
    """[start, end) as a list of days."""
    return [start + timedelta(days=k) for k in range((end - start).days)]
