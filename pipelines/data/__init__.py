"""Raw data: ingest into the landing zone, events as model rows, and validation of raw
batches and derived outputs (Great Expectations)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> submodule: importing the package stays cheap (DAG files import it at parse time);
# a name's module is imported on first use.
_EXPORTS = {
    "ingest": "ingest",
    "load_events": "events",
    "prepare_events": "events",
    "validate_day": "checks",
    "validate_interval": "checks",
    "validate_snapshots": "checks",
    "validate_training_set": "checks",
    "validate_predictions": "checks",
    "DataValidationError": "validation",
    "draft_suite": "validation",
}
__all__ = sorted(_EXPORTS)



def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
