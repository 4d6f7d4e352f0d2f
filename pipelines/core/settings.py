"""Where things live: URIs and service addresses, from environment variables.

Defaults put every piece of state under one git-ignored folder (`.state/` in the repo), so a
fresh clone runs on embedded stores; setting the variables points the same code at Postgres,
Redis and an object store. The scale path (workers that share no disk):

    MLOPS_DATA_URI=s3://<bucket>/data        landing, features, training sets, predictions,
                                             registry history, Feast registry (default)
    MLOPS_REPORTS_URI=s3://<bucket>/reports  validation / gate / drift reports, Data Docs
    MLFLOW_TRACKING_URI=http://<mlflow>:5000 (or postgresql://...), artifacts by the server, or
    MLOPS_MLFLOW_ARTIFACTS_URI=s3://<bucket>/mlflow for a direct backend
    AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_DEFAULT_REGION                       the S3 endpoint and key pair (pipelines.core.storage)
    FEAST_ONLINE_STORE=redis + FEAST_REDIS_CONNECTION=host:port,password=...,db=N
    FEAST_REGISTRY_PATH=s3://<bucket>/feast/registry.db   (optional; pipelines.features.store)
    MLOPS_METRICS_DB=postgresql://...        monitoring history (pipelines.monitoring.history); also
                                             the registry's alias lock unless MLOPS_LOCK_URL
                                             names another Postgres database

Which dataset (one variable selects a complete example configuration beside the flights one):

    MLOPS_EXAMPLE=<name>                     examples/<name>/params.yaml, feature_repo/ and
                                             expectations/ (MLOPS_PARAMS, MLOPS_FEATURE_REPO,
                                             MLOPS_EXPECTATIONS_DIR, when set, still win)

How long a stage waits for the MLflow tracking server before it fails with the real cause
(MLflow's own defaults are 7 retries with backoff and a 120 s timeout: about 4 minutes):

    MLFLOW_HTTP_REQUEST_TIMEOUT=10           seconds per request (project default)
    MLFLOW_HTTP_REQUEST_MAX_RETRIES=2        retries after the first try (project default)
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1     seconds, doubled per retry (project default)

The online model server (`python -m pipelines.serving`, `make serve`):

    MLOPS_SERVING_HOST=127.0.0.1             bind address (loopback unless set)
    MLOPS_SERVING_PORT=8090
    MLOPS_SERVING_WORKERS=1                  uvicorn worker processes
    MLOPS_SERVING_TOKEN_FILE                 the bearer token, generated 0600 on first start
                                             (default <state>/serving/token)
    MLOPS_SERVING_LOG_FLUSH_SECONDS=5        a worker writes its prediction log at least this often
    PROMETHEUS_MULTIPROC_DIR                 per-process metric files, summed by /metrics (default
                                             <state>/serving/metrics, emptied by the launcher)
    MLOPS_EXECUTOR_PRELOAD=<PRELOAD>         modules an Airflow worker imports before its first task
                                             (LocalExecutor: pipelines.core.executor; Celery:
                                             pipelines.core.celery_config; "" = none)
    MLOPS_VALIDATION_WORKERS=2               processes that validate a training window's batches
                                             never validated before (1: this process only)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"


# What the daily tasks import (pipelines.core.executor loads them once per Airflow worker)
PRELOAD = "pandas,pyarrow.parquet,duckdb,sklearn,onnxruntime,mlflow,feast,great_expectations,evidently"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Settings:
    state_uri: str  # root of all embedded state
    data_uri: str  # landing zone, quarantine, feature sources, training sets, predictions
    reports_uri: str  # validation, gate and drift reports
    mlflow_tracking_uri: str
    mlflow_artifacts_uri: str  # where new experiments put their artifacts ('': the server's)
    params_path: str
    feature_repo: str
    # MLflow HTTP client bounds (MLflow reads them from the environment: see mlflow_env)
    mlflow_timeout_s: int = 10
    mlflow_max_retries: int = 2
    mlflow_backoff_factor: int = 1
    expectations_dir: str = str(REPO_ROOT / "expectations")  # MLOPS_EXPECTATIONS_DIR
    metrics_db: str = ""  # MLOPS_METRICS_DB: a SQLite path / URL or a Postgres URL ('': default)
    lock_url: str = ""  # MLOPS_LOCK_URL: Postgres for locks ('': the metrics DB if Postgres)
    alert_webhook_url: str = ""  # MLOPS_ALERT_WEBHOOK_URL (else the Airflow connection)
    schedule_start: str = ""  # MLOPS_SCHEDULE_START / _END override orchestration's span
    schedule_end: str = ""
    sensor_poke_seconds: int = 60  # MLOPS_SENSOR_POKE_SECONDS
    s3_endpoint: str = ""  # AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL ('': AWS itself)
    mlflow_ui_url: str = ""  # MLFLOW_UI_URL: where the UI links to MLflow
    example: str = ""  # MLOPS_EXAMPLE: the example configuration in use ('': the repo's own)
    # Feast (pipelines.features.store): online store kind and locations ('': the defaults)
    feast_online_store: str = ""  # FEAST_ONLINE_STORE: sqlite | redis
    feast_redis_connection: str = ""  # FEAST_REDIS_CONNECTION: host:port,password=...,db=N
    feast_registry_path: str = ""  # FEAST_REGISTRY_PATH
    feast_online_path: str = ""  # FEAST_ONLINE_PATH (SQLite online store)
    feast_state_dir: str = ""  # FEAST_STATE_DIR (local registry and online store folder)
    feast_s3_endpoint: str = ""  # FEAST_S3_ENDPOINT_URL (what Feast's S3 registry store reads)
    # the online model server (pipelines.serving)
    serving_host: str = "127.0.0.1"  # MLOPS_SERVING_HOST
    serving_port: int = 8090  # MLOPS_SERVING_PORT
    serving_workers: int = 1  # MLOPS_SERVING_WORKERS
    serving_token_file: str = ""  # MLOPS_SERVING_TOKEN_FILE ('': <state>/serving/token)
    serving_log_flush_seconds: float = 5.0  # MLOPS_SERVING_LOG_FLUSH_SECONDS
    serving_metrics_dir: str = ""  # PROMETHEUS_MULTIPROC_DIR ('': <state>/serving/metrics)
    executor_preload: tuple[str, ...] = ()  # MLOPS_EXECUTOR_PRELOAD (pipelines.core.executor)
    validation_workers: int = 2  # MLOPS_VALIDATION_WORKERS (pipelines.data.checks.validate_days)

    def mlflow_env(self) -> dict[str, str]:
        """The MLflow client settings every process of the project runs with."""
        return {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.mlflow_timeout_s),
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.mlflow_max_retries),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(self.mlflow_backoff_factor),
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
                # never unpickle a model: scoring loads ONNX only, checked by sha256
                "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}

    @property
    def landing_uri(self) -> str:
        return f"{self.data_uri}/landing"

    @property
    def quarantine_uri(self) -> str:
        return f"{self.data_uri}/quarantine"

    @property
    def features_uri(self) -> str:
        return f"{self.data_uri}/features"

    @property
    def training_sets_uri(self) -> str:
        return f"{self.data_uri}/training_sets"

    @property
    def predictions_uri(self) -> str:
        return f"{self.data_uri}/predictions"

    @property
    def serving_dir(self) -> str:
        """The server's local files (token, metric files): a local folder even when the data
        lives in an object store."""
        state = self.state_uri.removeprefix("file://")
        if "://" in state:
            raise ValueError(f"MLOPS_STATE_URI={self.state_uri!r} is not a local folder: set "
                             "MLOPS_SERVING_TOKEN_FILE and PROMETHEUS_MULTIPROC_DIR")
        return f"{state}/serving"

    @property
    def token_path(self) -> str:
        return self.serving_token_file or f"{self.serving_dir}/token"

    @property
    def metrics_dir(self) -> str:
        return self.serving_metrics_dir or f"{self.serving_dir}/metrics"

    @property
    def registry_uri(self) -> str:
        """Promotion history and drift decisions (small JSON documents)."""
        return f"{self.data_uri}/registry"


def env_value(name: str) -> str:
    """A variable whose name comes from configuration (e.g. `alerts.webhook_url_env`): read
    here like every other, stripped, '' when unset."""
    return _env(name, "")


def _int_env(name: str, default: int) -> int:
    value = _env(name, str(default))
    try:
        out = int(value)
    except ValueError:
        raise ValueError(f"${name}={value!r} is not a whole number") from None
    if out < 0:
        raise ValueError(f"${name}={value!r} must not be negative")
    return out


def example_root(name: str) -> Path:
    """examples/<name>/, which must hold params.yaml, feature_repo/ and expectations/."""
    root = EXAMPLES / name
    needed = [root / "params.yaml", root / "feature_repo", root / "expectations"]
    if not name or "/" in name or not all(p.exists() for p in needed):
        known = sorted(p.name for p in EXAMPLES.iterdir() if (p / "params.yaml").exists()) \
            if EXAMPLES.is_dir() else []
        raise ValueError(f"$MLOPS_EXAMPLE={name!r}: no complete example configuration at {root} "
                         f"(params.yaml, feature_repo/, expectations/); examples: {known}")
    return root


def _bounded_int_env(name: str, default: int, low: int, high: int) -> int:
    out = _int_env(name, default)
    if not low <= out <= high:
        raise ValueError(f"${name}={out} must be between {low} and {high}")
    return out


def _float_env(name: str, default: float) -> float:
    value = _env(name, str(default))
    try:
        out = float(value)
    except ValueError:
        raise ValueError(f"${name}={value!r} is not a number") from None
    if not out > 0:
        raise ValueError(f"${name}={value!r} must be positive")
    return out


def get_settings() -> Settings:
    example = _env("MLOPS_EXAMPLE", "")
    root = example_root(example) if example else REPO_ROOT
    state = _env("MLOPS_STATE_URI", str(REPO_ROOT / ".state"))
    state = state.rstrip("/")
    data = _env("MLOPS_DATA_URI", f"{state}/data").rstrip("/")
    tracking = _env("MLFLOW_TRACKING_URI", f"sqlite:///{state}/mlflow/mlflow.db")
    # With a tracking server, artifacts go where the server puts them (its proxied
    # --artifacts-destination): workers then need no local disk nor store credentials for them.
    artifacts_default = "" if tracking.startswith(("http://", "https://")) else f"{state}/mlflow/artifacts"
    return Settings(
        state_uri=state,
        data_uri=data,
        reports_uri=_env("MLOPS_REPORTS_URI", f"{state}/reports").rstrip("/"),
        mlflow_tracking_uri=tracking,
        mlflow_artifacts_uri=_env("MLOPS_MLFLOW_ARTIFACTS_URI", artifacts_default),
        params_path=_env("MLOPS_PARAMS", str(root / "params.yaml")),
        feature_repo=_env("MLOPS_FEATURE_REPO", str(root / "feature_repo")),
        mlflow_timeout_s=_int_env("MLFLOW_HTTP_REQUEST_TIMEOUT", 10),
        mlflow_max_retries=_int_env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 2),
        mlflow_backoff_factor=_int_env("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 1),
        expectations_dir=_env("MLOPS_EXPECTATIONS_DIR", str(root / "expectations")),
        metrics_db=_env("MLOPS_METRICS_DB", ""),
        lock_url=_env("MLOPS_LOCK_URL", ""),
        alert_webhook_url=_env("MLOPS_ALERT_WEBHOOK_URL", ""),
        schedule_start=_env("MLOPS_SCHEDULE_START", ""),
        schedule_end=_env("MLOPS_SCHEDULE_END", ""),
        sensor_poke_seconds=_int_env("MLOPS_SENSOR_POKE_SECONDS", 60),
        s3_endpoint=_env("AWS_ENDPOINT_URL_S3", "") or _env("AWS_ENDPOINT_URL", ""),
        mlflow_ui_url=_env("MLFLOW_UI_URL", ""),
        example=example,
        feast_online_store=_env("FEAST_ONLINE_STORE", "").lower(),
        feast_redis_connection=_env("FEAST_REDIS_CONNECTION", ""),
        feast_registry_path=_env("FEAST_REGISTRY_PATH", ""),
        feast_online_path=_env("FEAST_ONLINE_PATH", ""),
        feast_state_dir=_env("FEAST_STATE_DIR", ""),
        feast_s3_endpoint=_env("FEAST_S3_ENDPOINT_URL", ""),
        serving_host=_env("MLOPS_SERVING_HOST", "127.0.0.1"),
        serving_port=_bounded_int_env("MLOPS_SERVING_PORT", 8090, 1, 65535),
        serving_workers=_bounded_int_env("MLOPS_SERVING_WORKERS", 1, 1, 64),
        serving_token_file=_env("MLOPS_SERVING_TOKEN_FILE", ""),
        serving_log_flush_seconds=_float_env("MLOPS_SERVING_LOG_FLUSH_SECONDS", 5.0),
        serving_metrics_dir=_env("PROMETHEUS_MULTIPROC_DIR", ""),
        executor_preload=tuple(m.strip() for m in os.environ.get(
            "MLOPS_EXECUTOR_PRELOAD", PRELOAD).split(",") if m.strip()),
        validation_workers=_bounded_int_env("MLOPS_VALIDATION_WORKERS", 2, 1, 64),
    )
