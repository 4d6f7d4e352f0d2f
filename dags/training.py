"""
### training

Trains a challenger and decides whether it becomes the champion.

validate the raw batches of the window (Great Expectations) → write the Feast feature sources →
build a point-in-time training set (`get_historical_features`) → train, export ONNX and check
parity, register in MLflow as `challenger` → evaluate the gates (floors, champion-vs-challenger
paired bootstrap) → promote to `champion` (serialised through the `model_registry` pool).

Runs when triggered by hand (window in the form) and whenever `drift_monitor` requests a
retraining (asset `mlops://drift/retrain-request`); the drift evidence is recorded in the run.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task

from pipelines.orchestration import (
    CHAMPION_ASSET,
    REGISTRY_POOL,
    RETRAIN_ASSET,
    default_args,
    schedule_span,
)


@dag(
    schedule=[Asset(RETRAIN_ASSET)],
    start_date=schedule_span()[0],
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["mlops", "training"],
    doc_md=__doc__,
    params={
        "train_start": Param(None, type=["null", "string"], format="date",
                             description="First day of the training window (default: params.yaml "
                                         "initial window, or window_days before a drift trigger)."),
        "train_end": Param(None, type=["null", "string"], format="date",
                           description="Day after the last day of the window (exclusive)."),
        "force_promote": Param(False, type="boolean",
                               description="Promote even if a gate fails. Recorded as a forced "
                                           "promotion in the history."),
        "reason": Param("manual training", type="string",
                        description="Why this training runs (goes to the promotion history)."),
    },
)
def training():
    @task
    def resolve_window(**context) -> dict:
        from pipelines.windows import training_window

        cfg, _ = _stage()
        events = [{"uri": e.asset.uri, "extra": dict(e.extra or {})}
                  for evs in (context.get("triggering_asset_events") or {}).values() for e in evs]
        return training_window(cfg, context["params"], events)

    @task
    def validate_raw(window: dict) -> dict:
        from pipelines.windows import validate_window

        cfg, settings = _stage()
        return validate_window(cfg, settings, window)

    @task
    def build_features(window: dict, validated: dict) -> int:
        from pipelines.windows import build_window_features

        cfg, settings = _stage()
        return build_window_features(cfg, settings, window)

    @task
    def build_training_set(window: dict, n_sources: int, **context) -> dict:
        from pipelines import storage
        from pipelines.dates import to_date
        from pipelines.training import build_training_set as build

        cfg, settings = _stage()
        out = storage.join(settings.training_sets_uri, f"{window['start']}_{window['end']}.parquet")
        return build(cfg, settings, to_date(window["start"]), to_date(window["end"]), out)

    @task
    def train(training_set: dict, window: dict, **context) -> dict:
        from pipelines.tracking import train_and_register

        cfg, settings = _stage()
        ctx = {"run_id": context["run_id"], "trigger": window["trigger"],
               "evidence": window.get("evidence")}
        return train_and_register(cfg, settings, training_set, ctx)

    @task
    def evaluate_gates(trained: dict) -> dict:
        from pipelines.tracking import evaluate_challenger

        cfg, settings = _stage()
        return evaluate_challenger(cfg, settings, trained["version"])

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def gates_passed(report: dict, **context) -> bool:
        if report["passed"]:
            return True
        if context["params"]["force_promote"]:
            print(f"gates FAILED {report['failed']} but force_promote is set: promoting anyway")
            return True
        stays = f"v{report['champion_version']}" if report["champion_version"] else "none (no model)"
        print(f"gates FAILED {report['failed']}: champion stays {stays}")
        return False

    @task(pool=REGISTRY_POOL, outlets=[Asset(CHAMPION_ASSET)])
    def promote(report: dict, window: dict, **context) -> dict:
        from pipelines.registry import promote as do_promote

        cfg, settings = _stage()
        forced = not report["passed"]
        event = do_promote(settings, cfg.registry.model_name, report["version"],
                           actor=context["run_id"], reason=context["params"]["reason"]
                           if window["trigger"] == "manual" else f"retraining: {window['trigger']}",
                           gate_report_uri=report["report_uri"], forced=forced)
        context["outlet_events"][Asset(CHAMPION_ASSET)].extra = {
            "version": report["version"], "forced": forced}
        return event

    window = resolve_window()
    validated = validate_raw(window)
    n_sources = build_features(window, validated)
    ts = build_training_set(window, n_sources)
    trained = train(ts, window)
    report = evaluate_gates(trained)
    gates_passed(report) >> promote(report, window)


def _stage():
    from pipelines.orchestration import stage

    return stage()


training()
