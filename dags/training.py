"""
### training

Trains a challenger and decides whether it becomes the champion.

validate the raw batches of the window (Great Expectations) → write the Feast feature sources →
build a point-in-time training set → train, export ONNX and check parity, register in MLflow as
`challenger` → evaluate the gates (floors, champion-vs-challenger paired bootstrap, per-slice
non-regression, budgets, behaviour) → decide → (with `approval=manual`: **approve**, a
human-in-the-loop task under the UI's *Required actions*; whoever answers is recorded) →
promote to `champion` (serialised through the `model_registry` pool). `force_promote` overrides
a failed gate and is recorded as a forced promotion. The `promote` DAG promotes any version by
hand.

Runs when triggered by hand (window in the form) and whenever `drift_monitor` requests a
retraining (asset `mlops://drift/retrain-request`); the drift evidence is recorded in the run.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Asset, Param, dag, task

from pipelines.core.contracts import CHAMPION_ASSET, REGISTRY_POOL, RETRAIN_ASSET
from pipelines.core.orchestration import (
    default_args,
    schedule_span,
    stage,
    triggering_user,
)
from pipelines.model.promotion import APPROVE_OPTION, REJECT_OPTION
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
        "approval": Param(None, type=["null", "string"], enum=[None, "auto", "manual"],
                          description="auto: a model that passes the gates becomes champion. "
                                      "manual: a person approves or rejects it first (the "
                                      "`approve` task under Required actions). Empty: "
                                      "params.yaml registry.approval."),
        "reason": Param("manual training", type="string", minLength=3, maxLength=500,
                        description="Why this training runs (goes to the promotion history)."),
    },
)
def training():
    @task
    def resolve_window(**context) -> dict:
        from pipelines.model.windows import training_window

        cfg, _ = stage()
        events = [{"uri": e.asset.uri, "extra": dict(e.extra or {})}
                  for evs in (context.get("triggering_asset_events") or {}).values() for e in evs]
        return training_window(cfg, context["params"], events)

    @task
    def validate_raw(window: dict) -> dict:
        from pipelines.model.windows import validate_window

        return validate_window(*stage(), window)

    @task
    def build_features(window: dict, validated: dict) -> int:
        from pipelines.model.windows import build_window_features

        return build_window_features(*stage(), window)

    @task
    def build_training_set(window: dict, n_sources: int) -> dict:
        from pipelines.model.training_set import build_validated_training_set

        return build_validated_training_set(*stage(), window)

    @task
    def train(training_set: dict, window: dict, **context) -> dict:
        from pipelines.model.training import train_and_register

        ctx = {"run_id": context["run_id"], "trigger": window["trigger"],
               "evidence": window.get("evidence")}
        return train_and_register(*stage(), training_set, ctx)

    @task
    def evaluate_gates(trained: dict) -> dict:
        from pipelines.model.evaluation import evaluate_challenger

        return evaluate_challenger(*stage(), trained["version"])

    @task.branch
    def decide_promotion(report: dict, window: dict, **context) -> list[str]:
        from pipelines.model.promotion import REJECT, conclude, summary
        from pipelines.monitoring.alerts import notify_gate_failure

        p = context["params"]
        decided = conclude(*stage(), report, window, force=p["force_promote"],
                           approval=p["approval"], reason=p["reason"], actor=context["run_id"],
                           user=triggering_user(context))
        print(f"decide_promotion: {summary(decided, report['failed'])}")
        context["ti"].xcom_push(key="decision", value=decided)
        if decided["decision"] == REJECT:
            notify_gate_failure(context, report)
            return []
        return ["approve"] if decided["needs_approval"] else ["promote"]

    approve = HITLOperator(
        task_id="approve",
        subject="Promote {{ dag_run.dag_id }} model v{{ ti.xcom_pull('evaluate_gates')['version'] }}"
                " to champion?",
        body="Gates: **{{ 'PASS' if ti.xcom_pull('evaluate_gates')['passed'] else 'FAIL (forced)' }}**"
             " {{ ti.xcom_pull('evaluate_gates')['failed'] }}; champion now: "
             "v{{ ti.xcom_pull('evaluate_gates')['champion_version'] }}.\n\n"
             "Gate report: `{{ ti.xcom_pull('evaluate_gates')['report_uri'] }}`",
        options=[APPROVE_OPTION, REJECT_OPTION],
        response_timeout=timedelta(days=7),
    )

    @task(pool=REGISTRY_POOL, outlets=[Asset(CHAMPION_ASSET)],
          trigger_rule="none_failed_min_one_success")
    def promote(**context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.model.promotion import promote_decided

        ti = context["ti"]
        decided = ti.xcom_pull(task_ids="decide_promotion", key="decision")
        answer = ti.xcom_pull(task_ids="approve") if decided["needs_approval"] else None
        event = promote_decided(*stage(), decided, actor=context["run_id"],
                                user=triggering_user(context), approval=answer)
        print(f"promote: {event['action']} v{event['to_version']} (by {event.get('user')})")
        if event["action"] == "approval_rejected":
            raise AirflowSkipException(f"approval rejected by {event.get('user')}")
        context["outlet_events"][Asset(CHAMPION_ASSET)].extra = {
            "version": event["to_version"], "forced": event["action"] == "forced_promote"}
        return event

    window = resolve_window()
    validated = validate_raw(window)
    n_sources = build_features(window, validated)
    ts = build_training_set(window, n_sources)
    trained = train(ts, window)
    report = evaluate_gates(trained)
    decided = decide_promotion(report, window)
    promoted = promote()
    decided >> approve >> promoted
    decided >> promoted


training()
