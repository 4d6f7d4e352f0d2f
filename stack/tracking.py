"""The MLflow tracking server of the stack, behind MLflow's basic-auth app.

Nobody reaches the registry without a login: an unauthenticated request cannot move `champion`
or rewrite a version's sha256 tag. Two accounts, both with generated passwords kept in
`<root>/mlflow/secrets.json` (0600):

- `admin`, created by MLflow itself at first start from the auth config
  (`<root>/mlflow/auth.ini`, 0600, read through MLFLOW_AUTH_CONFIG_PATH); used only to create
- `mlops`, the account every client uses (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
  in `client_env`): no admin rights; it manages what it creates and may read the rest.

The server reaches Postgres as the role `mlflow` (runs and registry in the database `mlflow`,
users and permissions in `mlflow_auth`), whose password it gets as PGPASSWORD: no secret is on
its command line.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from stack.process import (
    Service,
    ServiceError,
    free_port,
    spawn,
    wait_ready,
    write_secret,
)

CLIENT_USER = "mlops"
ADMIN_USER = "admin"


def _secrets(root: Path) -> dict[str, str]:
    """The MLflow passwords and Flask key of this stack folder, made once and kept (the auth
    database keeps the users across restarts, so their passwords must stay the same)."""
    path = Path(root).resolve() / "mlflow" / "secrets.json"
    if not path.exists():
        write_secret(path, json.dumps({
            "admin_password": secrets.token_urlsafe(24),
            "client_password": secrets.token_urlsafe(24),
            "flask_secret_key": secrets.token_urlsafe(32),
        }, indent=2))
    return json.loads(path.read_text())


def client_env(root: Path, port: int) -> dict[str, str]:
    """What every process that talks to this server needs: where it is and the `mlops` login;
    and no pickle loading from the registry, for any of them."""
    return {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "MLFLOW_TRACKING_USERNAME": CLIENT_USER,
        "MLFLOW_TRACKING_PASSWORD": _secrets(root)["client_password"],
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }


def _without_password(url: str) -> tuple[str, str]:
    """`postgresql://user:pw@host:port/db` -> (`postgresql+psycopg2://user@host:port/db`, pw)."""
    parts = urllib.parse.urlsplit(url)
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    return (urllib.parse.urlunsplit(("postgresql+psycopg2", netloc, parts.path, "", "")),
            urllib.parse.unquote(parts.password or ""))


def _request(url: str, method: str, body: dict, user: str, password: str) -> tuple[int, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _ensure_client_user(url: str, keys: dict[str, str]) -> None:
    """Create the `mlops` account with the admin login, or reset its password if it exists."""
    admin = (ADMIN_USER, keys["admin_password"])
    body = {"username": CLIENT_USER, "password": keys["client_password"]}
    status, text = _request(f"{url}/api/2.0/mlflow/users/create", "POST", body, *admin)
    if status != 200 and "RESOURCE_ALREADY_EXISTS" in text:
        status, text = _request(f"{url}/api/2.0/mlflow/users/update-password", "PATCH", body,
                                *admin)
    if status != 200:
        raise ServiceError(f"MLflow: could not create the {CLIENT_USER!r} user: HTTP {status}: "
                           f"{text[:500]}")


def start_mlflow(root: Path, s3_env: dict[str, str], backend_url: str, auth_url: str,
                 artifacts_uri: str, port: int | None = None, timeout: float = 120.0) -> Service:
    """`mlflow server --app-name basic-auth` on 127.0.0.1: runs and registry in Postgres
    (`backend_url`), users in `auth_url` (both of the role `mlflow`), artifacts in S3, proxied
    (`--serve-artifacts`), so clients need no object-store credentials for MLflow."""
    home = Path(root).resolve() / "mlflow"
    home.mkdir(parents=True, exist_ok=True)
    log = home / "mlflow.log"
    port = port or free_port()
    keys = _secrets(root)
    backend, pg_password = _without_password(backend_url)
    auth_db, auth_password = _without_password(auth_url)
    if auth_password != pg_password:
        raise ValueError("the MLflow backend and auth databases must belong to one role")
    ini = home / "auth.ini"
    write_secret(ini, "\n".join([
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {auth_db}",
        f"admin_username = {ADMIN_USER}",
        f"admin_password = {keys['admin_password']}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        # Without it every request re-checks its password's scrypt hash (~0.1 s of CPU): the
        # model server's workers ask for their aliases every `serving.poll_seconds`, which kept
        # 0.3 of this machine's 2 cores busy with the stack idle. A checked login is trusted for
        # 30 s (per MLflow worker; keyed by an HMAC of the password), so a changed or deleted
        # login may still pass for up to 30 s.
        "auth_cache_ttl_seconds = 30",
        "",
    ]))
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
           "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", backend,
           "--artifacts-destination", artifacts_uri, "--serve-artifacts", "--workers", "2"]
    env = {
        # MLflow's job runner (GenAI jobs: prompt optimisation, scorers, trace roll-ups) is not
        # used here; it is eight more Python processes (~45 s of CPU and ~2 GB at start). Set
        # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true in the environment to have it anyway.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **os.environ, **s3_env,
        "PGPASSWORD": pg_password,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": keys["flask_secret_key"],
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
    proc = spawn("mlflow", cmd, log, cwd=home, env=env)
    url = f"http://127.0.0.1:{port}"
    service = Service(name="mlflow", pid=proc.pid, port=port, log=str(log), root=str(home),
                      env={"MLFLOW_TRACKING_URI": url}, extra={"url": url})
    service._proc = proc

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=3) as resp:
            return resp.status == 200

    wait_ready(service, proc, ready, timeout, log)
    try:
        _ensure_client_user(url, keys)
    except BaseException:
        service.stop(timeout=5)
        raise
    return service
