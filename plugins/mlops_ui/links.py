"""Operator extra links on the tasks that produce something, without touching the DAG files.

They are global links (a plugin attribute), so Airflow asks every one of them for every task;
a link that does not apply returns "" and the UI shows no button. What a task produced is read
from its XCom return value (and, for a task that only decides, from the task it decided on):
`run_id` / `version` -> MLflow, `report_uri` -> gate / Evidently / validation report,
`partition_uri` -> the manifest and the model page's lineage of that partition. Validation
tasks that return no report URI link to the validation index of their interval.

`links_for` is the pure part (tested on dicts); `task_links` reads the metadata DB in the API
server and caches the answer for a few seconds, since the UI asks once per link name.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.operatorlink import BaseOperatorLink

from mlops_ui import files, urls
from pipelines.core import storage
from pipelines.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

log = logging.getLogger(__name__)

MLFLOW_RUN, MLFLOW_VERSION = "MLflow run", "MLflow model version"
GATE_REPORT, EVIDENTLY, DRIFT_PLOT = "Gate report", "Evidently report", "Drift history plot"
DATA_DOCS, MANIFEST, LINEAGE, MODEL_PAGE = "GX Data Docs", "Partition manifest", "Partition lineage", "Model page"
REPORT = "Report"  # any other report a task returns (e.g. an online/offline skew check)
NAMES = (MLFLOW_RUN, MLFLOW_VERSION, GATE_REPORT, EVIDENTLY, DRIFT_PLOT, DATA_DOCS, MANIFEST,
         LINEAGE, MODEL_PAGE, REPORT)

# A task that only decides links to what it decided on: the return value of these tasks.
RELATED = {"decide_promotion": ("evaluate_gates",), "promote": ("evaluate_gates",),
           "decide": ("check_drift",), "retrain_requested": ("check_drift",),
           "validate_raw": ("resolve_window",), "plan_chunks": ("resolve_model",),
           "score_chunk": ("resolve_model",)}
MONITORING_TASKS = ("check_drift", "check_quality", "decide", "plot_history", "request_retraining")
MLFLOW_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class TaskOutput:
    """A task instance's return value, those of its related tasks, and its interval."""

    dag_id: str
    task_id: str
    value: Any
    related: dict[str, Any] = field(default_factory=dict)
    interval_day: date | None = None


def _rel(settings: Settings, uri: str) -> str | None:
    """`uri` relative to the reports root, or None if it is not under it."""
    base = settings.reports_uri.rstrip("/") + "/"
    path = uri.removeprefix("file://")
    return path[len(base):] if path.startswith(base) else None


def _report_links(settings: Settings, uri: str, out: dict[str, str]) -> None:
    rel = _rel(settings, uri)
    if rel is None:
        return
    if rel.startswith("gates/"):
        md = uri[:-len(".json")] + ".md" if uri.endswith(".json") else uri
        target = md if storage.exists(md) else uri
        out.setdefault(GATE_REPORT, files.href(settings, target) or "")
    elif rel.startswith("drift/") and uri.endswith(".html"):
        out.setdefault(EVIDENTLY, files.href(settings, uri) or "")
    elif rel.startswith("drift/") and uri.endswith(".png"):
        out.setdefault(DRIFT_PLOT, files.href(settings, uri) or "")
    elif not storage.exists(uri):
        return
    elif rel.startswith(("validation/", "data_docs/")):
        docs = uri
        if uri.endswith(".json"):
            docs = storage.read_json(uri).get("data_docs_uri") or uri[:-len(".json")] + ".md"
        out.setdefault(DATA_DOCS, files.href(settings, docs) or "")
    else:
        out.setdefault(REPORT, files.href(settings, uri) or "")


def _partition_links(settings: Settings, partition_uri: str, out: dict[str, str]) -> dict[str, Any]:
    manifest_uri = storage.join(partition_uri, "_manifest.json")
    out.setdefault(MANIFEST, files.href(settings, manifest_uri) or "")
    name = partition_uri.rstrip("/").rsplit("/", 1)[-1]
    if name.startswith("date="):
        out.setdefault(LINEAGE, urls.page("/", partition=name[len("date="):]) + "#lineage")
    return storage.read_json(manifest_uri) if storage.exists(manifest_uri) else {}


