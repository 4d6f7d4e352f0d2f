"""`params.yaml` loaded into a frozen, typed config object (no side effects on import)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.core.dataset_config import (  # noqa: F401 - re-exported: config's public names
    AggregateConfig,
    DatasetConfig,
    DstPolicy,
    DuplicatesPolicy,
    EventsConfig,
    LabelConfig,
    PassthroughFeatures,
    SourceConfig,
    parse_duration,
)
from pipelines.core.specs import RequestFeature, check_request_names

if TYPE_CHECKING:
    from pipelines.core.intervals import Grain


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestConfig(_Frozen):
    start: str
    end: str


class FeaturesConfig(_Frozen):
    repo: str
    service: str
    join_keys: tuple[str, ...]
    # Features computed at request time from the entity row (`<name>__<field>` columns), by
    # pipelines.features.request, the same code offline, in batch scoring and online.
    request_time: dict[str, RequestFeature] = Field(default_factory=dict)
    source_lookback_days: int = 4
    retrieval: Literal["duckdb", "feast"] = "duckdb"  # point-in-time join engine
    created_timestamp_cutoff: bool = True  # rows see only feature values created by their time
    skew_sample_entities: int = Field(200, gt=0)  # per feature view, online vs offline
    skew_seed: int = 0

    @field_validator("request_time")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_request_names(v)

    @property
    def request_inputs(self) -> tuple[str, ...]:
        """The request columns the request-time features read (the entity rows carry them)."""
        return tuple(dict.fromkeys(c for f in self.request_time.values() for c in f.inputs))


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
    # auto: a model that passes its gates becomes champion; manual: a person approves each
    # promotion first (the training DAG's `approve` task). The trigger form can override it.
    approval: Literal["auto", "manual"] = "auto"


class CompareGate(_Frozen):
    metric: str = "roc_auc"
    margin: float = 0.0
    confidence: float = 0.95
    n_bootstrap: int = 300
    seed: int = 0


class SliceGate(_Frozen):
    columns: tuple[str, ...] = ()
    metric: str = "roc_auc"
    min_size: int = 300
    max_drop: float = 0.03


class Budgets(_Frozen):
    max_model_mb: float = 50
    max_single_row_p99_ms: float = 50
    min_batch_rows_per_s: float = 10_000


class BehaviourCheck(_Frozen):
    name: str
    kind: Literal["invariance", "directional"]
    column: str
    add: float | None = None
    set: float | str | None = None
    expect: Literal["increase", "decrease"] | None = None
    tolerance: float = 0.001


GroupRate = Literal["false_negative_rate", "false_positive_rate", "selection_rate",
                    "true_positive_rate"]


class FairnessGate(_Frozen):
    """Fairness by group: per group column, the largest gap of a rate between the groups with at
    least `min_size` rows must not exceed `max_gap`. No columns (the default): no gate."""
    columns: tuple[str, ...] = ()  # columns of the evaluation set, or event_month/_weekday/_hour
    metric: GroupRate = "false_negative_rate"  # of the labels `probability >= threshold`
    threshold: float = Field(0.5, gt=0, lt=1)
    max_gap: float = Field(0.1, ge=0, le=1)
    min_size: int = Field(300, gt=0)  # smaller groups are reported, not gated
    n_bootstrap: int = Field(100, ge=0)  # fairlearn MetricFrame's bootstrap (0: no intervals)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0

    @field_validator("columns")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v) or any(not c for c in v):
            raise ValueError(f"gates.fairness.columns: distinct, non-empty column names, got "
                             f"{list(v)}")
        return v


class GatesConfig(_Frozen):
    floors: dict[str, float] = Field(default_factory=dict)
    compare: CompareGate = CompareGate()
    slices: SliceGate = SliceGate()
    budgets: Budgets = Budgets()
    behaviour: tuple[BehaviourCheck, ...] = ()
    fairness: FairnessGate = FairnessGate()


class CardConfig(_Frozen):
    """What the model card says that no measurement can: the model's purpose and its limits."""
    intended_use: str = "not stated (governance.card.intended_use in params.yaml)"
    out_of_scope_use: tuple[str, ...] = ()
    license: str = "other"  # the Hugging Face card's `license` field
    language: str | None = None
    # resamples of the bootstrap intervals of the card's metrics, overall and per slice (in the
    # gate report; gates.compare's confidence and seed)
    n_bootstrap: int = Field(100, gt=0)


class ExplainConfig(_Frozen):
    """SHAP global importance of the fitted estimator (TreeExplainer) in the training run."""
    enabled: bool = True
    sample_rows: int = Field(500, gt=0)  # rows of the evaluation set explained
    seed: int = 0
    top: int = Field(20, gt=0)  # features shown in the card's plot and table


