"""Events: load daily batches of the event table and turn them into model rows.

A model row carries a deterministic row key, the entity join keys, the passthrough features,
the prediction time (event time minus the configured lead) and, where the outcome is known,
the label. Nothing here names a column of a particular dataset: it all comes from config.
"""

from __future__ import annotations

import hashlib
from datetime import date

import numpy as np
import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.dates import date_range, parse_utc
from pipelines.core.expressions import apply_missing, derive
from pipelines.core.specs import DerivedColumn

ROW_KEY = "row_key"
PREDICTION_TIME = "event_timestamp"  # Feast's name for the as-of time of an entity row


def read_csv(uri: str) -> pd.DataFrame:
    fs, path = storage.resolve(uri)
    with fs.open(path, "rb") as fh:
        return pd.read_csv(fh)


def load_table(cfg: Config, landing_uri: str, table: str, start: date, end: date) -> pd.DataFrame:
    """Concatenate the daily batches of `table` for days in [start, end)."""
    frames = []
    for day in date_range(start, end):
        uri = locations.batch(landing_uri, table, day)
        if storage.exists(uri):
            frames.append(read_csv(uri))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def row_keys(df: pd.DataFrame, key: tuple[str, ...]) -> pd.Series:
    """Deterministic 16-hex-digit key from the key columns (stable across runs and machines)."""
    joined = df[list(key)].astype(str).agg("\x1f".join, axis=1)
    return joined.map(lambda s: hashlib.sha256(s.encode()).hexdigest()[:16])


def _model_rows(cfg: Config, raw: pd.DataFrame) -> pd.DataFrame:
    """A copy of the raw rows with the derived columns, event and prediction times and row key."""
    ev = cfg.dataset.events
    df = raw.copy()
    for name, spec in ev.derived.items():
        df[name] = derive_column(df, name, spec)
    df["event_time"] = parse_utc(df[ev.timestamp], f"{ev.table}.{ev.timestamp}")
    df[PREDICTION_TIME] = df["event_time"] - ev.prediction_lead
    df[ROW_KEY] = row_keys(df, ev.key)
    return df


def _select(cfg: Config, df: pd.DataFrame, keep: list[str]) -> pd.DataFrame:
    """`keep` + the join keys, passthrough features and request-time inputs (join keys as text)."""
    keep = list(keep)
    keep += [k for k in cfg.features.join_keys if k not in keep]
    keep += [c for c in model_passthrough(cfg) if c not in keep]
    keep += [c for c in cfg.features.request_inputs if c not in keep]
    absent = [c for c in keep if c not in df.columns]
    if absent:
        raise ValueError(f"{cfg.dataset.events.table}: no column {absent} (join keys, "
                         f"passthrough features and request-time inputs must be event columns "
                         f"or derived ones)")
    out = df[keep].copy()
    for col in cfg.features.join_keys:
        out[col] = out[col].astype("string")
    return out


def prepare_events(cfg: Config, raw: pd.DataFrame) -> pd.DataFrame:
    """Raw event rows -> model rows (row key, join keys, features, prediction time, label)."""
    label = cfg.dataset.label
    if raw.empty:
        return pd.DataFrame(columns=[ROW_KEY, PREDICTION_TIME, label.name])
    df = _model_rows(cfg, raw)
    known = df[list(label.requires)].notna().all(axis=1) if label.requires else True
    value = df.eval(label.expr, engine="python").astype("float64")
    df[label.name] = np.where(known, value, np.nan)
    df["label_available_at"] = df["event_time"] + label.available_after
    out = _select(cfg, df, [ROW_KEY, PREDICTION_TIME, "event_time", "label_available_at",
                            label.name])
    return out.sort_values([PREDICTION_TIME, ROW_KEY], kind="stable").reset_index(drop=True)


def entity_rows(cfg: Config, raw: pd.DataFrame) -> pd.DataFrame:
    """Raw event rows whose outcome is not known yet -> the rows a model scores, in the given
    order: row key, prediction and event time, join keys, passthrough features and request
    inputs, exactly as `prepare_events` makes them (no label). The online server's path."""
    return _select(cfg, _model_rows(cfg, raw), [ROW_KEY, PREDICTION_TIME, "event_time"])


def request_columns(cfg: Config) -> tuple[list[str], list[str]]:
    """(text, numeric) raw event columns `entity_rows` reads: the key, the timestamp, the
    inputs of derived columns, join keys, passthrough features and request-time inputs that
    are not computed here. Numeric: the passthrough numeric features; the rest is text."""
    ev, computed = cfg.dataset.events, {ROW_KEY, PREDICTION_TIME, "event_time"}
    wanted = [*ev.key, ev.timestamp]
    for name, spec in ev.derived.items():
        wanted += [c for c in (spec.concat or spec.expression.names) if c not in wanted]
        computed.add(name)
    wanted += [*cfg.features.join_keys, *model_passthrough(cfg), *cfg.features.request_inputs]
    cols = [c for c in dict.fromkeys(wanted) if c not in computed]
    numeric = [c for c in ev.passthrough_features.numeric if c in cols]
    return [c for c in cols if c not in numeric], numeric


def derive_column(df: pd.DataFrame, name: str, spec: DerivedColumn) -> pd.Series:
    """One `dataset.events.derived` column of the event rows `df`.

    `concat`: the columns' text joined by `sep`, missing (not the text "nan") where any of them
    is missing; `expr`: the expression as its declared dtype. Either way `on_missing` decides
    what a row with a missing input becomes; a failure names the column and its definition.
    """
    what = f"dataset.events.derived.{name}"
    if spec.concat is None:
        return derive(spec.expression, df, spec.dtype, spec.on_missing, spec.fill_value, what)
    absent = [c for c in spec.concat if c not in df.columns]
    if absent:
        raise ValueError(f"{what} = concat {list(spec.concat)}: no column {absent}")
    parts = df[list(spec.concat)]
    missing = parts.isna().any(axis=1)
    text = parts.astype(str).agg(spec.sep.join, axis=1) if len(df) else pd.Series(dtype=object)
    return apply_missing(text, missing, "string", spec.on_missing, spec.fill_value,
                         f"{what} = concat {list(spec.concat)}")


def model_passthrough(cfg: Config) -> list[str]:
    pf = cfg.dataset.events.passthrough_features
    return list(pf.numeric) + list(pf.categorical)


def load_events(cfg: Config, landing_uri: str, start: date, end: date) -> pd.DataFrame:
    return prepare_events(cfg, load_table(cfg, landing_uri, cfg.dataset.events.table, start, end))
