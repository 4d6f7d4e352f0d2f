"""Airflow with the CeleryExecutor on the stack's Postgres and Redis: the same processes as
docker-compose.yaml's services, started from packages on loopback under the stack folder.

Airflow runs its api-server, scheduler, dag-processor, triggerer and N Celery workers. Workers
on one machine are told apart by name: each one's `hostname_callable` returns `$MLOPS_WORKER_NAME`,
which Airflow records on every task instance it runs (`TaskInstance.hostname`).

Nothing listens beyond 127.0.0.1: the API server and the scheduler's health check are bound to
it, and the workers and the triggerer start no log server (Airflow binds those to every
interface): every process of this stack writes its task logs to one local folder, which the
API server reads directly. Secrets reach the processes through their environment only; logs
and folders are for the owner alone.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stack.process import (
    Service,
    ServiceError,
    free_port,
    in_parallel,
    spawn,
    stop_all,
    tail,
    wait_ready,
    write_secret,
)

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _bin(name: str) -> str:
    path = VENV_BIN / name
    return str(path) if path.exists() else name


def _wait_http(service: Service, proc: subprocess.Popen, url: str, timeout: float) -> None:
    """Up once `url` answers 200 (exits and timeouts end with the tail of its log)."""
    def ready() -> bool:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200

    wait_ready(service, proc, ready, timeout, Path(service.log))


def secrets_env(root: Path) -> dict[str, str]:
    """Airflow's keys, made once per stack folder and kept (0600): the Fernet key must stay the
    same across restarts or stored connections can no longer be decrypted."""
    path = Path(root).resolve() / "airflow" / "secrets.json"
    if not path.exists():
        fernet = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        write_secret(path, json.dumps({
            "AIRFLOW__CORE__FERNET_KEY": fernet,
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(48),
            "MLOPS_AIRFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        }, indent=2))
    return json.loads(path.read_text())


def airflow_env(root: Path, db_url: str, broker_url: str, api_port: int) -> dict[str, str]:
    """Configuration shared by every Airflow process of the stack (the compose file's
    `x-airflow-common` environment)."""
    home = Path(root).resolve() / "airflow"
    sqla = db_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    keys = secrets_env(root)
    # The project's DAGs, plus any folder in $MLOPS_STACK_EXTRA_DAGS (e.g. bench/dags).
    folders = {"dags-folder": str(REPO / "dags")}
    for i, extra in enumerate(filter(None, os.environ.get("MLOPS_STACK_EXTRA_DAGS", "").split(":"))):
        folders[f"extra-{i + 1}"] = str(Path(extra).resolve())
    bundles = [{"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": path}} for name, path in folders.items()]
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqla,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + sqla,
        # Airflow's Celery settings, and workers that import the heavy libraries before forking
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "pipelines.core.celery_config.CELERY_CONFIG",
        "AIRFLOW__CORE__FERNET_KEY": keys["AIRFLOW__CORE__FERNET_KEY"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["AIRFLOW__API_AUTH__JWT_SECRET"],
        "AIRFLOW__API__SECRET_KEY": keys["AIRFLOW__API__SECRET_KEY"],
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "stack.hostname.worker_name",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        # A worker's slot is free again only once its task supervisor has seen the task process
        # exit, which it may see only when its wait times out, after [workers]
        # min_heartbeat_interval (Airflow's default: 5 s). `bench stack`, 100 empty mapped tasks
        # on 2 slots: with 5 s, 24 of 98 hand-overs on a worker took 1-5.2 s (span 70.9 s);
        # with 1 s, none over 1.2 s (span 32.8 s). The price: a heartbeat a second per running
        # task (Postgres here).
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL":
            os.environ.get("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "1"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY":
            os.environ.get("AIRFLOW__CELERY__WORKER_CONCURRENCY", "2"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        # Task logs for the owner only (Airflow's defaults are 0o775 / 0o664).
        "AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FOLDER_PERMISSIONS": "0o700",
        "AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FILE_PERMISSIONS": "0o600",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
    }


def _airflow(args: list[str], env: dict[str, str], timeout: float = 600) -> str:
    out = subprocess.run([_bin("airflow"), *args], env={**os.environ, **env}, cwd=REPO,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise ServiceError(f"airflow {' '.join(args[:2])} failed:\n{out.stdout[-3000:]}\n"
                           f"{out.stderr[-3000:]}")
    return out.stdout


def migrate_airflow(env: dict[str, str]) -> None:
    """Create or upgrade the metadata DB (FAB's tables included): every Airflow process needs it."""
    _airflow(["db", "migrate"], env)


def _create_admin(env: dict[str, str], admin_password: str) -> None:
    """The FAB `admin` login. `airflow users create` reads the password from stdin when it is
    not on its command line and has no terminal (its own session): never in `ps`."""
    out = subprocess.run([_bin("airflow"), "users", "create", "--username", "admin",
                          "--role", "Admin", "--firstname", "MLOps", "--lastname", "Admin",
                          "--email", "admin@localhost"],
                         input=f"{admin_password}\n{admin_password}\n", start_new_session=True,
                         env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0 and "already exist" not in out.stdout + out.stderr:
        raise ServiceError(f"airflow users create failed:\n{out.stdout[-2000:]}\n"
                           f"{out.stderr[-2000:]}")


def init_airflow_objects(env: dict[str, str], admin_password: str) -> None:
    """After the migration: the admin login and the pool, both at once (independent rows)."""
    in_parallel(lambda: _create_admin(env, admin_password), lambda: _airflow(
        ["pools", "set", "model_registry", "1", "Serialises MLflow alias moves (one at a time)"],
        env))


def _start(name: str, args: list[str], root: Path, env: dict[str, str],
           stop_signal: int = signal.SIGTERM) -> tuple[Service, subprocess.Popen]:
    log = Path(root).resolve() / "airflow" / f"{name}.log"
    proc = spawn(name, [_bin("airflow"), *args], log, cwd=REPO, env={**os.environ, **env})
    service = Service(name=name, pid=proc.pid, port=0, env={}, log=str(log),
                      root=str(log.parent), stop_signal=int(stop_signal), stop_timeout=30.0)
    service._proc = proc
    return service, proc


PROCESSES = ("api-server", "scheduler", "dag-processor", "triggerer")


def _order(service: Service) -> tuple[int, int]:
    """api-server, scheduler, dag-processor, triggerer, worker-1, worker-2, ..."""
    if service.name in PROCESSES:
        return PROCESSES.index(service.name), 0
    index = service.name.rsplit("-", 1)[-1]
    return len(PROCESSES), int(index) if index.isdigit() else 0


def start_api_server(root: Path, env: dict[str, str], timeout: float = 180.0) -> Service:
    """`airflow api-server`; up once its health endpoint answers."""
    api, proc = _start("api-server", ["api-server"], root, env)
    api.port = int(env["AIRFLOW__API__PORT"])
    api.extra = {"url": env["AIRFLOW__API__BASE_URL"]}
    _wait_http(api, proc, f"{env['AIRFLOW__API__BASE_URL']}/api/v2/monitor/health", timeout)
    return api


def start_airflow(root: Path, env: dict[str, str], workers: int = 2,
                  timeout: float = 180.0) -> list[Service]:
    """api-server, scheduler, dag-processor, triggerer and `workers` Celery workers, started at
    once (each needs only the migrated DB and the broker, none needs another to start); returns
    once every one of them is up, or stops those that are and raises."""
    ready: list[Service] = []

    def keep(start):
        def call() -> None:
            ready.append(start())  # list.append is atomic
        return call

    calls = [keep(lambda: start_api_server(root, env, timeout))]
    calls += [keep(lambda n=name: start_process(root, env, n, timeout))
              for name in PROCESSES[1:]]
    calls += [keep(lambda i=i: start_worker(root, env, i, timeout)) for i in range(1, workers + 1)]
    try:
        in_parallel(*calls)
    except BaseException:
        stop_all(ready, timeout=10)
        raise
    return sorted(ready, key=_order)


def start_process(root: Path, env: dict[str, str], name: str, timeout: float = 180.0) -> Service:
    """One of `airflow scheduler | dag-processor | triggerer`; the scheduler is up once its
    health endpoint answers, the others once they have run for a few seconds."""
    if name == "scheduler":
        port = free_port()
        env = {**env, "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(port)}
        service, proc = _start(name, [name], root, env)
        service.port = port
        _wait_http(service, proc, f"http://127.0.0.1:{port}/health", timeout)
        return service
    args = [name, "--skip-serve-logs"] if name == "triggerer" else [name]
    service, proc = _start(name, args, root, env)
    _wait_alive(service, proc, 5.0)
    return service


def _wait_alive(service: Service, proc: subprocess.Popen, seconds: float) -> None:
    time.sleep(seconds)
    if proc.poll() is not None:
        raise ServiceError(f"{service.name} exited with code {proc.returncode}:\n"
                           f"{tail(Path(service.log))}")


def start_worker(root: Path, env: dict[str, str], index: int, timeout: float = 180.0) -> Service:
    """Celery worker `worker-<index>`, without a log server (see the module docstring); up once
    Celery reports it ready (connected to the broker, consuming)."""
    name = f"worker-{index}"
    worker_env = {**env, "MLOPS_WORKER_NAME": name}
    # Celery's warm shutdown on SIGTERM waits for running tasks; the stop timeout bounds it.
    service, proc = _start(name, ["celery", "worker", "--celery-hostname", f"{name}@%h",
                                  "--without-mingle", "--without-gossip", "--skip-serve-logs"],
                            root, worker_env)
    service.extra = {"worker": name}
    log = Path(service.log)
    start = log.stat().st_size if log.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _wait_alive(service, proc, 0.5)
        with open(log, "rb") as fh:
            fh.seek(start)
            if re.search(rb"@\S+ ready\.", fh.read()):
                return service
    service.stop(timeout=5)
    raise ServiceError(f"{name} not ready after {timeout:.0f}s:\n{tail(log)}")
