"""What crosses a task or process boundary, by name: one light module (standard library only)
that DAG files, stages, the CLI and the UI plugin all import.

Each payload is a `TypedDict`: it is still a plain JSON-able dict on the wire (XCom, asset event
extras, the promotion history), but a renamed or missing key is a type error in one place
instead of a string convention repeated in DAGs, stages and the plugin.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

# -- orchestration: assets and pools linking the DAGs (URIs are names, not locations) ----------

CHAMPION_ASSET = "mlops://registry/champion"
PREDICTIONS_ASSET = "mlops://store/predictions"
RETRAIN_ASSET = "mlops://drift/retrain-request"
REGISTRY_POOL = "model_registry"


# -- data ----------------------------------------------------------------------------------------

class BatchValidation(TypedDict):
    """One validated batch or output (`pipelines.data.validation`)."""
    table: str
    batch_uri: str
    rows: int | None
    success: bool
    report_uri: str
    cached: bool
    expectations_report_uri: str | None
    data_docs_uri: str | None
    warnings: list[str]


class ValidatedRows(TypedDict):
    """What a validation task passes on: how many raw rows passed."""
    rows: int


class WindowValidation(TypedDict):
    """A training window's raw batches (`pipelines.model.windows.validate_window`)."""
    batches: int
    rows: int
    absent: list[str]


# -- model ---------------------------------------------------------------------------------------

class Window(TypedDict):
    """A training window [start, end) and why it runs (`pipelines.model.windows`)."""
    start: str
    end: str
    trigger: str  # "manual" or "drift on <date>"
    evidence: dict[str, Any] | None  # the drift decision's evidence, for a drift trigger


class TrainingSet(TypedDict):
    """A written, validated training set (`pipelines.model.training_set`)."""
    uri: str
    rows: int
    sha256: str
    start: str
    end: str
    feature_service: str
    feature_service_hash: str
    positive_rate: float
    request_features: str  # the request-time feature spec (JSON) the set was built with
    data_sha256: str  # the landing batches read (pipelines.data.versions)
    expectations_sha256: str  # the suites in use
    dvc_data_version: str  # dvc.lock's landing hash if DVC made the landing zone read


class Trained(TypedDict):
    """A trained, registered challenger (`pipelines.model.training.train_and_register`)."""
    run_id: str
    version: str
    onnx_sha256: str
    metrics: dict[str, float | None]
    parity: dict[str, Any]
    card_uri: str  # the version's model card (rewritten after its gates and decision)
    datasheet_uri: str  # the training set's datasheet (Markdown; `.json` beside it)


class GateVerdict(TypedDict):
    """The gates' verdict on a version (`pipelines.model.evaluation`); the whole report is at
    `report_uri`."""
    passed: bool
    failed: list[str]
    report_uri: str
    version: str
    champion_version: str | None


Decision = Literal["promote", "forced", "await_approval", "reject"]


class PromotionDecision(TypedDict):
    """What the promotion step decided for a gate verdict (`pipelines.model.promotion`)."""
    decision: Decision
    version: str
    champion_version: str | None
    passed: bool
    reason: str  # recorded in the promotion history
    needs_approval: bool
    report_uri: str


class HistoryEvent(TypedDict, total=False):
    """One event of the promotion history (`pipelines.model.registry.record`)."""
    at: str
    action: str  # register | promote | forced_promote | rollback | rejected | awaiting_approval
    # | approval_rejected | delete | noop
    model: str
    from_version: str | None
    to_version: str | None
    actor: str  # the run (Airflow run id, "cli")
    user: str | None  # the person who triggered or approved it, when known
    reason: str
    gate_report: str | None
    failed_gates: list[str]
    history_uri: str


# -- scoring -------------------------------------------------------------------------------------

class ModelPin(TypedDict):
    """The version a scoring run uses, pinned once per run (`pipelines.scoring.run`). Scoring
    re-reads the ONNX location and hash from the registry by `model` and `version`."""
    model: str
    version: str
    run_id: str
    onnx_sha256: str
    onnx_uri: str
    numeric: list[str]
    categorical: list[str]
    feature_service: str | None
    request_features: str  # the version's request-time feature spec (JSON)
    policy: str  # scoring.backfill_model
    choice: str  # why this version


class Chunk(TypedDict):
    """A staged chunk of an interval's entity rows: one mapped scoring task."""
    chunk: int
    uri: str
    rows: int
    sha256: str


class Part(TypedDict):
    """A scored chunk's part file, not yet published."""
    chunk: int
    file: str
    sha256: str
    input_rows: int
    rows: int
    model_version: str
    missing_features: dict[str, Any]
    seconds: float
    # the chunk's per-row top contributions (scoring.explain_top_k > 0), else None:
    # file, sha256, rows, top_k, space, base_value
    contributions: dict[str, Any] | None


class Published(TypedDict):
    """A published prediction partition (its manifest is the commit point)."""
    partition_uri: str
    rows: int
    model_version: str
    files: int


# -- serving: what the online server answers besides the V2 tensors -----------------------------

class ServedVersion(TypedDict):
    """The version one followed alias serves (`pipelines.serving.model`)."""
    alias: str
    version: str
    run_id: str
    onnx_sha256: str
    feature_service: str
    loaded_at: str


class LoadFailure(TypedDict):
    """The last failed attempt to follow an alias: the server keeps the version it had."""
    alias: str
    version: str | None  # None: the registry could not be asked, or the alias is gone
    at: str
    error: str


class ModelReady(TypedDict):
    """`GET /v2/models/<name>[/versions/<v>]/ready` (V2 health: open, no detail of errors)."""
    name: str
    ready: bool
    versions: dict[str, str | None]  # alias -> the version served (None: nothing loaded)
    stale: list[str]  # aliases whose last move could not be followed (see the metadata)
    absent: list[str]  # optional aliases the registry does not hold (nothing to serve)


class Mirror(TypedDict):
    alias: str
    percent: float  # share of requests also scored by `alias` after the response (shadow)


class RoutingState(TypedDict):
    """The live routing document the server follows (`pipelines.model.routing`), written by
    a rollout step or reset by a rollback; without it `serving.routing` applies."""
    candidates: dict[str, float]  # alias -> weight (share = weight / sum of weights)
    mirror: Mirror | None
    at: str
    actor: str  # the run that set it (Airflow run id, "cli")
    reason: str


# -- monitoring ----------------------------------------------------------------------------------

class DriftSummary(TypedDict):
    """A drift verdict, as the drift DAG passes it on (the full verdict is stored)."""
    date: str
    drift: bool
    status: str
    drift_share: float
    reason: str
    report_uri: str | None
    prediction_psi: float | None
    model_version: str


class QualitySummary(TypedDict):
    """A live-quality check, as the drift DAG passes it on."""
    date: str
    labelled_day: str
    decay: bool
    status: str
    reason: str


class RetrainDecision(TypedDict):
    """Whether a drift check requests a retraining (`pipelines.monitoring.decision`)."""
    date: str
    retrain: bool
    signal: bool
    streak: int
    reason: str


def pick(payload: dict[str, Any], contract: type) -> dict[str, Any]:
    """The keys of `contract` from a larger record (a stage's full result): what goes to XCom."""
    return {k: payload.get(k) for k in contract.__annotations__}
