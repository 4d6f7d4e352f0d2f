"""
### promote

Manual approval: make a `challenger` (or a given version) the `champion`. The version's gate
verdict must be `pass`, unless `force` is set, in which case the move is recorded as a forced
promotion. Every move goes to the promotion history with who approved it and why.
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
        "version": Param("challenger", type="string", pattern=r"^(challenger|\d+)$",
                         description="The version to promote, or 'challenger' for the version "
                                     "holding that alias."),
        "reason": Param("approved", type="string", minLength=3, maxLength=500,
                        description="Who approved and why (recorded in the promotion history)."),
        "force": Param(False, type="boolean",
                       description="Promote even though its gates failed (recorded as forced)."),
    },
)
def promote():
    @task(pool=REGISTRY_POOL, outlets=[Asset(CHAMPION_ASSET)])
    def promote_version(**context) -> dict:
        from pipelines.model.promotion import promote_approved

        cfg, settings = stage()
        p = context["params"]
        event = promote_approved(settings, cfg.registry.model_name, str(p["version"]),
                                 context["run_id"], p["reason"], force=p["force"],
                                 user=triggering_user(context), cfg=cfg)
        context["outlet_events"][Asset(CHAMPION_ASSET)].extra = {"version": event["to_version"]}
        print(f"promote_version: champion {event.get('from_version')} -> {event['to_version']}")
        return event

    promote_version()


promote()
