"""
### batch_scoring

Batch scoring of one data interval (a day here; params.yaml `orchestration.interval` and
`.timezone` set the grain and the schedule), backfillable (`catchup` on). A backfill over
a past month is `airflow backfill create --dag-id batch_scoring --from-date … --to-date …`
(add `--reprocess-behavior completed` to re-score days that already have a partition).

validate the interval's raw batches → write its Feast feature sources → **resolve_model**: pin
one model version for the whole run (`scoring.backfill_model`: the current `champion`, or the
champion at the end of the interval per the promotion history) → **plan_chunks**: stage the
interval's entity rows as chunks of `scoring.chunk_rows` → **score_chunk** (one mapped task per
chunk, run in parallel): Feast point-in-time features, missing-feature policy, onnxruntime in
batches of `scoring.batch_rows` (ONNX only, sha256 checked, MLflow pickle loading off) → one
content-addressed part file (with `scoring.explain_top_k` > 0, each row's top contributions in a
file beside it) → **validate_predictions**: the staged parts against the
`predictions` expectation suite (skipped with the score tasks when the interval is empty) →
**score**: check the whole output (row count = input − rejected, probabilities in [0, 1], no
nulls, unique row keys), write `predictions/date=YYYY-MM-DD/_manifest.json` (the interval's
partition; the commit point) and delete what it does not name. An interval without rows gets
an empty partition with its manifest.

Re-running an interval replaces its partition with byte-identical parts; a run killed anywhere
leaves the previous partition visible. To redo an interval, clear it from `resolve_model`
downstream.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipelines.core.contracts import PREDICTIONS_ASSET
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
    max_active_runs=4,
    default_args={**default_args(), "on_failure_callback": MonitoringNotifier("task_failure")},
    on_failure_callback=MonitoringNotifier("dag_failure"),
    tags=["mlops", "scoring"],
    doc_md=__doc__,
    params={
        "backfill_model": Param(None, type=["null", "string"],
                                enum=[None, "current", "champion_at_interval"],
                                description="Which model scores this interval: the current "
                                            "champion, or the champion at the end of the "
                                            "interval per the promotion history. Empty: "
                                            "params.yaml scoring.backfill_model."),
    },
)
def batch_scoring():
    @task
    def validate_batch(**context) -> dict:
        from pipelines.data.checks import validate_interval

        results = validate_interval(*stage(), run_interval(context))
        print(f"validate_batch: {[(r['table'], r['rows']) for r in results]} passed")
        return {"rows": sum(r["rows"] or 0 for r in results)}

    @task
    def build_features(validated: dict, **context) -> int:
        from pipelines.features.sources import build_sources_for_interval

        return len(build_sources_for_interval(*stage(), run_interval(context)))

    @task
    def resolve_model(**context) -> dict:
        from pipelines.scoring.run import resolve_model as resolve

        return resolve(*stage(), run_interval(context), context["params"].get("backfill_model"))

    @task
    def plan_chunks(model: dict, n_sources: int, **context) -> list[dict]:
        from pipelines.scoring.run import plan_interval

        return plan_interval(*stage(), run_interval(context))

    @task
    def score_chunk(chunk: dict, model: dict, **context) -> dict:
        from pipelines.scoring.run import score_chunk as score_one

        return score_one(*stage(), run_interval(context), chunk, model)

    @task
    def validate_predictions(parts: list, **context) -> dict:
        from pipelines.scoring.publish import validate_staged

        return validate_staged(*stage(), run_interval(context), list(parts))

    # Publishes the partition (the task id is the stage's name: its success is the asset event).
    # none_failed: an empty interval maps zero score_chunk tasks and still gets its partition.
    @task(outlets=[Asset(PREDICTIONS_ASSET)], trigger_rule="none_failed")
    def score(parts: list, chunks: list, model: dict, **context) -> dict:
        from pipelines.scoring.publish import publish

        day = run_interval(context)
        out = publish(*stage(), day, list(chunks), list(parts), model, context["run_id"])
        context["outlet_events"][Asset(PREDICTIONS_ASSET)].extra = {
            "date": day.isoformat(), "model_version": model["version"], "rows": out["rows"]}
        return out

    model = resolve_model()
    chunks = plan_chunks(model, build_features(validate_batch()))
    parts = score_chunk.partial(model=model).expand(chunk=chunks)
    validate_predictions(parts) >> score(parts, chunks, model)


batch_scoring()
