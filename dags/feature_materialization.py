"""
### feature_materialization

Daily: validate the day's raw batches, write its Feast feature sources, materialise the features
of the interval (plus a lateness window, so late rows are picked up) into the online store, and
check a sample of entities: online features must equal the offline (training) features as of
the same time, or the run fails with a report. Re-running an interval writes the same values.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipelines.core.orchestration import default_args, schedule_span

START, END = schedule_span()


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=START,
    end_date=END,
    catchup=True,
    max_active_runs=1,
    default_args=default_args(),
    tags=["mlops", "features"],
    doc_md=__doc__,
)
def feature_materialization():
    @task
    def validate_batch(**context) -> dict:
        from pipelines.core.orchestration import interval_day
        from pipelines.data.checks import validate_interval

        cfg, settings = _stage()
        results = validate_interval(cfg, settings, interval_day(context))
        return {"rows": sum(r["rows"] for r in results)}

    @task
    def build_features(validated: dict, **context) -> int:
        from pipelines.core.orchestration import interval_day
        from pipelines.features.sources import build_sources_for_interval

        cfg, settings = _stage()
        return len(build_sources_for_interval(cfg, settings, interval_day(context)))

    @task
    def materialize(n_sources: int, **context) -> dict:
        from pipelines.core.orchestration import interval_day
        from pipelines.features.online import materialize as run

        cfg, settings = _stage()
        return run(cfg, settings, interval_day(context))

    @task
    def check_skew(materialized: dict) -> dict:
        from pipelines.features.online import check_skew as run

        cfg, settings = _stage()
        return run(cfg, settings, materialized["as_of"])

    check_skew(materialize(build_features(validate_batch())))


def _stage():
    from pipelines.core.orchestration import stage

    return stage()


feature_materialization()
