"""
### rollout

Progressive delivery of the `challenger` against the `champion` on live traffic, with an
automatic, gated outcome. Trigger it from the UI with the version (or `challenger`), the mode
and, for a canary, its steps and the hold time per step:

- **shadow**: the challenger scores every request after the response (never served); judged
  once, never promoted.
- **canary**: through `steps` (e.g. shadow, 5, 25, 50, 100 percent served); each step is held,
  then judged against `rollout.slo` (error rate, p99 latency, shadow failures and
  disagreement, live quality) from the prediction log and the server's `/metrics`. A breach
  resets routing to the champion at once (rolled back); after the last step the version is
  promoted through the registry.
- **ab**: a fixed split (`rollout.ab.weight`) looked at once per hold, up to
  `rollout.ab.max_looks` times, each look at alpha / max_looks; promoted when the challenger is
  significantly better, rolled back when worse, inconclusive when the budget runs out.

Each step, its evidence, a roll-back and the promotion are in the promotion history.
The outcome at a glance: promoted, the run succeeds (and emits the champion asset); **rolled
back, `finish_rollout` fails** with the step and the breach (the run is red and the failure
alert fires: the roll-back worked, but the challenger failed on live traffic); shadow mode or
an inconclusive A/B, `finish_rollout` is skipped with the reason. The servers follow the
challenger by default (`serving.aliases: [champion, challenger]`; the challenger is optional,
loaded once the registry holds it), so no configuration changes before a rollout.
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
    tags=["mlops", "registry", "serving"],
    doc_md=__doc__,
    params={
        "version": Param("challenger", type="string", pattern=r"^(challenger|\d+)$",
                         description="The version to roll out (it must hold the challenger "
                                     "alias), or 'challenger'."),
        "mode": Param("canary", type="string", enum=["shadow", "canary", "ab"],
                      description="shadow: observe only; canary: the steps below; ab: a fixed "
                                  "split until significant or the budget runs out."),
        "steps": Param(["shadow", "5", "25", "50", "100"], type="array",
                       items={"type": "string", "pattern": r"^(shadow|\d+(\.\d+)?)$"},
                       description="Canary steps: 'shadow' or the challenger's served percent; "
                                   "the last must be 100."),
        "hold_seconds": Param(600, type="number", minimum=1, maximum=86400,
                              description="How long each step runs before it is judged."),
    },
)
def rollout():
    @task
    def plan_rollout(**context) -> dict:
        from pipelines.model import registry
        from pipelines.model.rollout_run import plan

        cfg, settings = stage()
        p = context["params"]
        version = str(p["version"])
        if version == "challenger":
            held = registry.by_alias(registry.client(settings), cfg.registry.model_name,
                                     registry.CHALLENGER)
            if held is None:
                raise ValueError(f"{cfg.registry.model_name} has no challenger to roll out")
            version = str(held.version)
        steps = [s if s == "shadow" else float(s) for s in p["steps"]]
        return {"version": version, "mode": p["mode"], "hold_seconds": float(p["hold_seconds"]),
                "steps": plan(cfg, p["mode"], steps)}

    @task
    def run_steps(planned: dict, **context) -> dict:
        from pipelines.model.rollout_run import run_steps as run
        from pipelines.model.rollout_run import scraper, server_url

        cfg, settings = stage()
        outcome = run(settings, cfg, planned["version"], planned["mode"], planned["steps"],
                      planned["hold_seconds"], scraper(server_url(settings),
                                                       settings.token_path),
                      context["run_id"], user=triggering_user(context))
        print(f"run_steps: v{outcome['version']} {outcome['outcome']}: {outcome['reason']}")
        return dict(outcome)

    @task(pool=REGISTRY_POOL, outlets=[Asset(CHAMPION_ASSET)])
    def finish_rollout(outcome: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines.model.rollout_run import RolledBack, finish

        cfg, settings = stage()
        try:
            event = finish(settings, cfg, outcome, context["run_id"],
                           user=triggering_user(context))
        except RolledBack as exc:  # failed, not retried: the run is red and alerts
            raise AirflowFailException(str(exc)) from exc
        if event is None:
            raise AirflowSkipException(f"nothing to promote: {outcome['outcome']}")
        context["outlet_events"][Asset(CHAMPION_ASSET)].extra = {"version": event["to_version"]}
        return event

    finish_rollout(run_steps(plan_rollout()))


rollout()
