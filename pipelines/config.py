"""`params.yaml` loaded into a frozen, typed config object (no side effects on import)."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_duration(text: str) -> timedelta:
    """'2h', '30m', '1d', '90s' -> timedelta (explicit units only)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", str(text))
    if not match:
        raise ValueError(f"duration {text!r} must look like '2h', '30m', '1d' or '90s'")
    value, unit = float(match.group(1)), match.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: value})


class SourceConfig(_Frozen):
    uri: str
    timestamp: str | None = None


class PassthroughFeatures(_Frozen):
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()


class DerivedColumn(_Frozen):
    concat: tuple[str, ...]
    sep: str = "-"


class EventsConfig(_Frozen):
    table: str
    key: tuple[str, ...]
    timestamp: str
    prediction_lead: timedelta
    derived: dict[str, DerivedColumn] = Field(default_factory=dict)
    passthrough_features: PassthroughFeatures = PassthroughFeatures()

    @field_validator("prediction_lead", mode="before")
    @classmethod
    def _lead(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v


class LabelConfig(_Frozen):
    name: str
    expr: str
    requires: tuple[str, ...] = ()
    available_after: timedelta

    @field_validator("available_after", mode="before")
    @classmethod
    def _after(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v


class AggregateConfig(_Frozen):
    keys: tuple[str, ...]
    window_days: int = Field(gt=0)


class DatasetConfig(_Frozen):
    name: str
    sources: dict[str, SourceConfig]
    events: EventsConfig
    label: LabelConfig
    aggregates: dict[str, AggregateConfig] = Field(default_factory=dict)

    @property
    def daily_tables(self) -> list[str]:
        return [name for name, src in self.sources.items() if src.timestamp]


class IngestConfig(_Frozen):
    start: str
    end: str


class FeaturesConfig(_Frozen):
    repo: str
    service: str
    join_keys: tuple[str, ...]
    source_lookback_days: int = 4


class EstimatorConfig(_Frozen):
    class_: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)


class Window(_Frozen):
    start: str
    end: str


class TrainingConfig(_Frozen):
    initial_window: Window
    window_days: int
    eval_fraction: float = Field(gt=0, lt=1)
    random_state: int = 0
    max_rows: int = 200_000
    estimator: EstimatorConfig


class RegistryConfig(_Frozen):
    model_name: str
    onnx_parity_tolerance: float = 1e-5


class CompareGate(_Frozen):
    metric: str = "roc_auc"
    margin: float = 0.0
    confidence: float = 0.95
    n_bootstrap: int = 300
    seed: int = 0


class GatesConfig(_Frozen):
    floors: dict[str, float] = Field(default_factory=dict)
    compare: CompareGate = CompareGate()


class ScoringConfig(_Frozen):
    chunk_rows: int = 50_000
    missing_features: Literal["impute", "reject"] = "impute"


class DriftConfig(_Frozen):
    method: str = "evidently+psi"
    window_days: int = 7
    psi_threshold: float = 0.2
    drift_share: float = 0.3
    prediction_psi_threshold: float = 0.2
    sample_rows: int = 50_000
    seed: int = 0
    consecutive: int = 1
    cooldown_days: int = 7


class ValidationConfig(_Frozen):
    max_file_mb: float = 200


class OrchestrationConfig(_Frozen):
    start_date: str
    end_date: str | None = None
    materialization_lateness_days: int = 2
    owner: str = "mlops"
    retries: int = 1


class Config(_Frozen):
    dataset: DatasetConfig
    ingest: IngestConfig
    features: FeaturesConfig
    training: TrainingConfig
    registry: RegistryConfig
    gates: GatesConfig = GatesConfig()
    scoring: ScoringConfig = ScoringConfig()
    drift: DriftConfig = DriftConfig()
    validation: ValidationConfig = ValidationConfig()
    orchestration: OrchestrationConfig


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate `params.yaml` (default: settings' MLOPS_PARAMS)."""
    if path is None:
        from pipelines.settings import get_settings

        path = get_settings().params_path
    text = Path(path).read_text(encoding="utf-8")
    return Config.model_validate(yaml.safe_load(text))


def params_hash(path: str | Path | None = None) -> str:
    if path is None:
        from pipelines.settings import get_settings

        path = get_settings().params_path
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
