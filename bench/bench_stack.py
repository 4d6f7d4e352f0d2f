"""The scale path (`python -m stack`): one interval of 4,000,000 rows scored through Airflow on
Celery workers with 1 worker and with 2 (the speed-up), and the stack's per-task overhead (a
DAG of 100 empty mapped tasks).

The stack is the real one (Postgres, Redis, SeaweedFS, MLflow server, Airflow with the
CeleryExecutor), started in a temporary folder with one task slot per worker, so "2 workers"
means twice the slots. The scoring DAG (bench/dags/bench_stack.py) runs the project's scoring
stages over a features file in the object store: plan -> one mapped score task per chunk ->
publish, the output partition written to S3. Features are pre-joined (as in
bench_batch_scoring), so this measures how the scoring work spreads over workers, not Feast.
Both runs happen in this run, one after the other, on the same file; wall time is from the
trigger to the run's success, task span from the first task's start to the last one's end;
per run also the median task run (start to end, as Airflow records it), the median wait from
queued to started, and the median gap on a worker between one task's end and its next task's
start (time a free slot runs nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHUNK_ROWS = 500_000


def _stack(env: dict[str, str], *args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "stack", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"stack {args}: {out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def _timed_run(client, dag_id: str, conf: dict) -> dict:
    t0 = time.perf_counter()
    run_id = client.trigger(dag_id, conf=conf)
    state = client.wait(dag_id, run_id, timeout=1800)
    wall = time.perf_counter() - t0
    if state != "success":
        raise RuntimeError(f"{dag_id} {run_id} ended {state}")
    tis = client.task_instances(dag_id, run_id)
    from datetime import datetime
    from statistics import median

    def at(t: dict, key: str) -> datetime | None:
        return datetime.fromisoformat(t[key]) if t.get(key) else None

    starts = [at(t, "start_date") for t in tis if t["start_date"]]
    ends = [at(t, "end_date") for t in tis if t["end_date"]]
    # where a task's time goes: its run (start to end, as Airflow records it), the wait from
    # being queued to starting, and on each worker the gap between one task's end and the
    # next one's start (the hand-over: the slot is free, no task runs)
    waits = [(at(t, "start_date") - at(t, "queued_when")).total_seconds() for t in tis
             if t.get("queued_when") and t["start_date"]]
    gaps = []
    for host in {t["hostname"] for t in tis}:
        mine = sorted((at(t, "start_date"), at(t, "end_date")) for t in tis
                      if t["hostname"] == host and t["start_date"] and t["end_date"])
        gaps += [(b[0] - a[1]).total_seconds() for a, b in zip(mine, mine[1:])]
    return {"wall_s": round(wall, 1), "task_span_s": round((max(ends) - min(starts)).total_seconds(), 1),
            "tasks": len(tis), "workers_used": sorted({t["hostname"] for t in tis}),
            "task_run_median_s": round(median(t["duration"] for t in tis if t.get("duration")), 3),
            "queued_to_start_median_s": round(median(waits), 3) if waits else None,
            "worker_gap_median_s": round(median(gaps), 3) if gaps else None,
            "worker_gap_mean_s": round(sum(gaps) / len(gaps), 3) if gaps else None,
            "worker_gaps_over_1_s": sum(g > 1 for g in gaps),
            "worker_gap_largest_s": sorted(round(g, 1) for g in gaps)[-5:]}


def run(rows: int = 4_000_000) -> dict:
    from bench import bench_batch_scoring as b
    from pipelines.core import storage
    from pipelines.core.config import load_config
    from pipelines.model.onnx_model import export, sha256, to_native_frame
    from pipelines.model.training import make_pipeline
    from stack.airflow import secrets_env
    from stack.api import AirflowClient

    cfg = load_config(b.PARAMS)
    base, numeric = b._base()
    train = base.sample(50_000, random_state=0)
    pipe = make_pipeline(cfg, numeric, b.CATEGORICAL)
    pipe.fit(to_native_frame(train, numeric, b.CATEGORICAL), train["is_late"])
    onnx_bytes = export(pipe, numeric, b.CATEGORICAL)

    tmp = Path(tempfile.mkdtemp(prefix="mlops-bench-stack-"))
    tmp.chmod(0o755)  # Postgres runs as its own OS user and must reach its folder
    raw = yaml.safe_load(b.PARAMS.read_text())
    raw["scoring"]["chunk_rows"] = CHUNK_ROWS
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("MLOPS_", "FEAST_", "MLFLOW_", "AIRFLOW", "AWS_"))}
    env = {**base_env, "MLOPS_STACK_DIR": str(tmp / "stack"), "MLOPS_PARAMS": str(tmp / "params.yaml"),
           "MLOPS_STACK_EXTRA_DAGS": str(REPO / "bench" / "dags"),
           "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1"}
    saved_environ = dict(os.environ)
    try:
        _stack(env, "up", "--workers", "2")
        state = json.loads((tmp / "stack" / "stack.json").read_text())
        os.environ.update({k: v for k, v in state["env"].items() if k.startswith("AWS_")})
        features = tmp / "features.parquet"
        b._write_features(base, ["event_time", "event_timestamp", *numeric, *b.CATEGORICAL],
                          rows, str(features), CHUNK_ROWS)
        fs, _ = storage.resolve("s3://mlops/bench")
        fs.put_file(str(features), "mlops/bench/features.parquet")
        features.unlink()
        storage.write_bytes("s3://mlops/bench/model.onnx", onnx_bytes)
        model = {"model": "bench", "version": "1", "run_id": "bench",
                 "onnx_sha256": sha256(onnx_bytes), "numeric": numeric,
                 "categorical": b.CATEGORICAL, "feature_service": "bench"}

        client = AirflowClient(state["env"]["AIRFLOW__API__BASE_URL"], "admin",
                               secrets_env(tmp / "stack")["MLOPS_AIRFLOW_ADMIN_PASSWORD"])
        client.wait_for_dags(["bench_stack_scoring", "bench_stack_noop"])
        for dag_id in ("bench_stack_scoring", "bench_stack_noop"):
            client.unpause(dag_id)
        conf = {"features_uri": "s3://mlops/bench/features.parquet",
                "onnx_uri": "s3://mlops/bench/model.onnx", "model": model}

        from stack.services import Service

        worker2 = next(Service(**s) for s in state["services"] if s["name"] == "worker-2")
        worker2.stop()
        one = _timed_run(client, "bench_stack_scoring", {**conf, "out_uri": "s3://mlops/bench/out-1"})
        _stack(env, "restart", "worker-2")
        two = _timed_run(client, "bench_stack_scoring", {**conf, "out_uri": "s3://mlops/bench/out-2"})
        noop = _timed_run(client, "bench_stack_noop", {})
        published = [storage.read_json(f"s3://mlops/bench/out-{n}/predictions/date=2013-06-01/"
                                       "_manifest.json")["output_rows"] for n in (1, 2)]
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
        _stack(env, "down", "--timeout", "10")
        shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    for i in range(100):
        (lambda i: None)(i)
    in_process = time.perf_counter() - t0
    return {
        "rows": rows,
        "chunk_rows": CHUNK_ROWS,
        "slots_per_worker": 1,
        "scoring_1_worker": {**one, "rows_per_s": round(rows / one["wall_s"])},
        "scoring_2_workers": {**two, "rows_per_s": round(rows / two["wall_s"])},
        "speedup_2_over_1_workers": round(one["wall_s"] / two["wall_s"], 2),
        "published_rows": published,
        "noop_x100": {**noop, "per_task_s": round(noop["task_span_s"] / 100, 3),
                      "in_process_same_calls_s": round(in_process, 6)},
    }