class GovernanceConfig(_Frozen):
    """The model card and datasheet logged for every registered version."""
    card: CardConfig = CardConfig()
    explain: ExplainConfig = ExplainConfig()


class ScoringConfig(_Frozen):
    chunk_rows: int = Field(50_000, gt=0)  # rows per mapped score task
    batch_rows: int = Field(10_000, gt=0)  # rows per onnxruntime call inside a chunk
    missing_features: Literal["impute", "reject"] = "impute"
    backfill_model: Literal["current", "champion_at_interval"] = "current"
    # per-row top contributions (TreeSHAP over the ONNX trees) beside each partition; 0: off
    explain_top_k: int = Field(0, ge=0)


class ServingLogConfig(_Frozen):
    batch_rows: int = Field(1000, gt=0)  # a worker writes a log part once this many rows wait


class StickyKey(_Frozen):
    """What keeps a caller on one variant: a request header or a request input (the first
    row's value); a request without it is split at random (by its request id)."""
    header: str | None = None
    input: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "StickyKey":
        if (self.header is None) == (self.input is None):
            raise ValueError("serving.routing.sticky: give exactly one of header or input")
        return self


class MirrorConfig(_Frozen):
    """A shadow: this share of requests is also scored by `alias`, after the response."""
    alias: str
    percent: float = Field(0.0, ge=0, le=100)


class RoutingConfig(_Frozen):
    """How requests on the unversioned path are shared between followed aliases (shape after
    Seldon's experiments). The live routing document (`core.locations.routing`, written by
    the rollout and rollback DAGs) overrides it; without either: the first alias only."""
    candidates: dict[str, float] | None = None  # alias -> weight; None: the first alias only
    mirror: MirrorConfig | None = None
    sticky: StickyKey = StickyKey(header="x-routing-key")

    @field_validator("candidates")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and (not v or any(w < 0 for w in v.values())
                              or sum(v.values()) <= 0):
            raise ValueError("serving.routing.candidates: alias -> weight, weights >= 0 with a "
                             "positive sum")
        return v


class ShadowConfig(_Frozen):
    """Shadow (mirror) scoring: off the request path, in a bounded queue per worker."""
    queue: int = Field(64, gt=0)  # requests waiting for their shadow; more: dropped, counted
    timeout_seconds: float = Field(2.0, gt=0)  # a shadow taking longer is given up on
    threshold: float = Field(0.5, gt=0, lt=1)  # the label a probability means (disagreement)


class ServingConfig(_Frozen):
    """The online model server (pipelines.serving); where it listens is in the environment."""
    # the registry aliases the server follows; the first is what /v2/models/<name>/infer
    # serves, every one is addressable as /v2/models/<name>/versions/<alias>/infer. The first
    # is required (ready once loaded); the others are optional: not held by the registry is
    # not a failure (the challenger between rollouts), followed once it is set
    aliases: tuple[str, ...] = ("champion", "challenger")
    poll_seconds: float = Field(2.0, gt=0, le=60)  # how often each worker asks the registry
    max_rows: int = Field(1000, gt=0)  # rows per request (more: 413)
    max_body_mb: float = Field(8.0, gt=0)  # request body (more: 413)
    # requests that arrived while a worker was busy are prepared and scored in one pass, up
    # to this many (1: one by one); each still gets exactly its own answer
    max_batch_requests: int = Field(32, gt=0)
    # a row for which a feature view of the model has no online value (an entity the store
    # does not know, a missing join key, or a value expired by the view's TTL):
    # impute = scored like batch scoring scores it (scoring.missing_features decides);
    # reject = the request fails with 422 naming the row, the view and the join key
    unknown_entities: Literal["impute", "reject"] = "impute"
    log: ServingLogConfig = ServingLogConfig()
    routing: RoutingConfig = RoutingConfig()
    shadow: ShadowConfig = ShadowConfig()

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError("serving.aliases: give one or more distinct aliases")
        return v

    @model_validator(mode="after")
    def _routed_aliases_followed(self) -> "ServingConfig":
        routed = set(self.routing.candidates or ()) | ({self.routing.mirror.alias}
                                                 if self.routing.mirror else set())
        unknown = sorted(routed - set(self.aliases))
        if unknown:
            raise ValueError(f"serving.routing names {unknown}, which serving.aliases "
                             f"{list(self.aliases)} does not follow")
        return self


