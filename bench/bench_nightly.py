"""The nights of the lifecycle through a real scheduler: the project's three daily DAGs for N
nights against DAGs of the same shapes with empty task bodies, in the same run.

`python -m bench nightly [--rows N]` (here `--rows` is the number of nights, default 7). In a
temporary folder: the landing zone (May-June 2013 and the initial training window), `feast
apply`, the Airflow metadata DB and the `model_registry` pool, and a champion trained and
promoted by `python -m pipelines.cli train --promote` (set-up, timed apart). Then one `airflow
standalone` (SQLite, parallelism 2, sensor poke 15 s: what `make demo` runs, with its
executor, `pipelines.core.executor.PreloadingLocalExecutor`, whose workers import the heavy
libraries once at start: waited for and reported as set-up, not charged to either phase;
MLOPS_EXECUTOR_PRELOAD="" measures without it)
with a DAG folder holding the project's `feature_materialization`, `batch_scoring` and
`drift_monitor` and their floor (`bench/nightly_floor.py`: same timetable, span, catch-up, task
ids, kinds, dependencies, trigger rules, mapping and sensor, bodies empty). The floor DAGs are
unpaused first and run their N nights; then the project's. Each phase reports its wall time
(unpause to the last run's end) and its CPU seconds (every process of the Airflow session:
scheduler, DAG processor, API server, workers and the task processes they reaped), per night
the span from its first task's start to its last task's end, and per task the median run time.

Then every project task of the last night is replayed in a fresh process
(`bench/nightly_replay.py`) on the same state and inputs: the DAG parse, the body's imports,
its set-up (stage context, Feast store, MLflow client, GX context, DuckDB) and its work. A
fresh process has nothing preloaded: the replay shows what a task costs without the
executor's workers.

`MLOPS_BENCH_NIGHTLY_BASE=<dir>` keeps the prepared state (before any night) as a tarball in
<dir> and reuses it: the numbers are those of a fresh set-up, without paying for it again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

from bench import nightly_floor
from pipelines.core.embedded import embedded_env

REPO = Path(__file__).resolve().parents[1]
DAILY = ["feature_materialization", "batch_scoring", "drift_monitor"]
FIRST, LAST = date(2013, 6, 1), date(2013, 7, 1)  # the nights: FIRST..LAST at most
POKE_SECONDS = 15  # scripts/demo.sh
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(root: Path, port: int, nights: int) -> dict[str, str]:
    """The embedded default's settings, read from scripts/env.sh (what `make demo` runs), on
    the bench's state folder, ports, DAG folder, schedule and poke interval."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW__", "MLOPS_", "MLFLOW_", "FEAST_"))}
    if "MLOPS_EXECUTOR_PRELOAD" in os.environ:  # e.g. "" to measure without the preload
        base["MLOPS_EXECUTOR_PRELOAD"] = os.environ["MLOPS_EXECUTOR_PRELOAD"]
    return embedded_env(
        base,
        before={"MLOPS_STATE_URI": str(root / "state"), "AIRFLOW_HOME": str(root / "airflow"),
                "AIRFLOW__API__PORT": str(port)},
        after={"MLOPS_PARAMS": str(REPO / "params.yaml"),
               "MLOPS_SENSOR_POKE_SECONDS": str(POKE_SECONDS),
               "MLOPS_SCHEDULE_START": FIRST.isoformat(),
               "MLOPS_SCHEDULE_END": (FIRST + timedelta(days=nights - 1)).isoformat(),
               "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
               "AIRFLOW__CORE__UNIT_TEST_MODE": "False", "AIRFLOW__API__WORKERS": "1",
               "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
               "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
               "PATH": f"{BIN}:{os.environ.get('PATH', '')}"})


