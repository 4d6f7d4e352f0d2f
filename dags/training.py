"""
### training

Trains a challenger and decides whether it becomes the champion.

validate the raw batches of the window (Great Expectations) → write the Feast feature sources →
build a point-in-time training set (`get_historical_features`) → train, export ONNX and check
parity, register in MLflow as `challenger` → evaluate the gates (floors, champion-vs-challenger
paired bootstrap, per-slice non-regression, budgets, behaviour) → promote to `champion`
(serialised through the `model_registry` pool). With `approval=manual` a passing model stays
`challenger` until the `promote` DAG is triggered for it; `force_promote` overrides a failed
gate and is recorded as a forced promotion.

Runs when triggered by hand (window in the form) and whenever `drift_monitor` requests a
retraining (asset `mlops://drift/retrain-request`); the drift evidence is recorded in the run.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task

from pipelines.core.orchestration import (
    CHAMPION_ASSET,
    REGISTRY_POOL,
    RETRAIN_ASSET,
    default_args,
    schedule_span,
)
from pipelines.monitoring.alerts import MonitoringNotifier


@dag(
    schedule=[Asset(RETRAIN_ASSET)],
    start_date=schedule_span()[0],
    catchup=False,
    max_active_runs=1,
    default_args={**default_args(), "on_failure_callback": MonitoringNotifier("task_failure")},
    on_failure_callback=MonitoringNotifier("dag_failure"),
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
        "approval": Param("auto", type="string", enum=["auto", "manual"],
                          description="auto: a model that passes the gates becomes champion. "
                                      "manual: it stays challenger until someone triggers the "
                                      "`promote` DAG for it."),
        "reason": Param("manual training", type="string",
                        description="Why this training runs (goes to the promotion history)."),
    },
)
def training():
    @task
    def resolve_window(**context) -> dict:
        from pipelines.model.windows import training_window

        cfg, _ = _stage()
        events = [{"uri": e.asset.uri, "extra": dict(e.extra or {})}
                  for evs in (context.get("triggering_asset_events") or {}).values() for e in evs]
        return training_window(cfg, context["params"], events)

    @task
    def validate_raw(window: dict) -> dict:
        from pipelines.model.windows import validate_window

        cfg, settings = _stage()
        return validate_window(cfg, settings, window)

    @task
    def build_features(window: dict, validated: dict) -> int:
        from pipelines.model.windows import build_window_features

        cfg, settings = _stage()
        return build_window_features(cfg, settings, window)

    @task
    def build_training_set(window: dict, n_sources: int, **context) -> dict:
        from pipelines.core import locations
        from pipelines.core.dates import to_date
        from pipelines.model.training_set import build_training_set as build

        cfg, settings = _stage()
        from pipelines.data.checks import validate_training_set

        out = locations.training_set(settings, window["start"], window["end"])
        ts = build(cfg, settings, to_date(window["start"]), to_date(window["end"]), out)
        checked = validate_training_set(cfg, settings, ts)  # raises before anything trains on it
        print(f"build_training_set: {ts['rows']} rows, positive rate {ts['positive_rate']:.3f}, "
              f"validated ({checked.get('data_docs_uri')})")
        return ts

    @task
    def train(training_set: dict, window: dict, **context) -> dict:
        from pipelines.model.training import train_and_register

        cfg, settings = _stage()
        ctx = {"run_id": context["run_id"], "trigger": window["trigger"],
               "evidence": window.get("evidence")}
        return train_and_register(cfg, settings, training_set, ctx)

    @task
    def evaluate_gates(trained: dict) -> dict:
        from pipelines.model.evaluation import evaluate_challenger

        cfg, settings = _stage()
        return evaluate_challenger(cfg, settings, trained["version"])

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def decide_promotion(report: dict, window: dict, **context) -> bool:
        from pipelines.model.promotion import (
            FORCED,
            PROMOTE,
            REJECT,
            decide,
            record_decision,
        )
        from pipelines.monitoring.alerts import notify_gate_failure

        cfg, settings = _stage()
        p = context["params"]
        decision = decide(report, p["force_promote"], p["approval"])
        record_decision(settings, cfg.registry.model_name, report, decision, context["run_id"],
                        p["reason"] if window["trigger"] == "manual" else window["trigger"])
        stays = f"v{report['champion_version']}" if report["champion_version"] else "none"
        print(f"decide_promotion: v{report['version']} gates "
              f"{'PASS' if report['passed'] else 'FAIL ' + str(report['failed'])} -> {decision}"
              + ("" if decision in (PROMOTE, FORCED) else f"; champion stays {stays}"))
        if decision == REJECT:
            notify_gate_failure(context, report)
        return decision in (PROMOTE, FORCED)

    @task(pool=REGISTRY_POOL, outlets=[Asset(CHAMPION_ASSET)])
    def promote(report: dict, window: dict, **context) -> dict:
        from pipelines.model.registry import promote as do_promote

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
    decide_promotion(report, window) >> promote(report, window)


def _stage():
    from pipelines.core.orchestration import stage

    return stage()


training()
