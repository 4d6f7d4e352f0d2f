"""Entry point Airflow loads from the plugins folder (the mlops_ui package is in .airflowignore)."""

from mlops_ui.plugin import MlopsUiPlugin

__all__ = ["MlopsUiPlugin"]