def links_for(settings: Settings, task: TaskOutput, model_name: str) -> dict[str, str]:
    """Link name -> URL for one task instance (only the links that apply)."""
    out: dict[str, str] = {}
    values = [task.value, *(task.related.get(t) for t in RELATED.get(task.task_id, ()))]
    for value in values:
        if isinstance(value, str) and "/" in value:  # a task that returns one URI
            _report_links(settings, value, out)
        if not isinstance(value, dict):
            continue
        facts = dict(value)
        if task.task_id == "build_training_set" and facts.get("start") and facts.get("end"):
            # the training set is validated in the same task; its report is named by the window
            facts.setdefault("report_uri", storage.join(
                settings.reports_uri, "validation", "training_set",
                f"{facts['start']}_{facts['end']}.json"))
        if isinstance(facts.get("partition_uri"), str):
            manifest = _partition_links(settings, facts["partition_uri"], out)
            facts.setdefault("model_run_id", manifest.get("model_run_id"))
            facts.setdefault("model", manifest.get("model"))
        for key in ("report_uri", "gate_report", "history_plot", "data_docs_uri",
                    "expectations_report_uri"):
            if isinstance(facts.get(key), str):
                _report_links(settings, facts[key], out)
        run_id = next((str(facts[k]) for k in ("run_id", "model_run_id")
                       if MLFLOW_RUN_ID.match(str(facts.get(k) or ""))), None)
        if run_id:
            out.setdefault(MLFLOW_RUN, urls.mlflow_run(run_id))
        version = next((facts[k] for k in ("version", "to_version", "model_version")
                        if facts.get(k) not in (None, "")), None)
        if version is not None and str(version).isdigit():
            out.setdefault(MLFLOW_VERSION, urls.mlflow_version(str(facts.get("model") or model_name),
                                                               str(version)))
    if task.task_id.startswith("validate") and DATA_DOCS not in out:
        window = task.related.get("resolve_window")
        if isinstance(window, dict) and window.get("start") and window.get("end"):
            out[DATA_DOCS] = urls.page("/validation", start=window["start"], end=window["end"])
        elif task.interval_day is not None:
            out[DATA_DOCS] = urls.page("/validation", day=task.interval_day.isoformat())
    if MLFLOW_VERSION in out or task.task_id in MONITORING_TASKS:
        anchor = "#trends" if task.task_id in MONITORING_TASKS else "#models"
        out.setdefault(MODEL_PAGE, urls.page("/") + anchor)
    return {k: v for k, v in out.items() if v}


# -- reading a task instance's outputs from the metadata DB (API server) ---------------------

_CACHE: dict[tuple, tuple[float, dict[str, str]]] = {}
_LOCK = threading.Lock()
CACHE_SECONDS = 10.0


def _decode(value: Any) -> Any:
    if isinstance(value, (bytes, str)):
        try:
            return json.loads(value)  # plain JSON only: never instantiate classes named in XCom
        except ValueError:
            return value
    return value


def read_task_output(ti_key: TaskInstanceKey) -> TaskOutput:
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    related = RELATED.get(ti_key.task_id, ())
    with create_session() as session:
        rows = session.execute(XComModel.get_many(
            key="return_value", run_id=ti_key.run_id, dag_ids=ti_key.dag_id,
            task_ids=[ti_key.task_id, *related],
        ).with_only_columns(XComModel.task_id, XComModel.map_index, XComModel.value)).all()
        start = session.scalar(select(DagRun.data_interval_start).where(
            DagRun.dag_id == ti_key.dag_id, DagRun.run_id == ti_key.run_id))
    own = next((_decode(r.value) for r in rows
                if r.task_id == ti_key.task_id and r.map_index == ti_key.map_index), None)
    others = {r.task_id: _decode(r.value) for r in rows
              if r.task_id in related and r.map_index == -1}
    return TaskOutput(ti_key.dag_id, ti_key.task_id, own, others,
                      start.date() if start is not None else None)


def task_links(ti_key: TaskInstanceKey) -> dict[str, str]:
    key = (ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index,
           getattr(ti_key, "try_number", None))
    now = time.monotonic()
    with _LOCK:
        hit = _CACHE.get(key)
        if hit and now - hit[0] < CACHE_SECONDS:
            return hit[1]
    from mlops_ui.data import config

    settings = get_settings()
    links = links_for(settings, read_task_output(ti_key), config(settings).registry.model_name)
    with _LOCK:
        if len(_CACHE) > 512:
            _CACHE.clear()
        _CACHE[key] = (now, links)
    return links


class MlopsLink(BaseOperatorLink):
    """One named link; the URL comes from `task_links` ("" when it does not apply)."""

    name = ""

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        try:
            return task_links(ti_key).get(self.name, "")
        except Exception:
            log.exception("mlops_ui: extra link %r of %s failed", self.name, ti_key)
            return ""


def global_links() -> list[BaseOperatorLink]:
    """One link object per name (Airflow keys global links by name)."""
    return [type(re.sub(r"\W", "", n.title()) + "Link", (MlopsLink,), {"name": n})() for n in NAMES]