class RolloutSLO(_Frozen):
    """What a rollout step must show, per variant, to go on (a breach rolls back)."""
    min_requests: int = Field(50, gt=0)  # requests a variant needs in a step to be judged
    max_error_rate: float = Field(0.01, ge=0, le=1)  # failed / all requests
    max_p99_latency_ms: float = Field(250.0, gt=0)  # request arrival to response built
    max_mean_abs_diff: float = Field(0.15, gt=0, le=1)  # shadow |dp| mean over its rows
    max_label_disagreement: float = Field(0.1, ge=0, le=1)  # shadow rows with another label
    # live quality, once labels arrive: a breach when the challenger's Brier exceeds the
    # champion's by more than this, significantly (the lower bound of the A/B interval)
    max_brier_increase: float = Field(0.01, ge=0)


class ABConfig(_Frozen):
    """A/B mode: a fixed split measured until the difference is significant or the budget ends."""
    weight: float = Field(50.0, gt=0, lt=100)  # the challenger's share, percent
    alpha: float = Field(0.05, gt=0, lt=0.5)  # false-positive rate over all looks (Bonferroni)
    max_looks: int = Field(5, gt=0)  # looks (steps) the budget allows


class RolloutConfig(_Frozen):
    """Progressive delivery of the challenger (the `rollout` DAG; form values override)."""
    # the routing steps: "shadow" (mirror 100%, served 0%) or the challenger's served percent
    steps: tuple[str | float, ...] = ("shadow", 5.0, 25.0, 50.0, 100.0)
    hold_seconds: float = Field(600.0, gt=0)  # how long each step runs before it is judged
    slo: RolloutSLO = RolloutSLO()
    ab: ABConfig = ABConfig()

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: tuple[str | float, ...]) -> tuple[str | float, ...]:
        for s in v:
            if s != "shadow" and not (isinstance(s, (int, float)) and 0 < float(s) <= 100):
                raise ValueError(f"rollout.steps: 'shadow' or a percent in (0, 100], got {s!r}")
        return v


class FeatureRule(_Frozen):
    """Override for the features whose name matches a glob pattern (unset fields: the default)."""
    psi_threshold: float | None = Field(None, gt=0)
    weight: float | None = Field(None, ge=0)


class DriftConfig(_Frozen):
    method: str = "evidently+psi"
    window_days: int = Field(7, gt=0)
    # Below either minimum the check says "insufficient data", never drift: PSI of a few rows,
    # or of fewer days than the thresholds were measured on, is noise (params.yaml has numbers).
    min_rows: int = Field(500, gt=0)  # rows in the window (and in the reference)
    min_days: int | None = Field(None, gt=0)  # scored days in the window; None: window_days
    psi_threshold: float = Field(0.2, gt=0)  # default per-feature threshold
    weight: float = Field(1.0, ge=0)  # default per-feature weight
    # glob pattern on the feature name -> override; the first matching pattern wins
    features: dict[str, FeatureRule] = Field(default_factory=dict)
    drift_share: float = Field(0.3, gt=0, le=1)  # weighted share of drifted features
    prediction_psi_threshold: float = Field(0.2, gt=0)
    sample_rows: int = Field(50_000, gt=0)
    seed: int = 0
    consecutive: int = Field(3, ge=1)  # hysteresis: signalled intervals in a row to retrain
    cooldown_days: int = Field(7, ge=0)

    @model_validator(mode="after")
    def _days(self) -> DriftConfig:
        if self.min_days is not None and self.min_days > self.window_days:
            raise ValueError(f"drift.min_days {self.min_days} > window_days {self.window_days}: "
                             "no window could ever be judged")
        return self

    @property
    def required_days(self) -> int:
        """Scored days a window needs for a drift verdict."""
        return self.window_days if self.min_days is None else self.min_days

    def rule(self, feature: str) -> tuple[float, float]:
        """(PSI threshold, weight) of a feature: the first matching override, else the default."""
        from fnmatch import fnmatchcase

        for pattern, rule in self.features.items():
            if fnmatchcase(feature, pattern):
                return (rule.psi_threshold if rule.psi_threshold is not None else self.psi_threshold,
                        rule.weight if rule.weight is not None else self.weight)
        return self.psi_threshold, self.weight


class QualityConfig(_Frozen):
    """Live quality once outcomes are known, pooled over a trailing window of labelled days."""
    window_days: int = Field(7, gt=0)
    # A run judges the predictions of the interval that ended this many days before its own
    # end, with the outcomes known by then. None: the label delay (dataset.label
    # .available_after); required with per-row outcome times (dataset.label.available_at).
    wait_days: int | None = Field(None, ge=0)
    min_labels: int = Field(500, gt=0)  # fewer labelled rows: no quality verdict
    # decay: baseline (the model's evaluation metrics) - live > max_drop, live - baseline > max_rise
    max_drop: dict[str, float] = Field(default_factory=lambda: {"roc_auc": 0.05})
    max_rise: dict[str, float] = Field(default_factory=lambda: {"calibration_error": 0.05})


