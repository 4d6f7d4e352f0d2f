"""Models: training windows and sets, training with lineage, ONNX export, gates, the
registry by aliases, and promotion."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> submodule: importing the package stays cheap (DAG files import it at parse time);
# a name's module is imported on first use.
_EXPORTS = {
    "training_window": "windows",
    "validate_window": "windows",
    "build_window_features": "windows",
    "build_training_set": "training_set",
    "train_and_register": "training",
    "evaluate_challenger": "evaluation",
    "decide": "promotion",
    "record_decision": "promotion",
    "promote_approved": "promotion",
    "promote": "registry",
    "rollback": "registry",
    "resolve_champion": "registry",
    "RegistryError": "registry",
    "RegistryNotFound": "registry",
    "RegistryUnavailable": "registry",
}
__all__ = sorted(_EXPORTS)



def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
