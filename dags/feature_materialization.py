"""
### feature_materialization

Once per data interval (`orchestration.interval`): validate the interval's raw batches, write
its Feast feature sources, materialise the features
of the interval (plus a lateness window, so late rows are picked up) into the online store, and
check a sample of entities: online features must equal the offline (training) features as of
the same time, or the run fails with a report. Re-running an interval writes the same values.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipelines.core.orchestration import (
    default_args,
    interval_schedule,
    run_interval,
    schedule_span,
    stage,
)
from pipelines.monitoring.alerts import MonitoringNotifier

START, END = schedule_span()


@dag(
    schedule=CronDataIntervalTimetable(*interval_schedule()),
    start_date=START,
    end_date=END,
    catchup=True,
    max_active_runs=1,
    default_args={**default_args(), "on_failure_callback": MonitoringNotifier("task_failure")},
    on_failure_callback=MonitoringNotifier("dag_failure"),
    tags=["mlops", "features"],
    doc_md=__doc__,
)
def feature_materialization():
    @task
    def validate_batch(**context) -> dict:
        from pipelines.data.checks import validate_interval

        results = validate_interval(*stage(), run_interval(context))
        return {"rows": sum(r["rows"] or 0 for r in results)}

    @task
    def build_features(validated: dict, **context) -> int:
        from pipelines.features.sources import build_sources_for_interval

        return len(build_sources_for_interval(*stage(), run_interval(context)))

    @task
    def materialize(n_sources: int, **context) -> dict:
        from pipelines.features.online import materialize as run

        return run(*stage(), run_interval(context))

    @task
    def check_skew(materialized: dict) -> dict:
        from pipelines.features.online import check_skew as run

        return run(*stage(), materialized["as_of"])

    check_skew(materialize(build_features(validate_batch())))


feature_materialization()
