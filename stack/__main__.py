"""`make stack`: the scale path's servers from packages, on loopback, under one folder.

    python -m stack up [--workers 2]   Postgres, Redis, SeaweedFS (S3), MLflow server, Airflow
                                       (api-server, scheduler, dag-processor, triggerer, Celery
                                       workers), the online model server (2 uvicorn
                                       workers); returns once all are up
    python -m stack status             which processes are alive
    python -m stack down               stop everything (Airflow, MLflow, then the data servers)
    python -m stack restart NAME       stop and start one process: an Airflow one (scheduler,
                                       worker-1, ...) or the model server (model-server, on
                                       its port; prediction logs flushed by its shutdown)
    python -m stack env                the client environment (`eval "$(python -m stack env)"`)

The folder is `$MLOPS_STACK_DIR`, default `<repo>/.state/stack`. Every credential is generated
at first start and kept in 0600 files there; nothing has a default password, and no secret is
on a command line. Everything this command writes (logs included) is for its owner only
(umask 077).

The command's whole sequence (start order, readiness, the Airflow set-up steps) reads top to
bottom here, which is why it stays one module slightly over the ~300-line guideline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import stat
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from stack import airflow, process, services, serving, tracking
from stack.process import Service

REPO = Path(__file__).resolve().parent.parent
BUCKET = "mlops"
DVC_BUCKET = "mlops-dvc"  # .dvc/config's `s3` remote
# database -> its owner, the one login role that uses it (MLflow's users live beside its runs)
SERVING_WORKERS = 2  # uvicorn workers of the model server
DATABASES = {"airflow": "airflow", "mlflow": "mlflow", "mlflow_auth": "mlflow", "mlops": "mlops"}


def stack_dir() -> Path:
    return Path(os.environ.get("MLOPS_STACK_DIR") or REPO / ".state" / "stack").resolve()


def _manifest(root: Path) -> Path:
    return root / "stack.json"


@contextlib.contextmanager
def _timed(root: Path, what: str):
    """Append how long `what` took to `<root>/timings.log` (where `up`/`down` spend time)."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        with contextlib.suppress(OSError), open(root / "timings.log", "a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {what:28} {time.monotonic() - t0:7.2f} s\n")


def load(root: Path) -> list[Service]:
    path = _manifest(root)
    if not path.exists():
        return []
    return [Service(**s) for s in json.loads(path.read_text())["services"]]


def _save(root: Path, running: list[Service], env: dict[str, str]) -> None:
    process.write_secret(_manifest(root), json.dumps(
        {"services": [asdict(s) for s in running], "env": env}, indent=2))
    process.write_secret(root / "stack.env", "".join(
        f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items())))


