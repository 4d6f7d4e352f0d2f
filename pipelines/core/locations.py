"""Every storage layout of the project, in one place: where each stage reads and writes.

All functions return URIs (local paths, `file://`, `s3://`) under the roots `Settings` holds,
so a rename or a new layout breaks loudly here and nowhere else. Nothing here reads or writes.

Partitions are named by data interval (`pipelines.core.intervals`): `date=D` for a daily one
(D its local date), `week=D` (its Monday), `hour=YYYY-MM-DDTHHZ`; below, `date=D` stands for any.

    landing/<table>/date=D/<table>.csv            a raw batch (snapshot/ for reference tables)
    quarantine/<table>/date=D/<stamp>/            a batch that failed validation, with its report
    features/<source>/date=D.parquet              a Feast source partition (snapshot.parquet)
    training_sets/<start>_<end>.parquet           a window's point-in-time training set
    predictions/date=D/{part-*.parquet,_manifest.json}   a published prediction partition
    predictions/date=D/contrib-*.parquet          its per-row top contributions (optional)
    predictions/_staging/date=D/                  chunk inputs of a scoring run in progress
    prediction_log/date=D/<stamp>-<host>-<pid>-<seq>.parquet   online predictions, by event day
    registry/history/<stamp>-<action>-v<N>.json   the promotion history (one event per file)
    registry/routing.json                         the live routing the servers follow
    registry/drift/{verdicts,quality,decisions,triggers}/D.json   monitoring state
    registry/drift/reference/<model>/v<N>/        a version's scored drift reference
    reports/validation/<name>/<partition>.{json,md}, reports/data_docs/<name>/<partition>/
    reports/gates/<model>-v<N>.{json,md}          a version's gate report
    reports/cards/<model>-v<N>/model_card.md      a version's model card, its training set's
        datasheet.{json,md}, shap_importance.{json,png}   datasheet and its SHAP summary
    reports/drift/date=D/{evidently.html,history.png}
"""

from __future__ import annotations

from datetime import date

from pipelines.core.intervals import Interval
from pipelines.core.settings import Settings
from pipelines.core.storage import join

When = Interval | date  # an interval; a bare date is the daily UTC interval of that date

MANIFEST = "_manifest.json"
STAGING = "_staging"


def partition(day: When | None) -> str:
    """The partition folder name of an interval (`date=YYYY-MM-DD`, `week=...`, `hour=...`; a
    date: `date=YYYY-MM-DD`), or `snapshot` for none."""
    if isinstance(day, Interval):
        return day.label
    return f"date={day.isoformat()}" if day else "snapshot"


def key(day: When) -> str:
    """What records and reports call an interval (`2013-06-01`, `2024-11-03T06Z`)."""
    return day.key if isinstance(day, Interval) else day.isoformat()


# -- data --------------------------------------------------------------------------------------

def batch(landing_uri: str, table: str, day: When | None) -> str:
    """A raw batch file in a landing zone (a reference table has one `snapshot`)."""
    return join(landing_uri, table, partition(day), f"{table}.csv")


def quarantine(settings: Settings, table: str, batch_partition: str, stamp: str) -> str:
    """Where a failed batch goes: every quarantine of the same batch is kept, by time."""
    return join(settings.quarantine_uri, table, batch_partition, stamp)


def validation_report(settings: Settings, name: str, part: str) -> str:
    """The JSON report of a validation (`.md` beside it) of table or output `name`."""
    return join(settings.reports_uri, "validation", name, f"{part}.json")


def data_docs(settings: Settings, name: str, part: str) -> str:
    return join(settings.reports_uri, "data_docs", name, part)


# -- features ----------------------------------------------------------------------------------

def feature_source(settings: Settings, name: str, day: When | None) -> str:
    leaf = f"{partition(day)}.parquet"
    return join(settings.features_uri, name, leaf)


def feast_registry(settings: Settings) -> str:
    return join(settings.data_uri, "feast", "registry.db")


# -- model -------------------------------------------------------------------------------------

def training_set(settings: Settings, start: str, end: str) -> str:
    return join(settings.training_sets_uri, f"{start}_{end}.parquet")


def gate_report(settings: Settings, model: str, version: str) -> str:
    """A version's gate report (JSON; the Markdown rendering has the same name, `.md`)."""
    return join(settings.reports_uri, "gates", f"{model}-v{version}.json")


def card_folder(settings: Settings, model: str, version: str) -> str:
    """A version's card folder, a copy of its MLflow run's `card/`: `model_card.md`, the
    datasheet of its training set (`datasheet.{json,md}`) and its SHAP summary
    (`shap_importance.{json,png}`), so the card's relative links work in both places."""
    return join(settings.reports_uri, "cards", f"{model}-v{version}")


def model_card(settings: Settings, model: str, version: str) -> str:
    """A version's model card (Markdown with YAML front matter)."""
    return join(card_folder(settings, model, version), "model_card.md")


def history(settings: Settings) -> str:
    """The promotion history folder (one JSON document per event)."""
    return join(settings.registry_uri, "history")


# -- scoring -----------------------------------------------------------------------------------

def predictions(settings: Settings, day: When) -> str:
    """A prediction partition folder."""
    return join(settings.predictions_uri, partition(day))


def contributions_name(chunk: int, sha256: str) -> str:
    """The per-row top contributions of a chunk (`scoring.explain_top_k`): a file in its
    prediction partition, named by content like a part file and published by the manifest."""
    return f"contrib-{chunk:05d}-{sha256[:16]}.parquet"


def manifest(settings: Settings, day: When) -> str:
    """A partition's manifest: the commit point, written last."""
    return join(predictions(settings, day), MANIFEST)


def staging(settings: Settings, day: When) -> str:
    """Chunk inputs of a scoring run in progress (never read as predictions)."""
    return join(settings.predictions_uri, STAGING, partition(day))


# -- serving -----------------------------------------------------------------------------------

def prediction_log_root(settings: Settings) -> str:
    """The folder of every day's prediction log."""
    return join(settings.data_uri, "prediction_log")


def prediction_log(settings: Settings, day: date) -> str:
    """The online server's predictions of events of `day` (UTC): append-only part files, one
    per worker flush, each written atomically (no manifest: every complete part is read)."""
    return join(prediction_log_root(settings), partition(day))


def routing(settings: Settings) -> str:
    """The live routing document (weights and mirror) every server worker follows."""
    return join(settings.registry_uri, "routing.json")


# -- monitoring --------------------------------------------------------------------------------

def monitoring_state(settings: Settings) -> str:
    """Verdicts, quality checks, decisions, triggers and drift references."""
    return join(settings.registry_uri, "drift")


def monitoring_records(settings: Settings, kind: str) -> str:
    """The folder of every interval's record of `kind` (verdicts, quality, decisions, triggers)."""
    return join(monitoring_state(settings), kind)


def monitoring_record(settings: Settings, kind: str, day: When | str) -> str:
    """One interval's record of `kind` (verdicts, quality, decisions, triggers), named by its
    key (`registry/drift/verdicts/2013-06-01.json`)."""
    name = day if isinstance(day, str) else key(day)
    return join(monitoring_records(settings, kind), f"{name}.json")


def drift_reference(settings: Settings, model: str, version: str) -> str:
    return join(monitoring_state(settings), "reference", model, f"v{version}")


def drift_report(settings: Settings, day: When, name: str) -> str:
    """A drift run's report file (`evidently.html`, `history.png`)."""
    return join(settings.reports_uri, "drift", partition(day), name)
