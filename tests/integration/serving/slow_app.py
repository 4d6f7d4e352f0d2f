"""Fault injection around the real server: `create_app` is `pipelines.serving.app.create_app`
whose `ServedModel.predict` first sleeps as long as the request's `x-test-delay` header says
(seconds; none: no delay). The request has already taken its version when it sleeps, so a test
can move an alias while a request is in flight. Run by uvicorn in the serving tests only."""

from __future__ import annotations

import contextvars
import time
from typing import Any

DELAY: contextvars.ContextVar[float] = contextvars.ContextVar("delay", default=0.0)


def create_app() -> Any:
    from pipelines.serving import app, model

    real_predict = model.ServedModel.predict

    def slow_predict(self: Any, inputs: Any, batch_rows: int) -> Any:
        time.sleep(DELAY.get())
        return real_predict(self, inputs, batch_rows)

    model.ServedModel.predict = slow_predict  # type: ignore[method-assign]
    served = app.create_app()

    @served.middleware("http")
    async def delay(request: Any, call_next: Any) -> Any:
        DELAY.set(float(request.headers.get("x-test-delay", "0")))
        return await call_next(request)

    return served