class MonitoringConfig(_Frozen):
    plot_days: int = Field(30, gt=0)  # the history plot covers this many days
    # What drift and live quality read: batch scoring's published partitions, or the online
    # server's prediction log (the champion's answers to requests of the interval's events).
    predictions: Literal["batch", "online"] = "batch"
    quality: QualityConfig = QualityConfig()


class AlertsConfig(_Frozen):
    channel: Literal["log", "webhook"] = "log"
    webhook_url_env: str = "MLOPS_ALERT_WEBHOOK_URL"  # checked first
    webhook_conn_id: str = "mlops_alerts"  # then this Airflow connection
    timeout_seconds: float = Field(5.0, gt=0)


class ValidationConfig(_Frozen):
    max_file_mb: float = 200


class OrchestrationConfig(_Frozen):
    start_date: str
    end_date: str | None = None
    # The data interval of every scheduled run, batch and partition (pipelines.core.intervals):
    # hourly | daily | weekly, cut in this IANA time zone (daylight saving time applied).
    interval: Literal["hourly", "daily", "weekly"] = "daily"
    timezone: str = "UTC"
    materialization_lateness_days: int = 2
    owner: str = "mlops"
    retries: int = 1
    retry_delay_s: int = 30  # a failed task's next try starts after this

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from pipelines.core.intervals import zone

        zone(v)
        return v

    @property
    def grain(self) -> "Grain":
        from pipelines.core.intervals import grain

        return grain(self.interval, self.timezone)


class Config(_Frozen):
    dataset: DatasetConfig
    ingest: IngestConfig
    features: FeaturesConfig
    training: TrainingConfig
    registry: RegistryConfig
    gates: GatesConfig = GatesConfig()
    governance: GovernanceConfig = GovernanceConfig()
    scoring: ScoringConfig = ScoringConfig()
    serving: ServingConfig = ServingConfig()
    rollout: RolloutConfig = RolloutConfig()
    drift: DriftConfig = DriftConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    alerts: AlertsConfig = AlertsConfig()
    validation: ValidationConfig = ValidationConfig()
    orchestration: OrchestrationConfig

    @property
    def grain(self) -> "Grain":
        """How time is cut into intervals (orchestration.interval, orchestration.timezone)."""
        return self.orchestration.grain

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        grain = self.orchestration.grain
        step = grain.length / timedelta(days=1)
        for key, days in (("drift.window_days", self.drift.window_days),
                          ("drift.min_days", self.drift.min_days),
                          ("monitoring.quality.window_days", self.monitoring.quality.window_days)):
            if days is not None and round(days / step, 9) % 1:
                raise ValueError(f"{key} {days} is not a whole number of "
                                 f"{self.orchestration.interval} intervals ({step:g} days each)")
        if self.dataset.label.available_at and self.monitoring.quality.wait_days is None:
            raise ValueError("monitoring.quality.wait_days is required with dataset.label"
                             ".available_at: outcomes arrive row by row, so say how long after an "
                             "interval its outcomes are judged")
        return self


def read_yaml(text: str) -> Any:
    """YAML text as Python values, by libyaml where PyYAML has it (params.yaml: 2 ms against
    17 ms; every task and DAG parse reads it); a document libyaml refuses is parsed again by
    the pure-Python loader, whose error shows the offending line with a caret."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        if loader is yaml.SafeLoader:
            raise
        return yaml.safe_load(text)


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate `params.yaml` (default: settings' MLOPS_PARAMS). A source `uri` that
    is a relative local path is relative to the params file's folder."""
    if path is None:
        from pipelines.core.settings import get_settings

        path = get_settings().params_path
    text = Path(path).read_text(encoding="utf-8")
    raw = read_yaml(text)
    sources = ((raw or {}).get("dataset") or {}).get("sources") or {}
    for source in sources.values():
        uri = source.get("uri") if isinstance(source, dict) else None
        if isinstance(uri, str) and "://" not in uri and not Path(uri).is_absolute():
            source["uri"] = str((Path(path).resolve().parent / uri).resolve())
    return Config.model_validate(raw)


def params_hash(path: str | Path | None = None) -> str:
    if path is None:
        from pipelines.core.settings import get_settings

        path = get_settings().params_path
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
