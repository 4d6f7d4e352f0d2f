"""Every DAG file parses fast, without heavy imports, with owner, tags, retries and docs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))
HEAVY = ["pandas", "numpy", "sklearn", "mlflow", "feast", "great_expectations", "evidently",
         "onnxruntime", "onnx", "skl2onnx", "dvc", "pyarrow", "duckdb", "scipy"]
PARSE_BUDGET_S = 1.0

_PROBE = """
import json, sys, time, runpy
import airflow.sdk  # the framework itself is loaded once per parser process: the baseline
before = set(sys.modules)
t = time.perf_counter()
runpy.run_path(sys.argv[1])
elapsed = time.perf_counter() - t
new = sorted({m.split('.')[0] for m in set(sys.modules) - before})
print(json.dumps({"seconds": elapsed, "new_modules": new}))
"""


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_fast_without_heavy_imports(path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True,
                         text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [m for m in probe["new_modules"] if m in HEAVY]
    assert heavy == [], f"{path.name} imports heavy libraries at parse time: {heavy}"
    assert probe["seconds"] < PARSE_BUDGET_S, f"{path.name} took {probe['seconds']:.2f}s to parse"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"training", "batch_scoring", "feature_materialization",
                                   "drift_monitor", "rollback", "promote", "rollout"}


def test_dag_ids_match_file_names_and_are_documented(dagbag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id
        assert dag.doc_md and dag_id in dag.doc_md
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            assert task.owner == "mlops", f"{dag_id}.{task.task_id} owner {task.owner}"
            # alias moves a person triggers are not retried blindly: they fail loudly instead
            assert task.retries >= (0 if dag_id in ("rollback", "promote", "rollout") else 1), f"{dag_id}.{task.task_id}"


def test_assets_link_the_dags(dagbag) -> None:
    """drift_monitor emits the retraining request; training is scheduled on it."""
    from pipelines.core.contracts import PREDICTIONS_ASSET, RETRAIN_ASSET

    emit = dagbag.dags["drift_monitor"].get_task("request_retraining")
    assert [a.uri for a in emit.outlets] == [RETRAIN_ASSET]
    training = dagbag.dags["training"]
    assert [a.uri for a in training.timetable.asset_condition.objects] == [RETRAIN_ASSET]
    score = dagbag.dags["batch_scoring"].get_task("score")
    assert [a.uri for a in score.outlets] == [PREDICTIONS_ASSET]


def test_daily_dags_catch_up_over_the_configured_span(dagbag) -> None:
    from pipelines.core.orchestration import schedule_span

    start, end = schedule_span()
    for dag_id in ["batch_scoring", "feature_materialization", "drift_monitor"]:
        dag = dagbag.dags[dag_id]
        assert dag.catchup is True
        assert dag.start_date == start and dag.end_date == end


_NO_LOOKUPS = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"dags": sorted(bag.dag_ids), "errors": {k: str(v)[-400:] for k, v in bag.import_errors.items()}}))
"""


def _parse_without_lookups(folder: Path, tmp_path: Path) -> dict:
    """Parse `folder` in a process whose only secrets backend refuses every lookup and whose
    metadata database does not exist."""
    import os

    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                          os.environ.get("PYTHONPATH", "")]),
           "AIRFLOW__SECRETS__BACKEND": "forbidden_lookups.ForbiddenLookups",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/missing/none.db",
           "LOOKUP_LOG": str(tmp_path / "lookups.log")}
    out = subprocess.run([sys.executable, "-c", _NO_LOOKUPS, str(folder)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    log = tmp_path / "lookups.log"
    parsed["lookups"] = log.read_text().splitlines() if log.exists() else []
    return parsed


def test_parsing_the_dags_makes_no_variable_or_connection_lookups(tmp_path) -> None:
    parsed = _parse_without_lookups(DAGS, tmp_path)
    assert parsed["errors"] == {} and parsed["lookups"] == []
    assert set(parsed["dags"]) == {"training", "batch_scoring", "feature_materialization",
                                   "drift_monitor", "rollback", "promote", "rollout"}


def test_the_lookup_check_catches_a_variable_read_at_parse_time(tmp_path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "reads_a_variable.py").write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import Variable, dag\n"
        "THRESHOLD = Variable.get('threshold', default=None)\n"
        "@dag(schedule=None, start_date=datetime(2024, 1, 1))\n"
        "def reads_a_variable():\n    pass\n"
        "reads_a_variable()\n")
    parsed = _parse_without_lookups(folder, tmp_path)
    assert parsed["lookups"] == ["variable threshold"]


def test_every_task_and_run_failure_alerts(dagbag) -> None:
    """The README's promise: alerts for every failed task and run, in every DAG."""
    from pipelines.monitoring.alerts import MonitoringNotifier

    for dag_id, dag in dagbag.dags.items():
        callbacks = dag.on_failure_callback if isinstance(dag.on_failure_callback, list) else [
            dag.on_failure_callback]
        assert any(isinstance(c, MonitoringNotifier) for c in callbacks), f"{dag_id}: no run alert"
        for task in dag.tasks:
            task_callbacks = task.on_failure_callback or []
            task_callbacks = task_callbacks if isinstance(task_callbacks, list) else [task_callbacks]
            assert any(isinstance(c, MonitoringNotifier) for c in task_callbacks), \
                f"{dag_id}.{task.task_id}: no alert when it fails"
