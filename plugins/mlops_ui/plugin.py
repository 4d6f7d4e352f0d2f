"""The AirflowPlugin: the model page app, its entry in the UI menu, and the extra links."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from mlops_ui import links, urls


class LazyApp:
    """An ASGI app that builds the real one (`mlops_ui.app`) on its first request.

    Every Airflow process imports plugins; only the API server serves requests, so FastAPI
    routes and Airflow's API security module are imported there and nowhere else.
    """

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self._app is None:
            from mlops_ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class MlopsUiPlugin(AirflowPlugin):
    name = "mlops_ui"
    # AirflowPlugin declares these as class-level lists; Airflow reads them from the class.
    fastapi_apps = [  # noqa: RUF012
        {"app": LazyApp(), "url_prefix": urls.MOUNT, "name": "MLOps model page"}]
    # Shown inside the Airflow UI (an iframe at /plugin/mlops-model) as a top-level menu entry.
    external_views = [  # noqa: RUF012
        {"name": "Model", "href": f"{urls.root()}/", "url_route": "mlops-model",
         "destination": "nav", "nav_top_level": True}]
    global_operator_extra_links = links.global_links()