def client_env(root: Path, pg: Service, redis: Service, s3: Service,
               mlflow_env: dict[str, str], metrics_db: str) -> dict[str, str]:
    """What a process of the stack (an Airflow task, a CLI call, a test) needs to reach it."""
    return {
        **s3.env,
        **mlflow_env,
        "MLOPS_STATE_URI": str(root / "local"),  # nothing shared lives here in this mode
        "MLOPS_DATA_URI": f"s3://{BUCKET}/data",
        "MLOPS_REPORTS_URI": f"s3://{BUCKET}/reports",
        "MLOPS_METRICS_DB": metrics_db,
        "MLOPS_LOCK_URL": metrics_db,
        "FEAST_REGISTRY_PATH": f"s3://{BUCKET}/feast/registry.db",
        "FEAST_ONLINE_STORE": "redis",
        # db 0 is Celery's broker; the online store has its own.
        "FEAST_REDIS_CONNECTION":
            f"127.0.0.1:{redis.port},password={redis.env['REDIS_PASSWORD']},db=1",
        "MLOPS_REDIS_URL": f"redis://:{redis.env['REDIS_PASSWORD']}@127.0.0.1:{redis.port}/1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _feast_apply(env: dict[str, str]) -> None:
    """Register the feature definitions in the stack's Feast registry (S3, online store Redis)."""
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "apply"], cwd=REPO,
                         env={**os.environ, **env}, capture_output=True, text=True)
    if out.returncode != 0:
        raise process.ServiceError(f"feast apply failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


# Data servers: the last to stop (everything else uses them). MLflow stops after Airflow's
# processes (a task still finishing may talk to it). Within each group nothing depends on another.
DATA_SERVERS = ("postgres", "redis", "seaweedfs")
STARTING = "starting"  # `extra` key of a service `up` spawned that was not ready yet
_ORDER = (*DATA_SERVERS, "mlflow", serving.NAME, *airflow.PROCESSES)


def _order(service: Service) -> tuple[int, int]:
    if service.name in _ORDER:
        return _ORDER.index(service.name), 0
    return len(_ORDER), airflow._order(service)[1]


def _stop_stages(listed: list[Service]) -> list[tuple[str, list[Service]]]:
    """Airflow's processes and the model server (and anything unknown) first, then MLflow,
    then the data servers (the model server's last prediction-log flush goes to S3)."""
    data = [s for s in listed if s.name in DATA_SERVERS]
    mlflow = [s for s in listed if s.name == "mlflow"]
    rest = [s for s in listed if s not in data and s not in mlflow]
    return [("airflow, model server", rest), ("mlflow", mlflow), ("data servers", data)]


def _stop(root: Path, listed: list[Service], timeout: float | None) -> list[str]:
    """Stop `listed` stage by stage, each stage's services at once; returns the names stopped
    (last started first)."""
    stopped: list[str] = []
    for what, stage in _stop_stages(listed):
        alive = [s for s in stage if s.alive()]
        if not alive:
            continue
        with _timed(root, f"down: {what} ({len(alive)})"):
            process.stop_all(alive, timeout)
        stopped += [s.name for s in alive]
    with _timed(root, "down: reaped"):
        process.wait_reaped(listed)
    order = {s.name: i for i, s in enumerate(reversed(listed))}
    return sorted(stopped, key=order.__getitem__)


def _make_root(root: Path) -> None:
    """The stack folder: traversable (0711), not listable, everything in it for the owner only
    (also what an earlier version left there). Folders made on the way to it are 0711 too:
    Postgres runs as its own OS user when root starts the stack and must pass through."""
    missing = [p for p in (root, *root.parents) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    for folder in (*missing, root):
        os.chmod(folder, 0o711)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                os.chmod(path, stat.S_IMODE(mode) & 0o700)


def up(root: Path, workers: int) -> dict[str, str]:
    running = [s for s in load(root) if s.alive()]
    if running:
        raise SystemExit(f"the stack in {root} is already running "
                         f"({', '.join(s.name for s in running)}); `python -m stack down` first")
    _make_root(root)
    started: list[Service] = []
    env: dict[str, str] = {}
    lock = threading.Lock()

    def keep(service: Service) -> Service:
        """Record a service (from any thread), so a failure or an interrupted `up` stops it,
        and `down` finds it even if `up` itself is killed: once spawned, as `starting` (its
        process group; no port or environment yet), then as itself once it is up."""
        with lock:
            started[:] = [s for s in started if s.pid != service.pid]
            started.append(service)
            started.sort(key=_order)
            _save(root, started, env)
        return service

    def starting(name: str, pid: int, log: Path) -> None:
        keep(Service(name=name, pid=pid, port=0, env={}, log=str(log),
                     extra={STARTING: "spawned, not ready yet"}))

    def timed(what: str, fn, *args, **kwargs):
        with _timed(root, what):
            return fn(*args, **kwargs)

    process.spawn_hook(starting)
    try:
        # 1. The data servers, at once (none needs another).
        def postgres() -> tuple[Service, dict[str, str]]:
            pg = keep(timed("up: postgres", services.start_postgres, root))
            return pg, {db: services.create_database(pg, db, owner)
                        for db, owner in DATABASES.items()}

        def seaweedfs() -> Service:
            s3 = keep(timed("up: seaweedfs", services.start_seaweedfs, root))
            for bucket in (BUCKET, DVC_BUCKET):
                services.create_bucket(s3.env, bucket)
            return s3

        with _timed(root, "up: data servers"):
            (pg, urls), redis, s3 = process.in_parallel(
                postgres, lambda: keep(timed("up: redis", services.start_redis, root)), seaweedfs)

        # 2. MLflow, the Feast registry and Airflow, at once: each needs only the data servers
        # (the MLflow port is chosen first, so every client's environment is known up front).
        mlflow_port = process.free_port()
        env = client_env(root, pg, redis, s3, tracking.client_env(root, mlflow_port), urls["mlops"])
        api_port = process.free_port()
        af_env = {**env, **airflow.airflow_env(
            root, urls["airflow"],
            f"redis://:{redis.env['REDIS_PASSWORD']}@127.0.0.1:{redis.port}/0", api_port)}
        # Settings given to `up` (params file, Airflow overrides) stay with the stack, so a
        # process restarted later from another shell runs with the same configuration.
        given = {k: v for k, v in os.environ.items()
                 if k.startswith(("MLOPS_", "AIRFLOW__", "FEAST_", "OMP_", "OPENBLAS_"))}
        af_env = {**given, **af_env}
        admin_password = airflow.secrets_env(root)["MLOPS_AIRFLOW_ADMIN_PASSWORD"]

        mlflow_done = threading.Event()
        served: dict[str, str] = {}

        def mlflow() -> None:
            try:
                keep(timed("up: mlflow", tracking.start_mlflow, root, s3.env, urls["mlflow"],
                           urls["mlflow_auth"], f"s3://{BUCKET}/mlflow", port=mlflow_port))
                served["mlflow"] = "up"
            finally:
                mlflow_done.set()

        def feast_and_model_server() -> None:
            # The model server needs the Feast registry and MLflow (it starts without a
            # champion: live, not ready until training promotes one). Its environment is the
            # clients' (S3, Redis, the MLflow login) and the settings given to `up`; no
            # Airflow secret.
            timed("up: feast apply", _feast_apply, env)
            mlflow_done.wait()
            if "mlflow" not in served:
                return  # MLflow failed: its own error is raised
            server = keep(timed("up: model server", serving.start_model_server, root,
                                {**given, **env}, workers=SERVING_WORKERS))
            served.update(server.env)

        def airflow_all() -> None:
            # The migration first; then the admin login and the pool alongside the processes.
            timed("up: airflow db migrate", airflow.migrate_airflow, af_env)

            def processes() -> None:
                for service in timed("up: airflow processes", airflow.start_airflow,
                                     root, af_env, workers=workers):
                    keep(service)

            process.in_parallel(
                lambda: timed("up: airflow users/pools", airflow.init_airflow_objects,
                              af_env, admin_password),
                processes)

        with _timed(root, "up: mlflow+feast+server+airflow"):
            process.in_parallel(mlflow, feast_and_model_server, airflow_all)
        env = {**af_env, **{k: v for k, v in served.items() if k.startswith("MLOPS_SERVING_")}}
        with lock:
            _save(root, started, env)
        return env
    except BaseException:
        _stop(root, started, timeout=10)
        _save(root, [], env)
        raise
    finally:
        process.spawn_hook(None)


def down(root: Path, timeout: float | None = None) -> list[str]:
    """Stop every process: Airflow's processes all at once, then MLflow, then the data servers
    (at once); `timeout` caps each one's graceful stop."""
    listed = load(root)
    stopped = _stop(root, listed, timeout) if listed else []
    if _manifest(root).exists():
        env = json.loads(_manifest(root).read_text()).get("env", {})
        _save(root, [], env)
    return stopped


def _model_server_env(env: dict[str, str]) -> dict[str, str]:
    """The model server's environment out of the stack's: the clients' (S3, Redis, the MLflow
    login, the settings given to `up`), without Airflow's settings and secrets and without the
    server's own address (its launcher sets those)."""
    return {k: v for k, v in env.items() if not k.startswith("AIRFLOW")
            and k not in ("MLOPS_SERVING_URL", "MLOPS_SERVING_TOKEN_FILE")}


def restart(root: Path, name: str) -> Service:
    """Stop one process (if alive) and start it again with the stack's configuration: a
    scheduler restart, a worker back after a crash, or the model server (on the same port, so
    its URL in stack.env stays right; a graceful stop flushes its prediction log)."""
    listed = load(root)
    env = json.loads(_manifest(root).read_text())["env"]
    old = next((s for s in listed if s.name == name), None)
    airflow_process = name.startswith(("worker-", "scheduler", "dag-processor", "triggerer"))
    if old is None or not (airflow_process or name == serving.NAME):
        raise SystemExit(f"{name!r} is not a process of the stack in {root} (Airflow's: "
                         f"scheduler, worker-N, dag-processor, triggerer; or {serving.NAME})")
    if old.alive():
        old.stop()
    if name == serving.NAME:
        new = serving.start_model_server(root, _model_server_env(env),
                                         workers=int(old.extra.get("workers", SERVING_WORKERS)),
                                         port=old.port)
    elif name.startswith("worker-"):
        new = airflow.start_worker(root, env, int(name.split("-", 1)[1]))
    else:
        new = airflow.start_process(root, env, name)
    _save(root, [new if s.name == name else s for s in listed], env)
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--workers", type=int, default=2)
    p_down = sub.add_parser("down")
    p_down.add_argument("--timeout", type=float, default=None,
                        help="seconds each process gets to stop before SIGKILL (default: its own)")
    sub.add_parser("status")
    sub.add_parser("env")
    p_restart = sub.add_parser("restart", help="restart one process (scheduler, worker-1, "
                                               "model-server, ...)")
    p_restart.add_argument("name")
    args = parser.parse_args(argv)
    os.umask(0o077)  # logs, keys, data: owner only, in this process and every one it starts
    root = stack_dir()
    if args.cmd == "up":
        with _timed(root, "up: total"):
            env = up(root, args.workers)
        print(f"stack up in {root}")
        print(f"  Airflow UI  {env['AIRFLOW__API__BASE_URL']}  (admin / password in "
              f"{root / 'airflow' / 'secrets.json'}: MLOPS_AIRFLOW_ADMIN_PASSWORD)")
        print(f"  MLflow      {env['MLFLOW_TRACKING_URI']}  (user {env['MLFLOW_TRACKING_USERNAME']}; "
              f"password in stack.env: MLFLOW_TRACKING_PASSWORD)")
        print(f"  S3          {env['AWS_ENDPOINT_URL']}  bucket s3://{BUCKET}")
        print(f"  model       {env['MLOPS_SERVING_URL']}  (bearer token in "
              f"{env['MLOPS_SERVING_TOKEN_FILE']})")
        print(f"  client env  . {root / 'stack.env'}")
    elif args.cmd == "down":
        with _timed(root, "down: total"):
            stopped = down(root, args.timeout)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    elif args.cmd == "status":
        listed = load(root)
        for s in listed:
            where = s.extra.get('url') or s.extra.get(STARTING, '')
            print(f"{s.name:14} pid {s.pid:<8} {'up' if s.alive() else 'DOWN':5} {where}")
        if not listed:
            print(f"no stack in {root}")
        return 0 if listed and all(s.alive() for s in listed) else 1
    elif args.cmd == "restart":
        print(f"restarted {args.name}: pid {restart(root, args.name).pid}")
    elif args.cmd == "env":
        path = root / "stack.env"
        if not path.exists():
            raise SystemExit(f"no stack in {root}: `python -m stack up` first")
        sys.stdout.write(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
