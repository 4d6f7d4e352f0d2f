"""The point-in-time training set of a window: labelled events whose outcome was known by the
window's end, with the feature service's values as of each prediction time.
"""

from __future__ import annotations

import io
import logging
from datetime import date, timedelta

import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.contracts import TrainingSet, Window
from pipelines.core.settings import Settings
from pipelines.data.events import LABEL_AT, load_events

log = logging.getLogger(__name__)


def build_training_set(cfg: Config, settings: Settings, start: date | str, end: date | str,
                       out_uri: str) -> TrainingSet:
    """Labelled rows of [start, end) whose outcome was known by `end` (each row's
    `label_available_at`), with PIT features. Bounds: local dates, or window bounds as
    `pipelines.model.windows` writes them."""
    from pipelines.core.specs import request_spec_json
    from pipelines.data.versions import lineage
    from pipelines.features.retrieval import historical_features
    from pipelines.features.store import feature_service_hash, get_store
    from pipelines.model.windows import window_intervals

    label, grain = cfg.dataset.label.name, cfg.grain
    lo, hi = grain.bound(start), grain.bound(end)
    start, end = grain.bound_text(lo), grain.bound_text(hi)
    events = load_events(cfg, settings.landing_uri, lo, hi)
    if events.empty:
        raise ValueError(f"no events in the landing zone for [{start}, {end})")
    cutoff = pd.Timestamp(hi)  # outcomes known after the window's end are not in it
    rows = events[events[label].notna() & (events[LABEL_AT] <= cutoff)]
    if len(rows) > cfg.training.max_rows:  # keep the most recent rows
        rows = rows.iloc[-cfg.training.max_rows:]
    store = get_store(settings)
    request_time = cfg.features.request_time
    df = historical_features(store, cfg.features.service, rows.reset_index(drop=True),
                             list(cfg.features.join_keys), request_time=request_time)
    # the batches it read: the window's, and those its rolling statistics reach back to
    reach = max([a.window_days for a in cfg.dataset.aggregates.values()] or [0])
    version = lineage(cfg, settings, window_intervals(cfg, {"start": start, "end": end},
                                                      timedelta(days=reach)))
    data = io.BytesIO()
    df.to_parquet(data, index=False)
    storage.write_bytes(out_uri, data.getvalue())
    info = {
        "uri": out_uri,
        "rows": int(len(df)),
        "sha256": storage_sha256(out_uri),
        "start": start,
        "end": end,
        "feature_service": cfg.features.service,
        "feature_service_hash": feature_service_hash(store, cfg.features.service, request_time),
        "request_features": request_spec_json(request_time),
        "positive_rate": float(df[label].mean()),
        "data_sha256": version["sha256"],
        "expectations_sha256": version["expectations_sha256"],
        "dvc_data_version": version["dvc"],
    }
    log.info("training set: %d rows [%s, %s) -> %s", len(df), start, end, out_uri)
    return info


def storage_sha256(uri: str) -> str:
    import hashlib

    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def build_validated_training_set(cfg: Config, settings: Settings, window: Window) -> TrainingSet:
    """The window's training set, written to its location and validated (the training-set
    suite) before anything trains on it: the one sequence the DAG and the CLI run."""
    from pipelines.data.checks import validate_training_set

    out = locations.training_set(settings, window["start"], window["end"])
    ts = build_training_set(cfg, settings, window["start"], window["end"], out)
    checked = validate_training_set(cfg, settings, ts)  # raises before anything trains on it
    log.info("training set: %d rows, positive rate %.3f, validated (%s)", ts["rows"],
             ts["positive_rate"], checked.get("data_docs_uri"))
    return ts
