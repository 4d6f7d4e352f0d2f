"""`make stack`: the scale path's servers from packages, on loopback, under one folder.

    python -m stack up [--workers 2]   Postgres, Redis, SeaweedFS (S3), MLflow server, Airflow
                                       (api-server, scheduler, dag-processor, triggerer, Celery
                                       workers); returns once all are up
    python -m stack status             which processes are alive
    python -m stack down               stop everything (reverse order)
    python -m stack restart NAME       stop and start one Airflow process (scheduler, worker-1)
    python -m stack env                the client environment (`eval "$(python -m stack env)"`)

The folder is `$MLOPS_STACK_DIR`, default `<repo>/.state/stack`. Every credential is generated
at first start and kept in 0600 files there; nothing has a default password.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from stack import airflow, services
from stack.services import Service

REPO = Path(__file__).resolve().parent.parent
BUCKET = "mlops"
DVC_BUCKET = "mlops-dvc"  # .dvc/config's `s3` remote
DATABASES = ("airflow", "mlflow", "mlops")


def stack_dir() -> Path:
    return Path(os.environ.get("MLOPS_STACK_DIR") or REPO / ".state" / "stack").resolve()


def _manifest(root: Path) -> Path:
    return root / "stack.json"


def load(root: Path) -> list[Service]:
    path = _manifest(root)
    if not path.exists():
        return []
    return [Service(**s) for s in json.loads(path.read_text())["services"]]


def _save(root: Path, running: list[Service], env: dict[str, str]) -> None:
    services._write_secret(_manifest(root), json.dumps(
        {"services": [asdict(s) for s in running], "env": env}, indent=2))
    services._write_secret(root / "stack.env", "".join(
        f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items())))


def client_env(root: Path, pg: Service, redis: Service, s3: Service, mlflow: Service,
               metrics_db: str) -> dict[str, str]:
    """What a process of the stack (an Airflow task, a CLI call, a test) needs to reach it."""
    return {
        **s3.env,
        **mlflow.env,
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
        raise services.ServiceError(f"feast apply failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def up(root: Path, workers: int) -> dict[str, str]:
    running = [s for s in load(root) if s.alive()]
    if running:
        raise SystemExit(f"the stack in {root} is already running "
                         f"({', '.join(s.name for s in running)}); `python -m stack down` first")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)  # secrets are 0600 files; Postgres' OS user must pass through
    started: list[Service] = []
    env: dict[str, str] = {}
    try:
        pg = services.start_postgres(root)
        started.append(pg)
        urls = {db: services.create_database(pg, db) for db in DATABASES}
        redis = services.start_redis(root)
        started.append(redis)
        s3 = services.start_seaweedfs(root)
        started.append(s3)
        for bucket in (BUCKET, DVC_BUCKET):
            services.create_bucket(s3.env, bucket)
        _save(root, started, env)
        mlflow = airflow.start_mlflow(root, s3.env, urls["mlflow"], f"s3://{BUCKET}/mlflow")
        started.append(mlflow)
        env = client_env(root, pg, redis, s3, mlflow, urls["mlops"])
        _save(root, started, env)
        api_port = services.free_port()
        af_env = {**env, **airflow.airflow_env(
            root, urls["airflow"],
            f"redis://:{redis.env['REDIS_PASSWORD']}@127.0.0.1:{redis.port}/0", api_port)}
        airflow.init_airflow(af_env, airflow.secrets_env(root)["MLOPS_AIRFLOW_ADMIN_PASSWORD"])
        _feast_apply(env)
        # Settings given to `up` (params file, Airflow overrides) stay with the stack, so a
        # process restarted later from another shell runs with the same configuration.
        given = {k: v for k, v in os.environ.items()
                 if k.startswith(("MLOPS_", "AIRFLOW__", "FEAST_", "OMP_", "OPENBLAS_"))}
        af_env = {**given, **af_env}
        started += airflow.start_airflow(root, af_env, workers=workers)
        env = af_env
        _save(root, started, env)
        return env
    except BaseException:
        for service in reversed(started):
            service.stop(timeout=10)
        _save(root, [], env)
        raise


def down(root: Path, timeout: float | None = None) -> list[str]:
    """Stop every process, last started first; `timeout` caps each one's graceful stop."""
    stopped = []
    for service in reversed(load(root)):
        if service.alive():
            service.stop(timeout)
            stopped.append(service.name)
    if _manifest(root).exists():
        env = json.loads(_manifest(root).read_text()).get("env", {})
        _save(root, [], env)
    return stopped


def restart(root: Path, name: str) -> Service:
    """Stop one Airflow process (if alive) and start it again with the stack's configuration:
    a scheduler restart, or a worker back after a crash."""
    listed = load(root)
    env = json.loads(_manifest(root).read_text())["env"]
    old = next((s for s in listed if s.name == name), None)
    if old is None or not name.startswith(("worker-", "scheduler", "dag-processor", "triggerer")):
        raise SystemExit(f"{name!r} is not an Airflow process of the stack in {root}")
    if old.alive():
        old.stop()
    new = (airflow.start_worker(root, env, int(name.split("-", 1)[1]))
           if name.startswith("worker-") else airflow.start_process(root, env, name))
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
    p_restart = sub.add_parser("restart", help="restart one Airflow process (scheduler, worker-1, ...)")
    p_restart.add_argument("name")
    args = parser.parse_args(argv)
    root = stack_dir()
    if args.cmd == "up":
        env = up(root, args.workers)
        print(f"stack up in {root}")
        print(f"  Airflow UI  {env['AIRFLOW__API__BASE_URL']}  (admin / password in "
              f"{root / 'airflow' / 'secrets.json'}: MLOPS_AIRFLOW_ADMIN_PASSWORD)")
        print(f"  MLflow      {env['MLFLOW_TRACKING_URI']}")
        print(f"  S3          {env['AWS_ENDPOINT_URL']}  bucket s3://{BUCKET}")
        print(f"  client env  . {root / 'stack.env'}")
    elif args.cmd == "down":
        stopped = down(root, args.timeout)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    elif args.cmd == "status":
        listed = load(root)
        for s in listed:
            print(f"{s.name:14} pid {s.pid:<8} {'up' if s.alive() else 'DOWN':5} {s.extra.get('url', '')}")
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
