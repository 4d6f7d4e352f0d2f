"""The plugin's FastAPI app, mounted in the Airflow API server under /mlops.

Every route depends on Airflow's own authentication: `requires_access_view(WEBSITE)` resolves the
user from the `_token` JWT cookie the UI sets at login (or a Bearer token) through the configured
auth manager, answers 401 without credentials and 403 for an invalid token or a user without
access to the UI. Report files are served read-only from the reports tree and the partition
manifests only (`files.resolve`), every one with a sandboxing Content-Security-Policy; a type
the browser should not show is sent as an attachment.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
from airflow.api_fastapi.core_api.security import requires_access_view
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from mlops_ui import data, files, live, page, trends
from pipelines.core.settings import get_settings


def _day(text: str | None, name: str) -> date | None:
    if text is None or text == "":
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise HTTPException(400, f"{name} must be an ISO date (YYYY-MM-DD)") from None


def summary(days: int, partition: date | None) -> dict[str, Any]:
    """Everything the model page shows, as one JSON-serialisable dict."""
    settings = get_settings()
    cfg = data.config(settings)
    name = cfg.registry.model_name
    parts = data.partitions(settings)
    chosen = partition.isoformat() if partition else (parts[0] if parts else None)
    models, registry_error = data.models_or_error(settings, name)
    return {"model": name, "models": models, "registry_error": registry_error,
            "cards": data.model_cards(settings, name, models) if models is not None else None,
            "history": data.promotion_history(settings, name),
            "trend": trends.trend(trends.source_for(settings), days),
            "live": live.live_serving(settings, cfg),
            "partitions": parts, "selected": chosen,
            "lineage": data.lineage(settings, date.fromisoformat(chosen)) if chosen else None}


def create_app() -> FastAPI:
    authorized = requires_access_view(AccessView.WEBSITE)
    app = FastAPI(title="MLOps model page", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(authorized)])
    app.state.auth_dependency = authorized  # tests override it to reach the routes without a DB

    def href(uri: str | None) -> str | None:
        return files.href(get_settings(), uri)

    @app.get("/", response_class=HTMLResponse)
    def model_page(days: int = Query(30, ge=1, le=366), partition: str | None = None) -> HTMLResponse:
        s = summary(days, _day(partition, "partition"))
        if partition and s["lineage"] is None:
            raise HTTPException(404, f"no published prediction partition for {partition}")
        html = page.model_page(model=s["model"], models=s["models"],
                               registry_error=s["registry_error"], history=s["history"],
                               trend=s["trend"], partitions=s["partitions"], lineage=s["lineage"],
                               selected=s["selected"], days=days, href=href, live=s["live"],
                               cards=s["cards"])
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/api/summary")
    def summary_json(days: int = Query(30, ge=1, le=366), partition: str | None = None) -> JSONResponse:
        s = summary(days, _day(partition, "partition"))
        if s["lineage"]:
            s["lineage"] = {k: v for k, v in s["lineage"].items() if k != "manifest"}
        return JSONResponse(s)

    @app.get("/validation", response_class=HTMLResponse)
    def validation(day: str | None = None, start: str | None = None, end: str | None = None) -> HTMLResponse:
        one, first, last = _day(day, "day"), _day(start, "start"), _day(end, "end")
        if one:
            days, title = [one], f"Validation of {one}"
        elif first and last and last > first and (last - first).days <= 366:
            days, title = data.days_between(first, last), f"Validation of {first} .. {last} (end exclusive)"
        else:
            raise HTTPException(400, "give day=YYYY-MM-DD, or start and end (at most a year apart)")
        rows = data.validation_reports(get_settings(), days)
        return HTMLResponse(page.validation_page(rows, title, href))

    @app.get("/files/{root}/{path:path}")
    def serve(root: str, path: str) -> FileResponse:
        try:
            served = files.resolve(get_settings(), root, path)
        except files.FileDenied as exc:
            raise HTTPException(403, f"not served: {exc}") from None
        except FileNotFoundError:
            raise HTTPException(404, "no such report") from None
        return FileResponse(served.path, media_type=served.content_type, headers=served.headers,
                            filename=served.path.name if served.attachment else None)

    return app