def _run(env: dict[str, str], *cmd: str) -> None:
    out = subprocess.run(list(cmd), env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def _prepare(env: dict[str, str]) -> dict[str, float]:
    """Landing zone, Feast registry, Airflow DB and pool, a promoted champion (timed apart)."""
    cli = [str(BIN / "python"), "-m", "pipelines.cli"]
    t0 = time.perf_counter()
    _run(env, *cli, "ingest", "--start", "2013-01-01", "--end", "2013-03-01")
    _run(env, *cli, "ingest", "--start", "2013-05-01", "--end", LAST.isoformat())
    _run(env, *cli, "apply")
    _run(env, str(BIN / "airflow"), "db", "migrate")
    _run(env, str(BIN / "airflow"), "pools", "set", "model_registry", "1", "alias moves")
    t1 = time.perf_counter()
    _run(env, *cli, "train", "--promote", "--reason", "bench nightly champion")
    return {"data_feast_airflow_s": round(t1 - t0, 1),
            "initial_training_cli_s": round(time.perf_counter() - t1, 1)}


def _state(root: Path, env: dict[str, str]) -> dict[str, Any]:
    """Prepare the state, or restore it from MLOPS_BENCH_NIGHTLY_BASE (same absolute paths)."""
    base = os.environ.get("MLOPS_BENCH_NIGHTLY_BASE")
    tarball = Path(base) / "prepared.tar" if base else None
    if tarball and tarball.exists():
        with tarfile.open(tarball) as tar:
            tar.extractall(root.parent, filter="fully_trusted")
        return json.loads((root / "prepared.json").read_text()) | {"restored_from": str(tarball)}
    prepared = _prepare(env)
    (root / "prepared.json").write_text(json.dumps(prepared))
    if tarball:
        with tarfile.open(tarball, "w") as tar:
            tar.add(root, arcname=root.name)
    return prepared


def _dags_folder(root: Path, env: dict[str, str]) -> dict[str, int]:
    """The project's daily DAG files (links) and their floor, checked shape for shape."""
    folder = root / "dags"
    folder.mkdir(exist_ok=True)
    for dag_id in DAILY:
        (folder / f"{dag_id}.py").symlink_to(REPO / "dags" / f"{dag_id}.py")
    code = ("import json, sys\nfrom airflow.dag_processing.dagbag import DagBag\n"
            "from bench import nightly_floor as nf\nfrom pipelines.core.orchestration import config\n"
            f"bag = DagBag(dag_folder={str(folder)!r})\nassert not bag.import_errors, bag.import_errors\n"
            f"project = {{d: bag.dags[d] for d in {DAILY!r}}}\n"
            f"src = nf.floor_source(list(project.values()), {str(root / 'floor-markers')!r}, "
            "config().drift.window_days)\n"
            f"open({str(folder / 'floor_dags.py')!r}, 'w').write(src)\n"
            f"floor = DagBag(dag_folder={str(folder / 'floor_dags.py')!r})\n"
            "assert not floor.import_errors, floor.import_errors\n"
            "nf.assert_same_shapes(project, floor.dags)\n"
            "print(json.dumps({d: len(p.tasks) for d, p in project.items()}))\n")
    out = subprocess.run([str(BIN / "python"), "-c", code], env=env, cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"floor DAGs: {out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _session_cpu(sid: int) -> float:
    """CPU seconds of every live process of session `sid`, with the children each reaped."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields[0] is the state: session id is the 6th after ')'
            total += sum(int(x) for x in fields[11:15])
    return total / tick


def _wait_up(proc: subprocess.Popen, base: str, timeout: float) -> None:
    """Until the API server answers and the scheduler and DAG processor report healthy."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5) as r:
                body = json.loads(r.read())
            if all(body[k]["status"] == "healthy" for k in ("scheduler", "dag_processor")):
                return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Airflow not healthy after {timeout:.0f}s")
        time.sleep(2)


def _wait_preloaded(proc: subprocess.Popen, log: Path, workers: int, timeout: float
                    ) -> list[str]:
    """Until `workers` executor workers logged their preload (pipelines.core.executor); the
    lines. None expected without MLOPS_EXECUTOR_PRELOAD's modules."""
    if "MLOPS_EXECUTOR_PRELOAD" in os.environ and not os.environ["MLOPS_EXECUTOR_PRELOAD"]:
        return []
    deadline = time.monotonic() + timeout
    while True:
        lines = [line.split("preload: ", 1)[1].strip() for line in
                 log.read_text(errors="replace").splitlines() if "preload: worker imported" in line]
        if len(lines) >= workers:
            return lines
        if proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited ({proc.returncode})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(lines)} of {workers} executor workers preloaded after "
                               f"{timeout:.0f}s")
        time.sleep(2)


