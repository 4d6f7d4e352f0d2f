"""The DAG files follow the selected configuration: with MLOPS_EXAMPLE=shelter the scheduled
DAGs run once per week of America/Chicago over the example's span, with no change in dags/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parents[2] / "dags"
_SCHEDULES = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: str(v)[-400:] for k, v in bag.import_errors.items()}}
for dag_id in ("batch_scoring", "feature_materialization", "drift_monitor"):
    dag = bag.dags[dag_id]
    out[dag_id] = [dag.timetable._expression, str(dag.timetable._timezone),
                   dag.start_date.isoformat(), dag.end_date.isoformat()]
print(json.dumps(out))
"""


def _schedules(**env: str) -> dict:
    run = subprocess.run([sys.executable, "-c", _SCHEDULES, str(DAGS)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_example_configuration_schedules_weekly_intervals_in_its_zone(tmp_path) -> None:
    env = {"MLOPS_EXAMPLE": "shelter", "MLOPS_PARAMS": "",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db"}
    got = _schedules(**env)
    assert got.pop("errors") == {}
    for dag_id, (cron, zone, start, end) in got.items():
        assert (cron, zone) == ("0 0 * * 1", "America/Chicago"), dag_id
        assert start.startswith("2024-08-05T05:00:00") and end.startswith("2024-12-30T06:00:00")
