"""Fault injection around the real server for the shadow tests: `create_app` is
`pipelines.serving.app.create_app` whose `ServedModel.predict`, for the `challenger` alias only,
first reads the file named by SHADOW_FAULT_FILE: `raise` -> it raises, `hang <s>` -> it sleeps
that long first, anything else (or no file) -> it predicts. Run by uvicorn in the serving tests
only."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def create_app() -> Any:
    from pipelines.serving import app, model

    real_predict = model.ServedModel.predict
    fault = Path(os.environ["SHADOW_FAULT_FILE"])

    def faulty_predict(self: Any, inputs: Any, batch_rows: int) -> Any:
        if self.alias == "challenger":
            what = fault.read_text().split() if fault.exists() else []
            if what[:1] == ["raise"]:
                raise RuntimeError("injected shadow failure")
            if what[:1] == ["hang"]:
                time.sleep(float(what[1]))
        return real_predict(self, inputs, batch_rows)

    model.ServedModel.predict = faulty_predict  # type: ignore[method-assign]
    return app.create_app()
