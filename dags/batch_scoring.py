"""
### batch_scoring

Nightly batch scoring of one data interval (one day), backfillable (`catchup` on). A backfill over
a past month is `airflow backfill create --dag-id batch_scoring --from-date … --to-date …`
(add `--reprocess-behavior completed` to re-score days that already have a partition).

validate the day's raw batches → write the day's Feast feature sources → **resolve_model**: pin
one model version for the whole run (`scoring.backfill_model`: the current `champion`, or the
champion at the end of the interval per the promotion history) → **plan_chunks**: stage the
interval's entity rows as chunks of `scoring.chunk_rows` → **score_chunk** (one mapped task per
chunk, run in parallel): Feast point-in-time features, missing-feature policy, onnxruntime in
batches of `scoring.batch_rows` (ONNX only, sha256 checked, MLflow pickle loading off) → one
content-addressed part file → **validate_predictions**: the staged parts against the
`predictions` expectation suite (skipped with the score tasks when the interval is empty) →
**score**: check the whole output (row count = input − rejected, probabilities in [0, 1], no
nulls, unique row keys), write `predictions/date=YYYY-MM-DD/_manifest.json` (the commit point)
and delete what it does not name.

Re-running a day replaces its partition with byte-identical parts; a run killed anywhere leaves
the previous partition visible. To redo a day, clear it from `resolve_model` downstream.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipelines.core.orchestration import PREDICTIONS_ASSET, default_args, schedule_span

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
        from pipelines.core.orchestration import interval_day
        from pipelines.data.checks import validate_interval

        cfg, settings = _stage()
        results = validate_interval(cfg, settings, interval_day(context))
        print(f"validate_batch: {[(r['table'], r['rows']) for r in results]} passed")
        return {"rows": sum(r["rows"] for r in results)}

    @task
    def build_features(validated: dict, **context) -> int:
        from pipelines.core.orchestration import interval_day
        from pipelines.features.sources import build_sources_for_interval

        cfg, settings = _stage()
        return len(build_sources_for_interval(cfg, settings, interval_day(context)))

    @task
    def resolve_model(**context) -> dict:
        from pipelines.core.orchestration import interval_day
        from pipelines.scoring.run import resolve_model as resolve

        cfg, settings = _stage()
        if policy := context["params"].get("backfill_model"):
            cfg = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(
                update={"backfill_model": policy})})
        model = resolve(cfg, settings, interval_day(context))
        print(f"resolve_model: {model['model']} v{model['version']} sha256 "
              f"{model['onnx_sha256'][:12]} ({model['policy']}: {model['choice']})")
        return model

    @task
    def plan_chunks(model: dict, n_sources: int, **context) -> list[dict]:
        from pipelines.core.orchestration import interval_day
        from pipelines.scoring.run import plan_interval

        cfg, settings = _stage()
        chunks = plan_interval(cfg, settings, interval_day(context))
        print(f"plan_chunks: {sum(c['rows'] for c in chunks)} rows in {len(chunks)} chunks")
        return chunks

    @task
    def score_chunk(chunk: dict, model: dict, **context) -> dict:
        from pipelines.core.orchestration import interval_day
        from pipelines.scoring.run import score_chunk as score_one

        cfg, settings = _stage()
        part = score_one(cfg, settings, interval_day(context), chunk, model)
        print(f"score_chunk: chunk {part['chunk']}: {part['rows']} rows -> {part['file']}")
        return part

    @task
    def validate_predictions(parts: list, **context) -> dict:
        from pipelines.core.orchestration import interval_day
        from pipelines.data.checks import validate_predictions as validate
        from pipelines.scoring.publish import part_uris

        cfg, settings = _stage()
        day = interval_day(context)
        report = validate(cfg, settings, day, part_uris(settings, day, list(parts)))
        print(f"validate_predictions: staged parts of {day} passed the predictions suite")
        return {k: v for k, v in report.items() if isinstance(v, (str, int, float, bool))}

    # Publishes the partition (the task id is the stage's name: its success is the asset event).
    # none_failed: an empty interval maps zero score_chunk tasks and still gets its partition.
    @task(outlets=[Asset(PREDICTIONS_ASSET)], trigger_rule="none_failed")
    def score(parts: list, chunks: list, model: dict, **context) -> dict:
        from pipelines.core.orchestration import interval_day
        from pipelines.scoring.publish import publish

        cfg, settings = _stage()
        day = interval_day(context)
        out = publish(cfg, settings, day, list(chunks), list(parts), model, context["run_id"])
        context["outlet_events"][Asset(PREDICTIONS_ASSET)].extra = {
            "date": day.isoformat(), "model_version": model["version"], "rows": out["rows"]}
        print(f"score: {out['rows']} rows published to {out['partition_uri']}")
        return out

    model = resolve_model()
    chunks = plan_chunks(model, build_features(validate_batch()))
    parts = score_chunk.partial(model=model).expand(chunk=chunks)
    validate_predictions(parts) >> score(parts, chunks, model)


def _stage():
    from pipelines.core.orchestration import stage

    return stage()


batch_scoring()
