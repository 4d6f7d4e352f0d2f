"""Where things are shown: the MLflow UI, and this plugin's own pages under the API server."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote, urlencode

MOUNT = "/mlops"  # url_prefix of the plugin's FastAPI app in the Airflow API server
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


def mlflow_ui() -> str:
    """Base URL of the MLflow UI (`MLFLOW_UI_URL`; `make up` serves it on 127.0.0.1:5000)."""
    from pipelines.core.settings import get_settings

    return (get_settings().mlflow_ui_url or DEFAULT_MLFLOW_UI).rstrip("/")


def mlflow_run(run_id: str) -> str:
    return f"{mlflow_ui()}/#/runs/{quote(run_id, safe='')}"


def mlflow_version(model: str, version: str | int) -> str:
    return f"{mlflow_ui()}/#/models/{quote(model, safe='')}/versions/{quote(str(version), safe='')}"


@lru_cache(maxsize=1)
def root() -> str:
    """The plugin's path prefix, below Airflow's `[api] base_url` path if one is set."""
    try:
        from urllib.parse import urlsplit

        from airflow.configuration import conf

        base = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    except Exception:  # noqa: BLE001 - outside Airflow (unit tests): served at the root
        base = ""
    return f"{base}{MOUNT}"


def page(path: str = "/", **query: object) -> str:
    """A URL of this plugin's app, with the query parameters that are not None."""
    args = {k: str(v) for k, v in query.items() if v is not None}
    return f"{root()}{path}" + (f"?{urlencode(args)}" if args else "")
