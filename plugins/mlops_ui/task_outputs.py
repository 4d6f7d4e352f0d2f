"""A task instance's outputs for its extra links, read in the API server.

Which upstream values a task's links may come from is read from its DAG as the API server holds
it (the serialized operator's `upstream_task_ids`, its DAG's tasks and tags), so a renamed or
rewired task needs no change here. Values come from the metadata DB's XCom table (plain JSON
only) and the answer is cached for a few seconds, since the UI asks once per link name.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from typing import TYPE_CHECKING, Any

from mlops_ui.links import MONITORING_TAG, TaskOutput, links_for
from pipelines.core.settings import get_settings

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

_CACHE: dict[tuple, tuple[float, dict[str, str]]] = {}
_LOCK = threading.Lock()
CACHE_SECONDS = 10.0


def upstream_levels(operator: Any) -> list[list[str]]:
    """The task ids upstream of `operator` in its DAG, by distance: direct upstream first.

    Each task appears once, at its nearest distance; without a DAG, only the direct upstream.
    """
    dag = getattr(operator, "dag", None)
    seen = {operator.task_id}
    level = sorted(set(operator.upstream_task_ids) - seen)
    out: list[list[str]] = []
    while level:
        out.append(level)
        seen.update(level)
        if dag is None:
            break
        level = sorted({u for t in level for u in dag.get_task(t).upstream_task_ids} - seen)
    return out


def is_monitoring(operator: Any) -> bool:
    """True if the operator's DAG is tagged as a monitoring DAG."""
    dag = getattr(operator, "dag", None)
    return MONITORING_TAG in set(getattr(dag, "tags", None) or ())


def _decode(value: Any) -> Any:
    if isinstance(value, (bytes, str)):
        try:
            return json.loads(value)  # plain JSON only: never instantiate classes named in XCom
        except ValueError:
            return value
    return value


def task_output(operator: Any, own: Any, values: dict[str, Any], interval_day: date | None) -> TaskOutput:
    """What `links_for` needs of a task: its value, and `values` (task id -> return value of
    the same run) arranged by the task's upstream levels in its DAG."""
    upstream = tuple({t: values[t] for t in level if t in values} for level in upstream_levels(operator))
    dag_id = getattr(getattr(operator, "dag", None), "dag_id", "")
    return TaskOutput(dag_id, operator.task_id, own, upstream, interval_day, is_monitoring(operator))


def read_task_output(operator: Any, ti_key: TaskInstanceKey) -> TaskOutput:
    """The return values of a task instance and of its upstream tasks in the same run."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    upstream_ids = [t for level in upstream_levels(operator) for t in level]
    with create_session() as session:
        rows = session.execute(XComModel.get_many(
            key="return_value", run_id=ti_key.run_id, dag_ids=ti_key.dag_id,
            task_ids=[ti_key.task_id, *upstream_ids],
        ).with_only_columns(XComModel.task_id, XComModel.map_index, XComModel.value)).all()
        start = session.scalar(select(DagRun.data_interval_start).where(
            DagRun.dag_id == ti_key.dag_id, DagRun.run_id == ti_key.run_id))
    own = next((_decode(r.value) for r in rows
                if r.task_id == ti_key.task_id and r.map_index == ti_key.map_index), None)
    values = {r.task_id: _decode(r.value) for r in rows   # a mapped upstream task has no one value
              if r.task_id != ti_key.task_id and r.map_index == -1}
    return task_output(operator, own, values, start.date() if start is not None else None)


def task_links(operator: Any, ti_key: TaskInstanceKey) -> dict[str, str]:
    """The extra links of one task instance (cached for CACHE_SECONDS)."""
    key = (ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index,
           getattr(ti_key, "try_number", None))
    now = time.monotonic()
    with _LOCK:
        hit = _CACHE.get(key)
        if hit and now - hit[0] < CACHE_SECONDS:
            return hit[1]
    from mlops_ui.data import config

    settings = get_settings()
    links = links_for(settings, read_task_output(operator, ti_key), config(settings).registry.model_name)
    with _LOCK:
        if len(_CACHE) > 512:
            _CACHE.clear()
        _CACHE[key] = (now, links)
    return links
