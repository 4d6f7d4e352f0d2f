"""
### drift_monitor

Daily, after `batch_scoring`: compare the interval's scored features and predictions (a trailing
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

import os

from airflow.sdk import Asset, Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipelines.core.orchestration import RETRAIN_ASSET, default_args, schedule_span
from pipelines.monitoring.alerts import MonitoringNotifier

START, END = schedule_span()
POKE_SECONDS = int(os.environ.get("MLOPS_SENSOR_POKE_SECONDS", "60"))


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=START,
    end_date=END,
    catchup=True,
    max_active_runs=1,
    default_args={**default_args(), "on_failure_callback": MonitoringNotifier("task_failure")},
    on_failure_callback=MonitoringNotifier("dag_failure"),
    tags=["mlops", "monitoring"],
    doc_md=__doc__,
    params={
        "day": Param(None, type=["null", "string"], format="date",
                     description="For a manual check: the day to check (its window, outcomes "
                                 "and decision are those of a scheduled run of that day). "
                                 "Empty: the run's data interval."),
    },
)
def drift_monitor():
    @task.sensor(poke_interval=POKE_SECONDS, timeout=6 * 3600, mode="reschedule")
    def wait_for_predictions(**context) -> bool:
        from pipelines.monitoring.checks import window_ready

        cfg, settings = _stage()
        return window_ready(cfg, settings, _day(context), START.date())

    @task
    def check_drift(**context) -> dict:
        from pipelines.monitoring.checks import check_interval

        cfg, settings = _stage()
        verdict = check_interval(cfg, settings, _day(context), START.date(), context["run_id"])
        print(f"check_drift: drift={verdict['drift']} share={verdict['drift_share']:.3f} "
              f"reason={verdict['reason']} report={verdict.get('report_uri')}")
        return {k: verdict[k] for k in ("date", "drift", "drift_share", "reason", "report_uri",
                                        "prediction_psi", "model_version")}

    @task
    def check_quality(**context) -> dict:
        from pipelines.monitoring.checks import check_quality as run

        cfg, settings = _stage()
        quality = run(cfg, settings, _day(context), context["run_id"])
        print(f"check_quality: outcomes of {quality['labelled_day']}: decay={quality['decay']} "
              f"({quality['status']}: {quality['reason']}) window={quality['window']}")
        return {k: quality[k] for k in ("date", "labelled_day", "decay", "status", "reason")}

    @task
    def decide(verdict: dict, quality: dict, **context) -> dict:
        from pipelines.core.dates import to_date
        from pipelines.monitoring.alerts import notify_decision
        from pipelines.monitoring.decision import decide as run

        cfg, settings = _stage()
        decision = run(cfg, settings, to_date(verdict["date"]), context["run_id"])
        print(f"decide: retrain={decision['retrain']} ({decision['reason']})")
        notify_decision(context, decision)
        return {k: decision[k] for k in ("date", "retrain", "signal", "streak", "reason")}

    @task.short_circuit
    def retrain_requested(decision: dict) -> bool:
        return decision["retrain"]

    @task(outlets=[Asset(RETRAIN_ASSET)])
    def request_retraining(decision: dict, **context) -> dict:
        from pipelines.core.dates import to_date
        from pipelines.monitoring.decision import retrain_evidence

        _, settings = _stage()
        evidence = retrain_evidence(settings, to_date(decision["date"]))
        context["outlet_events"][Asset(RETRAIN_ASSET)].extra = evidence
        print(f"request_retraining: evidence {evidence}")
        return evidence

    @task
    def plot_history(decision: dict) -> str:
        from pipelines.core.dates import to_date
        from pipelines.monitoring.decision import plot

        cfg, settings = _stage()
        uri = plot(cfg, settings, to_date(decision["date"]))
        print(f"plot_history: {uri}")
        return uri

    verdict, quality = check_drift(), check_quality()
    wait_for_predictions() >> [verdict, quality]
    decision = decide(verdict, quality)
    retrain_requested(decision) >> request_retraining(decision)
    plot_history(decision)


def _stage():
    from pipelines.core.orchestration import stage

    return stage()


def _day(context):
    """The day to check: the trigger form's `day`, else the run's data interval."""
    from pipelines.core.dates import to_date
    from pipelines.core.orchestration import interval_day

    return to_date(context["params"]["day"]) if context["params"].get("day") else interval_day(context)


drift_monitor()
