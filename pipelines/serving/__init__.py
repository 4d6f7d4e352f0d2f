"""Online serving: the champion (and any configured alias) behind the Open Inference Protocol.

`python -m pipelines.serving` (`make serve`) starts uvicorn workers running `app.create_app`;
each follows the registry aliases, scores requests with the functions batch scoring runs and
logs every prediction as batch predictions are stored. Nothing else in `pipelines` imports
this package; it imports every stage below it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> submodule, imported on first use (prometheus_client must see the launcher's
# PROMETHEUS_MULTIPROC_DIR before anything imports it)
_EXPORTS = {"create_app": "app", "main": "__main__"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
