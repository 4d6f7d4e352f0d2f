"""Drive the lifecycle through a running Airflow (started by scripts/demo.sh) and summarise it.

Uses only what a person would: unpause and trigger DAGs, then let the scheduler do the rest
(catch-up runs of the daily DAGs, the asset-triggered retraining). Pauses, unpauses and polls
through the metadata DB in this process (what `airflow dags pause` does, without paying the
CLI's ~3 s start-up per call), triggers with the CLI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from datetime import date, timedelta
from typing import Any

DAILY = ["feature_materialization", "batch_scoring", "drift_monitor"]
TERMINAL = {"success", "failed"}
POLL_SECONDS = 3.0  # how often the metadata DB is read while runs are under way


def airflow(*args: str) -> str:
    out = subprocess.run(["airflow", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def runs(dag_id: str) -> list[dict[str, Any]]:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [{"run_id": r.run_id, "state": str(r.state), "run_type": str(r.run_type),
                 "logical_date": r.logical_date, "conf": r.conf}
                for r in session.query(DagRun).filter(DagRun.dag_id == dag_id)]


def retrain_queued() -> bool:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(AssetDagRunQueue).filter(
            AssetDagRunQueue.target_dag_id == "training").count() > 0


def wait_until(predicate, timeout: float, what: str, every: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def wait_for_airflow(timeout: float) -> None:
    import urllib.request

    def healthy() -> bool:
        try:
            with urllib.request.urlopen("http://localhost:8080/api/v2/monitor/health", timeout=5) as r:
                body = json.loads(r.read())
            return all(body[k]["status"] == "healthy" for k in ("scheduler", "dag_processor"))
        except Exception:  # noqa: BLE001 - not up yet
            return False

    wait_until(healthy, timeout, "the Airflow scheduler and API server", every=2)
    wait_until(lambda: all(_dag_known(d) for d in ["training", *DAILY]),
               timeout, "the DAGs to be parsed", every=2)


def set_paused(dag_ids: list[str], paused: bool) -> None:
    """`airflow dags pause|unpause` of each DAG, in one transaction."""
    from airflow.models import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        for dag_id in dag_ids:
            model = session.get(DagModel, dag_id)
            if model is None:
                raise RuntimeError(f"DAG {dag_id!r} is not in the metadata DB: was it parsed?")
            model.is_paused = paused


def _dag_known(dag_id: str) -> bool:
    from airflow.models import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.get(DagModel, dag_id) is not None


def drive(start: date, end: date, timeout: float, initial_training: bool) -> None:
    """Run the nights start..end (inclusive) through the scheduler, training first if asked."""
    t0 = time.monotonic()
    wait_for_airflow(300)
    if initial_training:
        print("demo: Airflow is up; triggering the initial training", flush=True)
        set_paused(["training"], False)
        airflow("dags", "trigger", "training", "--conf", json.dumps({"reason": "initial model"}))
        wait_until(lambda: any(r["state"] in TERMINAL for r in runs("training")), 1800,
                   "the initial training run", every=POLL_SECONDS)
        if runs("training")[0]["state"] != "success":
            raise RuntimeError("the initial training run failed: see the Airflow UI (make up)")
        print(f"demo: initial model trained ({time.monotonic() - t0:.0f}s)", flush=True)
        # The same data again: a challenger that cannot beat the champion (the same model) is
        # registered and gated like any other, and the gates keep it out. It runs beside the
        # first nights (training runs one at a time, so before any drift-triggered one).
        print("demo: triggering a training on the same window again (the gates must reject it)",
              flush=True)
        airflow("dags", "trigger", "training", "--conf",
                json.dumps({"reason": "the same window again"}))
    print(f"demo: unpausing the daily DAGs for the nights {start}..{end}", flush=True)
    set_paused(DAILY, False)
    nights = (end - start).days + 1

    shown = [""]

    def done() -> bool:
        by_dag = {d: runs(d) for d in [*DAILY, "training"]}
        line = progress(by_dag, start, nights)
        if line != shown[0]:  # a line when something moved, with the time since the start
            print(f"demo: [{time.monotonic() - t0:5.0f}s] {line}", flush=True)
            shown[0] = line
        daily_done = all(len(rs) >= nights and all(r["state"] in TERMINAL for r in rs)
                         for d, rs in by_dag.items() if d in DAILY)
        training_done = all(r["state"] in TERMINAL for r in by_dag["training"])
        return daily_done and training_done and not retrain_queued()

    wait_until(done, timeout, "the scheduled runs", every=POLL_SECONDS)
    set_paused(DAILY, True)
    print(f"demo: nights up to {end} done in {time.monotonic() - t0:.0f}s", flush=True)


def progress(by_dag: dict[str, list[dict[str, Any]]], start: date, nights: int) -> str:
    """One line: the night the slowest daily DAG is on, each DAG's finished nights, what runs
    now (DAG and night), and the drift-triggered retrainings."""
    finished = {d: sum(r["state"] in TERMINAL for r in by_dag[d]) for d in DAILY}
    night = min(min(finished.values()) + 1, nights)
    running = [f"{d} {r['logical_date'].date() if r['logical_date'] else r['run_type']}"
               for d, rs in by_dag.items() for r in rs if r["state"] not in TERMINAL]
    retrains = [r for r in by_dag["training"] if "asset" in r["run_type"].lower()]
    return (f"night {night} of {nights} (from {start}): "
            + ", ".join(f"{d} {n}/{nights}" for d, n in finished.items())
            + f"; running: {', '.join(running) or 'nothing'}"
            + (f"; drift-triggered retrainings: {len(retrains)}" if retrains else ""))


def _history_line(e: dict[str, Any]) -> str:
    moves = {"promote", "forced_promote", "rollback"}
    before = f"v{e['from_version']}" if e.get("from_version") else "none"
    what = (f"champion {before} -> v{e['to_version']}" if e["action"] in moves
            else f"v{e['to_version']}")
    failed = f" failed {e['failed_gates']}" if e.get("failed_gates") else ""
    return f"{e['at'][:19]} {e['action']}: {what} ({e.get('reason')}){failed}"


def summary(start: date, end: date) -> dict[str, Any]:
    from pipelines.core.orchestration import stage
    from pipelines.model.promotion import REJECTED
    from pipelines.model.registry import by_alias, client, history
    from pipelines.scoring.io import read_manifest

    cfg, s = stage()
    c = client(s)
    champion = by_alias(c, cfg.registry.model_name, "champion")
    manifests = [m for d in range((end - start).days + 1)
                 if (m := read_manifest(s, start + timedelta(days=d)))]
    retrains = [r for r in runs("training") if "asset" in r["run_type"].lower()]
    events = history(s)
    return {
        "runs": {d: dict(Counter(r["state"] for r in runs(d))) for d in ["training", *DAILY]},
        "drift_triggered_retrainings": len(retrains),
        "rejected_by_the_gates": [f"v{e['to_version']} ({e.get('reason')}): "
                                  f"{', '.join(e.get('failed_gates') or [])}"
                                  for e in events if e["action"] == REJECTED],
        "champion": {"model": cfg.registry.model_name,
                     "version": champion.version if champion else None},
        "promotion_history": [_history_line(e) for e in events],
        "predictions": {"partitions": len(manifests),
                        "rows": sum(m["output_rows"] for m in manifests),
                        "by_model_version": dict(Counter(m["model_version"] for m in manifests))},
        "where": {"predictions": s.predictions_uri, "reports": s.reports_uri,
                  "quarantine": s.quarantine_uri, "mlflow": s.mlflow_tracking_uri},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("action", choices=["drive", "summary"])
    p.add_argument("--start", required=True)
    p.add_argument("--end", required=True)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--initial-training", action="store_true")
    a = p.parse_args(argv)
    start, end = date.fromisoformat(a.start), date.fromisoformat(a.end)
    if a.action == "drive":
        drive(start, end, a.timeout, a.initial_training)
        return 0
    result = summary(start, end)
    print(json.dumps(result, indent=2, default=str))
    failed = {d: n for d, states in result["runs"].items() for st, n in states.items()
              if st != "success"}
    print("\nOpen the UIs on this state with `make up`: Airflow at http://localhost:8080 "
          "(user admin, password in .state/airflow/simple_auth_manager_passwords.json.generated),"
          " MLflow at http://localhost:5000.")
    if failed:
        print(f"demo: some runs did not succeed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
