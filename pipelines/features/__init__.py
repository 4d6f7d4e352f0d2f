"""Features: Feast source partitions, `feast apply`, point-in-time retrieval, request-time
features, materialisation of the online store, the serving path and its skew check."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> submodule: importing the package stays cheap (DAG files import it at parse time);
# a name's module is imported on first use.
_EXPORTS = {
    "get_store": "store",
    "apply_definitions": "store",
    "feature_service_hash": "store",
    "build_feature_sources": "sources",
    "build_sources_for_interval": "sources",
    "historical_features": "retrieval",
    "historical_features_table": "retrieval",
    "materialize": "online",
    "check_skew": "online",
    "serving_features": "serving",
}
__all__ = sorted(_EXPORTS)



def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
