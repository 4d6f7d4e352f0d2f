"""Operator extra links on the tasks that produce something, without touching the DAG files.

They are global links (a plugin attribute), so Airflow asks every one of them for every task;
a link that does not apply returns "" and the UI shows no button. What a task produced is read
from its XCom return value: `run_id` / `version` -> MLflow, a report URI -> gate / Evidently /
validation report (recognised by where `pipelines.core.locations` puts each kind), a
`partition_uri` -> the manifest and the model page's lineage of that partition, a training set
-> its validation report. A task whose own value links to nothing (one that only decides) links
to what its upstream tasks in the DAG produced, the nearest first. A validation task (its name
starts with the verb `validate`, as task names are the verbs of the functions they call) that
returns no report links to the validation index of its window or interval; every task of a DAG
tagged `monitoring` links to the model page's trends, every task of the `rollout` DAG to its
live serving section (the split, per-variant evidence, the rollout's steps). A task whose
value names a model version links to that version's model card and datasheet once written.

Every URI from XCom is accepted only in normal form under the served trees (`files.href`):
anything else (another scheme, `..`, the landing zone) yields no link and is never read.
`links_for` is the pure part (tested on dicts); `mlops_ui.task_outputs` reads a task
instance's values and its DAG's edges in the API server.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.operatorlink import BaseOperatorLink

from mlops_ui import files, urls
from pipelines.core import locations, storage
from pipelines.core.settings import Settings

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

log = logging.getLogger(__name__)

MLFLOW_RUN, MLFLOW_VERSION = "MLflow run", "MLflow model version"
GATE_REPORT, EVIDENTLY, DRIFT_PLOT = "Gate report", "Evidently report", "Drift history plot"
DATA_DOCS, MANIFEST, LINEAGE, MODEL_PAGE = "GX Data Docs", "Partition manifest", "Partition lineage", "Model page"
REPORT = "Report"  # any other report a task returns (e.g. an online/offline skew check)
LIVE_SERVING = "Live serving"  # the model page's split, per-variant evidence, rollout steps
MODEL_CARD, DATASHEET = "Model card", "Datasheet"  # of the version a task trained or judged
NAMES = (MLFLOW_RUN, MLFLOW_VERSION, GATE_REPORT, EVIDENTLY, DRIFT_PLOT, DATA_DOCS, MANIFEST,
         LINEAGE, MODEL_PAGE, REPORT, LIVE_SERVING, MODEL_CARD, DATASHEET)
ROLLOUT_DAG = "rollout"  # dags/rollout.py: every task links to the live evidence

VALIDATE_VERB = "validate"  # task names are verbs (STYLE 12): validate_batch, validate_raw, ...
MONITORING_TAG = "monitoring"  # how a DAG says it monitors (dags/drift_monitor.py tags)
REPORT_KEYS = ("report_uri", "gate_report", "history_plot")  # URIs of reports, any kind
DOCS_KEYS = ("data_docs_uri", "expectations_report_uri")  # what a validation is read in
VERSION_KEYS = ("version", "to_version", "model_version")
MLFLOW_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class TaskOutput:
    """A task instance's return value, those of its upstream tasks, and where it runs.

    upstream: one dict per level of the task's ancestors in its DAG (task id -> value), the
    direct upstream tasks first; monitoring: the DAG is tagged `monitoring`.
    """

    dag_id: str
    task_id: str
    value: Any
    upstream: tuple[dict[str, Any], ...] = ()
    interval_day: date | None = None
    monitoring: bool = False


def _md(uri: str) -> str:
    """The Markdown twin of a JSON report (what a person reads)."""
    return uri[:-len(".json")] + ".md" if uri.endswith(".json") else uri


def _day(folder: str) -> date | None:
    try:
        day = date.fromisoformat(folder[-10:])
    except ValueError:
        return None
    return day if locations.partition(day) == folder else None


def _kind(settings: Settings, uri: str, facts: dict[str, Any], model_name: str) -> str:
    """Which report `uri` is, by comparing it with where `locations` puts each kind."""
    folder, name = posixpath.split(uri)
    day = _day(posixpath.basename(folder))
    if day and files.same(uri, locations.drift_report(settings, day, name)):
        return {".html": EVIDENTLY, ".png": DRIFT_PLOT}.get(posixpath.splitext(name)[1], REPORT)
    version = next((str(facts[k]) for k in VERSION_KEYS if facts.get(k) not in (None, "")), None)
    if version is not None:
        gate = locations.gate_report(settings, str(facts.get("model") or model_name), version)
        if files.same(uri, gate) or files.same(uri, _md(gate)):
            return GATE_REPORT
    validation = locations.validation_report(settings, posixpath.basename(folder),
                                             posixpath.splitext(name)[0])
    if files.same(uri, validation) or files.same(uri, _md(validation)):
        return DATA_DOCS
    return REPORT


def _report_links(settings: Settings, uri: str, facts: dict[str, Any], model_name: str,
                  out: dict[str, str]) -> None:
    """The link of one report URI, if it is a served file (never read otherwise)."""
    url = files.href(settings, uri)
    if url is None:
        return
    kind = _kind(settings, uri, facts, model_name)
    if kind == GATE_REPORT:
        md = _md(uri)
        out.setdefault(GATE_REPORT, files.href(settings, md) if storage.exists(md) else url)
    elif kind in (EVIDENTLY, DRIFT_PLOT):
        out.setdefault(kind, url)
    elif not storage.exists(uri):
        return
    elif kind == DATA_DOCS and uri.endswith(".json"):
        docs = storage.read_json(uri).get("data_docs_uri") or _md(uri)
        out.setdefault(DATA_DOCS, files.href(settings, docs) or "")
    else:
        out.setdefault(kind, url)


def _partition_links(settings: Settings, partition_uri: str, out: dict[str, str]) -> dict[str, Any]:
    """Manifest and lineage links of a partition URI that is exactly a `locations.predictions`."""
    day = _day(posixpath.basename(partition_uri))
    if day is None or not files.same(partition_uri, locations.predictions(settings, day)):
        return {}
    manifest = locations.manifest(settings, day)
    out.setdefault(MANIFEST, files.href(settings, manifest) or "")
    out.setdefault(LINEAGE, urls.page("/", partition=day.isoformat()) + "#lineage")
    return storage.read_json_if_exists(manifest) or {}


def _training_set_report(settings: Settings, facts: dict[str, Any]) -> str | None:
    """The validation report of a training set (the value `build_training_set` returns)."""
    uri, start, end = facts.get("uri"), facts.get("start"), facts.get("end")
    if not (isinstance(start, str) and isinstance(end, str)
            and files.same(uri, locations.training_set(settings, start, end))):
        return None
    from pipelines.data.checks import TRAINING_SET  # its suite and report name

    # pipelines.data.checks.validate_training_set names the partition by the window
    return locations.validation_report(settings, TRAINING_SET, f"{start}_{end}")


def value_links(settings: Settings, value: Any, model_name: str) -> dict[str, str]:
    """Link name -> URL of what one return value names."""
    out: dict[str, str] = {}
    if isinstance(value, str):  # a task that returns one URI
        _report_links(settings, value, {}, model_name, out)
    if not isinstance(value, dict):
        return out
    facts = dict(value)
    if isinstance(facts.get("partition_uri"), str):
        manifest = _partition_links(settings, facts["partition_uri"], out)
        facts.setdefault("model_run_id", manifest.get("model_run_id"))
        facts.setdefault("model", manifest.get("model"))
    training_report = _training_set_report(settings, facts)
    for uri in [*(facts.get(k) for k in REPORT_KEYS), training_report]:
        if isinstance(uri, str):
            _report_links(settings, uri, facts, model_name, out)
    for key in DOCS_KEYS:
        uri = facts.get(key)
        if isinstance(uri, str) and files.href(settings, uri) and storage.exists(uri):
            out.setdefault(DATA_DOCS, files.href(settings, uri) or "")
    run_id = next((str(facts[k]) for k in ("run_id", "model_run_id")
                   if MLFLOW_RUN_ID.match(str(facts.get(k) or ""))), None)
    if run_id:
        out.setdefault(MLFLOW_RUN, urls.mlflow_run(run_id))
    version = next((facts[k] for k in VERSION_KEYS if facts.get(k) not in (None, "")), None)
    if version is not None and str(version).isdigit():
        model = str(facts.get("model") or model_name)
        out.setdefault(MLFLOW_VERSION, urls.mlflow_version(model, str(version)))
        _card_links(settings, model, str(version), out)
    return {k: v for k, v in out.items() if v}


def _card_links(settings: Settings, model: str, version: str, out: dict[str, str]) -> None:
    """The version's model card and its training set's datasheet, once written."""
    from pipelines.model.card import DATASHEET_MD

    card = locations.model_card(settings, model, version)
    sheet = storage.join(locations.card_folder(settings, model, version), DATASHEET_MD)
    for name, uri in ((MODEL_CARD, card), (DATASHEET, sheet)):
        if storage.exists(uri):
            out.setdefault(name, files.href(settings, uri) or "")


def links_for(settings: Settings, task: TaskOutput, model_name: str) -> dict[str, str]:
    """Link name -> URL for one task instance (only the links that apply)."""
    out = value_links(settings, task.value, model_name)
    for level in task.upstream:  # a task that only decides links to what it decided on
        if out:
            break
        for task_id in sorted(level):
            for name, url in value_links(settings, level[task_id], model_name).items():
                out.setdefault(name, url)
    if task.task_id.startswith(VALIDATE_VERB) and DATA_DOCS not in out:
        window = next((v for level in task.upstream for _, v in sorted(level.items())
                       if isinstance(v, dict) and v.get("start") and v.get("end")), None)
        if window is not None:
            out[DATA_DOCS] = urls.page("/validation", start=window["start"], end=window["end"])
        elif task.interval_day is not None:
            out[DATA_DOCS] = urls.page("/validation", day=task.interval_day.isoformat())
    if task.dag_id == ROLLOUT_DAG:
        out[LIVE_SERVING] = urls.page("/") + "#serving"
    if MLFLOW_VERSION in out or task.monitoring:
        out.setdefault(MODEL_PAGE, urls.page("/") + ("#trends" if task.monitoring else "#models"))
    return out


class MlopsLink(BaseOperatorLink):
    """One named link; the URL comes from `task_outputs.task_links` ("" when it does not apply)."""

    name = ""

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        try:
            from mlops_ui.task_outputs import task_links

            return task_links(operator, ti_key).get(self.name, "")
        except Exception:
            log.exception("mlops_ui: extra link %r of %s failed", self.name, ti_key)
            return ""


def global_links() -> list[BaseOperatorLink]:
    """One link object per name (Airflow keys global links by name)."""
    return [type(re.sub(r"\W", "", n.title()) + "Link", (MlopsLink,), {"name": n})() for n in NAMES]
