"""
### drift_monitor

Daily, after `batch_scoring`: compare the interval's scored features and predictions with the
training reference of the model that scored them (Evidently report + PSI/KS per feature).
When drift holds for the configured number of intervals and the last retraining is outside the
cooldown, request a retraining by emitting the `mlops://drift/retrain-request` asset event with
the evidence; the `training` DAG is scheduled on it.
"""

from __future__ import annotations

import os

from airflow.sdk import Asset, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipelines.orchestration import RETRAIN_ASSET, default_args, schedule_span

START, END = schedule_span()
POKE_SECONDS = int(os.environ.get("MLOPS_SENSOR_POKE_SECONDS", "60"))


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=START,
    end_date=END,
    catchup=True,
    max_active_runs=1,
    default_args=default_args(),
    tags=["mlops", "monitoring"],
    doc_md=__doc__,
)
def drift_monitor():
    @task.sensor(poke_interval=POKE_SECONDS, timeout=6 * 3600, mode="reschedule")
    def wait_for_predictions(**context) -> bool:
        from pipelines.monitoring import window_ready
        from pipelines.orchestration import interval_day

        cfg, settings = _stage()
        return window_ready(cfg, settings, interval_day(context), START.date())

    @task
    def check_drift(**context) -> dict:
        from pipelines.monitoring import check_interval
        from pipelines.orchestration import interval_day

        cfg, settings = _stage()
        verdict = check_interval(cfg, settings, interval_day(context), START.date())
        print(f"check_drift: drift={verdict['drift']} share={verdict['drift_share']:.2f} "
              f"reason={verdict['reason']} report={verdict.get('report_uri')}")
        return {k: verdict[k] for k in ("date", "drift", "drift_share", "reason", "report_uri",
                                        "prediction_psi", "model_version")}

    @task.short_circuit
    def decide(verdict: dict, **context) -> bool:
        from pipelines.monitoring import decide as run

        cfg, settings = _stage()
        decision = run(cfg, settings, __import__("datetime").date.fromisoformat(verdict["date"]))
        print(f"decide: retrain={decision['retrain']} ({decision['reason']})")
        return decision["retrain"]

    @task(outlets=[Asset(RETRAIN_ASSET)])
    def request_retraining(verdict: dict, **context) -> dict:
        context["outlet_events"][Asset(RETRAIN_ASSET)].extra = verdict
        print(f"request_retraining: evidence {verdict}")
        return verdict

    verdict = check_drift()
    wait_for_predictions() >> verdict
    decide(verdict) >> request_retraining(verdict)


def _stage():
    from pipelines.orchestration import stage

    return stage()


drift_monitor()
