"""Monitoring: drift and live-quality checks of scored intervals, the retraining decision,
the metrics history and alerts."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> submodule: importing the package stays cheap (DAG files import it at parse time);
# a name's module is imported on first use.
_EXPORTS = {
    "check_interval": "checks",
    "check_quality": "checks",
    "window_ready": "checks",
    "decide": "decision",
    "retrain_evidence": "decision",
    "plot": "decision",
}
__all__ = sorted(_EXPORTS)



def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
