"""The HTTP server: the Open Inference Protocol (V2) routes of KServe and MLServer, thin handlers
over the data plane, a bearer token on everything but the health routes, and `/metrics`.

    GET  /v2/health/live                                   open: the process answers
    GET  /v2/health/ready                                  open: the first alias is loaded
    GET  /v2/models/<model>[/versions/<v>]/ready           open (V2 health): versions, stale and
                                                           absent aliases
    GET  /v2                                               server metadata
    GET  /v2/models                                        the model served
    GET  /v2/models/<model>[/versions/<v>]                 model metadata (+ what each alias
                                                           serves, load failures)
    POST /v2/models/<model>[/versions/<v>]/infer           inference (JSON or binary tensors)
    GET  /metrics                                          Prometheus, summed over workers

`<v>` is an alias (`champion`) or the version number an alias serves now; without it the live
routing (`model.routing`: weights per alias, a sticky key) picks the alias, by default the first
of `serving.aliases`; the `x-model-variant` header and `parameters.variant` name it. Errors
are `{"error": "..."}` with 400 (a bad request, naming the field), 401, 404, 405 (inference is
a POST), 413, 422 (rows the unknown-entity or missing-feature policy rejects), 503 (not loaded
yet) or 500; a versioned path of an optional alias the registry does not hold (no challenger)
is a 404 naming it.

`create_app` is the uvicorn factory each worker runs (`python -m pipelines.serving` starts
them); the OpenAPI pages are off: nothing but the V2 routes is served. Inference is answered in
plain ASGI (`InferRoute`), every other path by FastAPI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from pipelines.core.config import Config, load_config
from pipelines.core.settings import Settings, get_settings
from pipelines.serving import metrics
from pipelines.serving.auth import authorized, read_token
from pipelines.serving.dataplane import Answer, Call, DataPlane
from pipelines.serving.protocol import HEADER_LENGTH, RequestError

HEADER_BYTES = HEADER_LENGTH.lower().encode("latin-1")

log = logging.getLogger(__name__)
OPEN = ("/v2/health/live", "/v2/health/ready")


def _open(path: str) -> bool:
    return path in OPEN or (path.startswith("/v2/models/") and path.endswith("/ready"))


async def _body(receive: Receive, declared: str | None, limit: int) -> bytes | None:
    """The request body, refused (413) past `limit` bytes whatever Content-Length claims
    (`declared`); None if the client went away before sending it all."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes; at most {limit} "
                           f"(serving.max_body_mb)", status=413)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body over {limit} bytes (serving.max_body_mb)",
                               status=413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _error_body(text: str) -> bytes:
    """`{"error": text}` as JSON bytes (as Starlette's JSONResponse renders it)."""
    return json.dumps({"error": text}, ensure_ascii=False, separators=(",", ":")).encode()


def _error(exc: Exception) -> tuple[int, bytes]:
    """A failed request's status and body: a RequestError's status and message, anything else
    a 500 naming the exception (the plain-ASGI inference and FastAPI's handlers alike)."""
    if isinstance(exc, RequestError):
        return exc.status, _error_body(str(exc))
    return 500, _error_body(f"internal error: {type(exc).__name__}: {exc}")


