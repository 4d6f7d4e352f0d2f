"""
### rollback

Blue-green's way back: first resets the live routing to the champion only (no canary, no
shadow; every server follows within `serving.poll_seconds`), then moves the `champion` alias
back to an earlier model version (or to `previous_champion`). Both are recorded in the
promotion history. Trigger it from the UI with the target version.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task

from pipelines.core.contracts import CHAMPION_ASSET, REGISTRY_POOL
from pipelines.core.orchestration import (
    default_args,
    schedule_span,
    stage,
    triggering_user,
)
from pipelines.monitoring.alerts import MonitoringNotifier


@dag(
    schedule=None,
    start_date=schedule_span()[0],
    catchup=False,
    default_args={**default_args(), "retries": 0,
                  "on_failure_callback": MonitoringNotifier("task_failure")},
    on_failure_callback=MonitoringNotifier("dag_failure"),
    tags=["mlops", "registry"],
    doc_md=__doc__,
    params={
        "target": Param("previous", type="string", pattern=r"^(previous|\d+)$",
                        description="Model version to make champion, or 'previous' for the "
                                    "version that held champion before the current one."),
        "reason": Param("manual rollback", type="string", minLength=3, maxLength=500,
                        description="Why (recorded in the promotion history)."),
    },
)
def rollback():
    @task(pool=REGISTRY_POOL, outlets=[Asset(CHAMPION_ASSET)])
    def move_champion(**context) -> dict:
        from pipelines.model.registry import rollback as run

        cfg, settings = stage()
        p = context["params"]
        event = run(settings, cfg.registry.model_name, str(p["target"]), context["run_id"],
                    p["reason"], user=triggering_user(context))
        print(f"rollback: champion {event['from_version']} -> {event['to_version']}")
        return event

    @task
    def reset_routing(**context) -> dict:
        from pipelines.model.routing import roll_back_routing

        cfg, settings = stage()
        state = roll_back_routing(settings, cfg, context["run_id"], context["params"]["reason"],
                                  user=triggering_user(context))
        print(f"rollback: routing reset to {state['candidates']}")
        return dict(state)

    reset_routing() >> move_champion()


rollback()
