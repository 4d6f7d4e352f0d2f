"""Nightly batch scoring: pin a model, plan an interval's chunks, score them with onnxruntime,
validate and publish the partition; read published predictions back."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> submodule: importing the package stays cheap (DAG files import it at parse time);
# a name's module is imported on first use.
_EXPORTS = {
    "resolve_model": "run",
    "plan_interval": "run",
    "score_chunk": "run",
    "score_interval": "run",
    "read_manifest": "io",
    "read_partition": "table",
    "read_contributions": "table",
    "read_log": "table",
    "read_log_interval": "table",
    "predictions_relation": "table",
    "create_predictions_view": "table",
}
__all__ = sorted(_EXPORTS)



def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