def _stop(pid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
                os.killpg(pid, 0)
            except (ChildProcessError, ProcessLookupError):
                return
            time.sleep(0.3)


def _query(db: Path, sql: str, *args: Any) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _ts(value: Any) -> datetime:
    return datetime.fromisoformat(str(value)).replace(tzinfo=None)


def _phase(client: Any, db: Path, dag_ids: list[str], nights: int, sid: int,
           timeout: float) -> dict[str, Any]:
    """Unpause `dag_ids`, wait for their N runs each, and measure them."""
    cpu0, t0 = _session_cpu(sid), time.perf_counter()
    started = datetime.now(UTC).replace(tzinfo=None)
    for dag_id in dag_ids:
        client.unpause(dag_id)
    marks = ",".join("?" * len(dag_ids))
    while True:
        states = _query(db, f"SELECT dag_id, state FROM dag_run WHERE dag_id IN ({marks})",
                        *dag_ids)
        done = [s for _, s in states if s in ("success", "failed")]
        if len(done) >= nights * len(dag_ids):
            break
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{dag_ids}: {len(done)} of {nights * len(dag_ids)} runs after "
                               f"{timeout:.0f}s")
        time.sleep(2)
    failed = [s for s in states if s[1] != "success"]
    if failed:
        raise RuntimeError(f"runs that did not succeed: {failed}")
    cpu = _session_cpu(sid) - cpu0
    ends = _query(db, f"SELECT max(end_date) FROM dag_run WHERE dag_id IN ({marks})", *dag_ids)
    wall = (_ts(ends[0][0]) - started).total_seconds()
    return {"wall_s": round(wall, 1), "wall_per_night_s": round(wall / nights, 1),
            "cpu_s": round(cpu, 1), "cpu_per_night_s": round(cpu / nights, 1)}


def _tasks(db: Path, dag_ids: list[str], strip: str = "") -> dict[str, Any]:
    """Per night: span and summed task time; per task: median run time and queue wait."""
    marks = ",".join("?" * len(dag_ids))
    rows = _query(db, "SELECT ti.dag_id, ti.task_id, r.data_interval_start, ti.start_date, "
                      "ti.end_date, ti.queued_dttm FROM task_instance ti JOIN dag_run r ON "
                      "r.dag_id = ti.dag_id AND r.run_id = ti.run_id "
                      f"WHERE ti.dag_id IN ({marks}) AND ti.state = 'success'", *dag_ids)
    nights: dict[str, list[tuple[datetime, datetime, float]]] = {}
    per_task: dict[str, list[float]] = {}
    for dag_id, task_id, day, start, end, _queued in rows:
        s, e = _ts(start), _ts(end)
        nights.setdefault(str(day)[:10], []).append((s, e, (e - s).total_seconds()))
        per_task.setdefault(f"{dag_id.removeprefix(strip)}.{task_id}", []).append(
            (e - s).total_seconds())
    return {
        "nights": {d: {"span_s": round((max(e for _, e, _ in v) - min(s for s, _, _ in v))
                                       .total_seconds(), 1),
                       "task_time_s": round(sum(x for *_, x in v), 1)}
                   for d, v in sorted(nights.items())},
        "task_median_s": {k: round(median(v), 2) for k, v in sorted(per_task.items())},
    }


