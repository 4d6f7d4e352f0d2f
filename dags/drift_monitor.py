"""
### drift_monitor

Once per data interval (daily by default: params.yaml `orchestration.interval`), after
`batch_scoring`: compare the interval's scored features and predictions (a trailing
window) with the training reference of the model that scored them (Evidently report + PSI/KS
per feature, thresholds and weights from `params.yaml`), and score the predictions of the day
whose outcomes have become known (ROC AUC, PR AUC, calibration). Both land in the metrics
history; a plot of the last days is written next to the Evidently report.
When drift or quality decay holds for the configured number of intervals, outside the cooldown
and once per episode, request a retraining by emitting the `mlops://drift/retrain-request`
asset event with the evidence; the `training` DAG is scheduled on it.
Alerts (channel from `params.yaml` `alerts`) on a drift or decay episode, a retraining request
and any failed task or run.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipelines.core.contracts import RETRAIN_ASSET
from pipelines.core.orchestration import (
    default_args,
    first_interval,
    interval_schedule,
    schedule_span,
    stage,
)
from pipelines.core.settings import get_settings
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
    tags=["mlops", "monitoring"],
    doc_md=__doc__,
    params={
        "day": Param(None, type=["null", "string"],
                     description="For a manual check: the interval to check, by a date in it "
                                 "or its key (its window, outcomes and decision are those of a "
                                 "scheduled run of it). Empty: the run's data interval."),
    },
)
def drift_monitor():
    @task.sensor(poke_interval=get_settings().sensor_poke_seconds, timeout=6 * 3600,
                 mode="reschedule")
    def wait_for_predictions(**context) -> bool:
        from pipelines.monitoring.checks import window_ready

        return window_ready(*stage(), _day(context), first_interval())

    @task
    def check_drift(**context) -> dict:
        from pipelines.core.contracts import DriftSummary, pick
        from pipelines.monitoring.checks import check_interval

        verdict = check_interval(*stage(), _day(context), first_interval(), context["run_id"])
        return pick(verdict, DriftSummary)

    @task
    def check_quality(**context) -> dict:
        from pipelines.core.contracts import QualitySummary, pick
        from pipelines.monitoring.checks import check_quality as run

        return pick(run(*stage(), _day(context), context["run_id"]), QualitySummary)

    @task
    def decide(verdict: dict, quality: dict, **context) -> dict:
        from pipelines.core.contracts import RetrainDecision, pick
        from pipelines.monitoring.alerts import notify_decision
        from pipelines.monitoring.decision import decide as run

        decision = run(*stage(), verdict["date"], context["run_id"])
        notify_decision(context, decision)
        return pick(decision, RetrainDecision)

    @task.short_circuit
    def retrain_requested(decision: dict) -> bool:
        return decision["retrain"]

    @task(outlets=[Asset(RETRAIN_ASSET)])
    def request_retraining(decision: dict, **context) -> dict:
        from pipelines.monitoring.decision import retrain_evidence

        evidence = retrain_evidence(stage()[1], decision["date"])
        context["outlet_events"][Asset(RETRAIN_ASSET)].extra = evidence
        return evidence

    @task
    def plot_history(decision: dict) -> str:
        from pipelines.monitoring.decision import plot

        return plot(*stage(), decision["date"])

    verdict, quality = check_drift(), check_quality()
    wait_for_predictions() >> [verdict, quality]
    decision = decide(verdict, quality)
    retrain_requested(decision) >> request_retraining(decision)
    plot_history(decision)


def _day(context):
    """The interval to check: the trigger form's `day`, else the run's data interval."""
    from pipelines.core.orchestration import run_interval

    return run_interval(context, context["params"].get("day"))


drift_monitor()
