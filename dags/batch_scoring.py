"""
### batch_scoring

Nightly batch scoring of one data interval (one day), backfillable (`catchup` on).

validate the day's raw batches → write the day's Feast feature sources → pin the `champion`
model version once for the run → score every event of the interval with onnxruntime (ONNX
only, sha256 checked against the registry) → publish `predictions/date=YYYY-MM-DD/` atomically
with a manifest. Re-running a day replaces its partition with identical rows.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipelines.orchestration import PREDICTIONS_ASSET, default_args, schedule_span

START, END = schedule_span()


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=START,
    end_date=END,
    catchup=True,
    max_active_runs=4,
    default_args=default_args(),
    tags=["mlops", "scoring"],
    doc_md=__doc__,
)
def batch_scoring():
    @task
    def validate_batch(**context) -> dict:
        from pipelines.orchestration import interval_day
        from pipelines.quality import validate_interval

        cfg, settings = _stage()
        results = validate_interval(cfg, settings, interval_day(context))
        print(f"validate_batch: {[(r['table'], r['rows']) for r in results]} passed")
        return {"rows": sum(r["rows"] for r in results)}

    @task
    def build_features(validated: dict, **context) -> int:
        from pipelines.features import build_sources_for_interval
        from pipelines.orchestration import interval_day

        cfg, settings = _stage()
        return len(build_sources_for_interval(cfg, settings, interval_day(context)))

    @task
    def resolve_model() -> dict:
        from pipelines.registry import resolve_champion

        cfg, settings = _stage()
        model = resolve_champion(settings, cfg.registry.model_name)
        print(f"resolve_model: {model['model']} v{model['version']} sha256 {model['onnx_sha256'][:12]}")
        return model

    @task(outlets=[Asset(PREDICTIONS_ASSET)])
    def score(model: dict, n_sources: int, **context) -> dict:
        from pipelines.orchestration import interval_day
        from pipelines.scoring import score_interval

        cfg, settings = _stage()
        day = interval_day(context)
        out = score_interval(cfg, settings, day, model, context["run_id"])
        context["outlet_events"][Asset(PREDICTIONS_ASSET)].extra = {
            "date": day.isoformat(), "model_version": model["version"], "rows": out["rows"]}
        print(f"score: {out['rows']} rows written to {out['partition_uri']}")
        return out

    n_sources = build_features(validate_batch())
    score(resolve_model(), n_sources)


def _stage():
    from pipelines.orchestration import stage

    return stage()


batch_scoring()