def _replays(env: dict[str, str], root: Path, db: Path, day: date) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dag_id in DAILY:
        (run_id,) = _query(db, "SELECT run_id FROM dag_run WHERE dag_id = ? AND "
                               "substr(data_interval_start, 1, 10) = ?", dag_id, day.isoformat())[0]
        # every task and map index, in the order they ran: each replay reads what the replays
        # before it returned (the run's staged files are gone once it published)
        tasks = _query(db, "SELECT task_id, map_index FROM task_instance WHERE dag_id = ? AND "
                           "run_id = ? AND state = 'success' ORDER BY start_date", dag_id, run_id)
        results = Path(tempfile.mkdtemp(prefix=f"replay-{dag_id}-", dir=root))
        for task_id, index in tasks:
            name = f"{dag_id}.{task_id}" + (f"[{index}]" if index >= 0 else "")
            res = subprocess.run([str(BIN / "python"), "-m", "bench.nightly_replay",
                                  str(root / "dags" / f"{dag_id}.py"), dag_id, task_id, run_id,
                                  str(db), str(max(index, 0)), str(results)], env=env, cwd=REPO,
                                 capture_output=True, text=True)
            if res.returncode != 0:
                out[name] = {"error": res.stderr[-600:]}
                continue
            line = res.stdout.strip().splitlines()[-1]
            r = json.loads(line)
            out[name] = {k: r[k] for k in ("parse_s", "imports_s", "setup_s", "work_s",
                                           "body_s")}
    return out


def run(rows: int = 7) -> dict[str, Any]:
    from stack.api import AirflowClient

    nights = rows
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally clauses run
    base = os.environ.get("MLOPS_BENCH_NIGHTLY_BASE")
    root = (Path(base) / "run" if base else Path(tempfile.mkdtemp(prefix="mlops-bench-nightly-")))
    if base:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    port = _free_port()
    env = _env(root, port, nights)
    load = {"before": os.getloadavg()}
    if not 1 <= nights <= (LAST - FIRST).days:
        raise ValueError(f"nights: 1 to {(LAST - FIRST).days}")
    prepared = _state(root, env)
    env = _env(root, port, nights)  # fresh log-server ports
    shutil.rmtree(root / "dags", ignore_errors=True)
    n_tasks = _dags_folder(root, env)
    password = "bench-" + os.urandom(8).hex()
    (root / "airflow" / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({"admin": password}))
    db = root / "airflow" / "airflow.db"
    log = open(root / "standalone.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, cwd=root, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = AirflowClient(f"http://127.0.0.1:{port}", "admin", password)
        t0 = time.perf_counter()
        _wait_up(proc, f"http://127.0.0.1:{port}", 300)
        client.wait_for_dags(DAILY + [nightly_floor.PREFIX + d for d in DAILY], timeout=300)
        startup = time.perf_counter() - t0
        # the executor's workers import the libraries once at start: a cost of starting
        # Airflow, not of the first phase's nights
        preloaded = _wait_preloaded(proc, root / "standalone.log", 2, 900)
        startup_preloaded = time.perf_counter() - t0
        floor = _phase(client, db, [nightly_floor.PREFIX + d for d in DAILY], nights, proc.pid,
                       3600)
        load["after_floor"] = os.getloadavg()
        project = _phase(client, db, DAILY, nights, proc.pid, 6 * 3600)
        load["after_project"] = os.getloadavg()
    finally:
        _stop(proc.pid)
        log.close()
    floor.update(_tasks(db, [nightly_floor.PREFIX + d for d in DAILY], nightly_floor.PREFIX))
    project.update(_tasks(db, DAILY))
    replay = _replays(env, root, db, FIRST + timedelta(days=nights - 1))
    load["after_replay"] = os.getloadavg()
    if not base:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "nights": nights, "first_night": FIRST.isoformat(), "tasks_per_night": n_tasks,
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load_avg_1_5_15": {k: [round(x, 2) for x in v] for k, v in load.items()},
        "setup_s": prepared | {"airflow_up_s": round(startup, 1),
                               "workers_preloaded_s": round(startup_preloaded, 1),
                               "worker_preload": preloaded},
        "project": project, "floor": floor,
        "project_over_floor": {
            "wall": round(project["wall_s"] / floor["wall_s"], 2),
            "cpu": round(project["cpu_s"] / max(floor["cpu_s"], 0.1), 2)},
        "replay_last_night": replay,
    }