class Coalescer:
    """One inference at a time per worker, in one thread (the event loop stays free for
    reading requests and health checks); the requests that arrive meanwhile wait, first come
    first served, and go to the data plane together (`DataPlane.infer_many`), up to
    `serving.max_batch_requests` at a time. Nothing waits for company: a request that finds
    the worker idle goes at once (Triton's dynamic batcher with no queue delay).

    Inference is CPU work under the GIL: several at once only interleave (at a fixed 100
    requests/s on 2 workers: p50 29.6 ms and, in one run of two, a backlog of seconds; one at
    a time, 13.8 and 12.3 ms). Together, a queue costs one pass's fixed cost, not one per
    request."""

    def __init__(self, plane: DataPlane, max_requests: int) -> None:
        self.plane, self.max_requests = plane, max_requests
        self._waiting: deque[tuple[Call, asyncio.Future[Answer]]] = deque()
        self._running: asyncio.Task[None] | None = None

    async def infer(self, call: Call) -> tuple[bytes, dict[str, str]]:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, future))
        if self._running is None:
            self._running = asyncio.create_task(self._run())
        answer = await future
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _take(self) -> list[tuple[Call, asyncio.Future[Answer]]]:
        """The waiting requests that go next, oldest first (callers that left are dropped)."""
        taken = []
        while self._waiting and len(taken) < self.max_requests:
            call, future = self._waiting.popleft()
            if not future.cancelled():
                taken.append((call, future))
        return taken

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch = self._take()
                if not batch:
                    continue
                try:
                    answers = await anyio.to_thread.run_sync(
                        self.plane.infer_many, [c for c, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
                    answers = [exc] * len(batch)
                for (_, future), answer in zip(batch, answers):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._running = None


class BearerToken:
    """The bearer token on every path but the health ones (plain ASGI: Starlette's
    `@app.middleware("http")` costs about a millisecond a request)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _open(scope["path"]):
            header = next((v.decode("latin-1") for k, v in scope["headers"]
                           if k == b"authorization"), None)
            if not authorized(header, self.token):
                await _answer(send, 401, _error_body("missing or wrong bearer token"),
                              {"content-type": "application/json", "www-authenticate": "Bearer"})
                return
        await self.app(scope, receive, send)


class InferRoute:
    """`POST /v2/models/<model>[/versions/<v>]/infer` in plain ASGI, in front of FastAPI's
    router, which serves every other path: its path matching, dependency solving and
    middleware layers cost about as much event-loop time as the rest of a 1-row request's
    HTTP handling (py-spy under 100 requests/s). Errors are the app's: `{"error": ...}` with
    the RequestError's status, or 500 logged with its traceback."""

    PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")

    def __init__(self, app: ASGIApp, plane: DataPlane, coalescer: Coalescer, limit: int,
                 sticky_header: str | None) -> None:
        self.app, self.plane, self.coalescer, self.limit = app, plane, coalescer, limit
        self.sticky = sticky_header.lower().encode("latin-1") if sticky_header else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _answer(send, 405, _error_body(
                f"{scope['method']} {scope['path']}: inference takes POST"),
                {"content-type": "application/json", "allow": "POST"})
            return
        started = time.perf_counter()
        model_name, model_version = found.groups()
        headers = dict(reversed(scope["headers"]))  # a repeated header: its first value
        try:
            served = self.plane.served(model_name, model_version)
            body = await _body(receive, _text(headers.get(b"content-length")), self.limit)
            if body is None:  # the caller left: nobody to answer
                return
            out, extra = await self.coalescer.infer(Call(
                served, model_version is None, body, _text(headers.get(HEADER_BYTES)),
                _text(headers.get(self.sticky)) if self.sticky else None, started))
            status = 200
        except Exception as exc:  # noqa: BLE001 - answered as the app's handlers answer
            if not isinstance(exc, RequestError):
                log.error("serving: POST %s failed", scope["path"], exc_info=exc)
            status, out = _error(exc)
            extra = {"content-type": "application/json"}
        await _answer(send, status, out, extra)


async def _answer(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-length", str(len(body)).encode()),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())]})
    await send({"type": "http.response.body", "body": body})


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def create_app(settings: Settings | None = None, cfg: Config | None = None) -> FastAPI:
    """The V2 server of `registry.model_name` (fails fast on a missing or unsafe token file)."""
    settings = settings or get_settings()
    cfg = cfg or load_config(settings.params_path)
    token = read_token(settings.token_path)
    plane = DataPlane(settings, cfg)
    limit = int(cfg.serving.max_body_mb * 1024 * 1024)
    coalescer = Coalescer(plane, cfg.serving.max_batch_requests)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(plane.start)
        try:
            yield
        finally:
            await run_in_threadpool(plane.stop)

    app = FastAPI(title="airflow-mlops serving", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)

    # added last, BearerToken runs first: no inference without the token
    app.add_middleware(InferRoute, plane=plane, coalescer=coalescer, limit=limit,
                       sticky_header=cfg.serving.routing.sticky.header)
    app.add_middleware(BearerToken, token=token)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> Response:
        status, body = _error(exc)
        return Response(body, status_code=status, media_type="application/json")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("serving: %s %s failed", request.method, request.url.path, exc_info=exc)
        status, body = _error(exc)
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = plane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, object]:
        return plane.server_metadata()

    @app.get("/v2/models")
    async def models() -> dict[str, list[str]]:
        return {"models": [plane.name]}

    @app.get("/v2/models/{model_name}/ready")
    @app.get("/v2/models/{model_name}/versions/{model_version}/ready")
    async def model_ready(model_name: str, model_version: str | None = None) -> JSONResponse:
        ok, body = plane.model_ready(model_name, model_version)
        return JSONResponse(dict(body), status_code=200 if ok else 503)

    @app.get("/v2/models/{model_name}")
    @app.get("/v2/models/{model_name}/versions/{model_version}")
    async def model_metadata(model_name: str, model_version: str | None = None
                             ) -> dict[str, object]:
        return plane.model_metadata(model_name, model_version)

    @app.get("/metrics")
    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    return app
