"""Events: load the interval batches of the event table and turn them into model rows.

A model row carries a deterministic row key, the entity join keys, the passthrough features,
the prediction time (event time minus the configured lead) and, where the outcome is known,
the label with the time it became known (`label_available_at`: the row's own
`dataset.label.available_at` column, or the event time, plus `available_after`). Rows sharing
an event key are resolved by `dataset.events.duplicates` (fail, or keep the first or last by a
column). Nothing here names a column of a particular dataset: it all comes from config.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from datetime import date, datetime

import numpy as np
import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.dates import parse_utc
from pipelines.core.expressions import apply_missing, as_text, derive
from pipelines.core.intervals import Interval
from pipelines.core.specs import DerivedColumn

log = logging.getLogger(__name__)
Columns = pd.DataFrame | Mapping[str, pd.Series]  # event rows: a frame, or its columns by name
ROW_KEY = "row_key"
PREDICTION_TIME = "event_timestamp"  # Feast's name for the as-of time of an entity row
EVENT_TIME, LABEL_AT = "event_time", "label_available_at"


def read_csv(uri: str) -> pd.DataFrame:
    fs, path = storage.resolve(uri)
    with fs.open(path, "rb") as fh:
        return pd.read_csv(fh)


def load_table(cfg: Config, landing_uri: str, table: str,
               intervals: Iterable[Interval]) -> pd.DataFrame:
    """Concatenate the batches of `table` for the given intervals (those that have landed;
    header-only batches of quiet intervals add no rows and change no column's type)."""
    frames = []
    for iv in intervals:
        uri = locations.batch(landing_uri, table, iv)
        if storage.exists(uri):
            frames.append(read_csv(uri))
    rows = [f for f in frames if len(f)]
    if not rows:
        return frames[0] if frames else pd.DataFrame()
    return pd.concat(rows, ignore_index=True)


def instant(cfg: Config, when: date | datetime | str) -> pd.Timestamp:
    """A window bound: an aware datetime as is, a date (or its ISO text) at its local midnight
    (the grain's zone, orchestration.timezone)."""
    if isinstance(when, datetime):
        return pd.Timestamp(when).tz_convert("UTC")
    return pd.Timestamp(cfg.grain.bound(when))


def _text(values: pd.Series) -> list[str]:
    """`values.astype(str).tolist()`, without the conversion where it would change nothing
    (text already, or integers): a few rows pay pandas' fixed cost per column otherwise."""
    if values.dtype.kind in "iub":
        return [str(v) for v in values.tolist()]
    if values.dtype == object:
        listed = values.tolist()
        if all(type(v) is str for v in listed):
            return listed
    return values.astype(str).tolist()


def row_keys(df: Columns, key: tuple[str, ...]) -> pd.Series:
    """Deterministic 16-hex-digit key from the key columns (stable across runs and machines)."""
    parts = zip(*(_text(df[c]) for c in key))  # a loop: `agg(axis=1)` is
    return pd.Series([hashlib.sha256("\x1f".join(p).encode()).hexdigest()[:16]  # 10x slower
                      for p in parts], index=df[key[0]].index, dtype=object)


def _derived_rows(cfg: Config, raw: pd.DataFrame) -> pd.DataFrame:
    """A copy of the raw rows with the derived columns."""
    return pd.DataFrame(_derived_columns(cfg, raw), index=raw.index)


def _derived_columns(cfg: Config, raw: Columns) -> dict[str, pd.Series]:
    """The raw rows' columns (a frame, or its columns by name on one index) and the derived
    ones, by name, without copying or growing a frame (for the few rows of a request,
    inserting a column costs as much as deriving it). A concat reads the columns as they are;
    an expression is evaluated on a frame of the columns so far."""
    cols = dict(raw.items())
    index = next(iter(cols.values())).index if cols else None
    for name, spec in cfg.dataset.events.derived.items():
        source = cols if spec.concat is not None else pd.DataFrame(cols, index=index)
        cols[name] = column = derive_column(source, name, spec)
        column.name = name  # as the frame's column is named
    return cols


def _times_and_key(cfg: Config, df: Columns) -> dict[str, pd.Series]:
    """The event time (UTC), the prediction time (event time - lead) and the row key of each
    row (the key's columns are raw event columns: `deduplicate` checks it)."""
    ev = cfg.dataset.events
    event_time = parse_utc(df[ev.timestamp], f"{ev.table}.{ev.timestamp}")
    # the arrays' difference: the Series' costs half as much again for a request's few rows
    lead = pd.Series(event_time.array - ev.prediction_lead, index=event_time.index,
                     name=event_time.name, copy=False)
    return {EVENT_TIME: event_time, PREDICTION_TIME: lead, ROW_KEY: row_keys(df, ev.key)}


def _model_rows(cfg: Config, raw: pd.DataFrame) -> pd.DataFrame:
    """A copy of the raw rows with the derived columns, event and prediction times and row key."""
    df = _derived_rows(cfg, raw)
    for name, values in _times_and_key(cfg, df).items():
        df[name] = values
    return df


def _select(cfg: Config, df: pd.DataFrame, keep: list[str],
            computed: dict[str, pd.Series] | None = None) -> pd.DataFrame:
    """`keep` + the join keys, passthrough features and request-time inputs (join keys as
    text), from `df` or `computed` (columns of the same rows not set in `df`)."""
    # one frame built from the columns (it copies them): each `df[c] = ...` costs about as much
    return pd.DataFrame(_selected(cfg, df, keep, computed), index=df.index)


def _selected(cfg: Config, df: Columns, keep: list[str],
              computed: dict[str, pd.Series] | None = None) -> dict[str, pd.Series]:
    """`_select`'s columns, by name (each a Series on `df`'s index)."""
    computed = computed or {}
    keep = list(keep)
    keep += [k for k in cfg.features.join_keys if k not in keep]
    keep += [c for c in model_passthrough(cfg) if c not in keep]
    keep += [c for c in cfg.features.request_inputs if c not in keep]
    absent = [c for c in keep if c not in df and c not in computed]
    if absent:
        raise ValueError(f"{cfg.dataset.events.table}: no column {absent} (join keys, "
                         f"passthrough features and request-time inputs must be event columns "
                         f"or derived ones)")
    text = set(cfg.features.join_keys)
    columns = {c: computed[c] if c in computed else df[c] for c in keep}
    return {c: as_text(v) if c in text else v for c, v in columns.items()}


def prepare_events(cfg: Config, raw: pd.DataFrame) -> pd.DataFrame:
    """Raw event rows -> model rows (row key, join keys, features, prediction time, label)."""
    label = cfg.dataset.label
    if raw.empty:
        return pd.DataFrame(columns=[ROW_KEY, PREDICTION_TIME, label.name])
    df = _model_rows(cfg, deduplicate(cfg, raw))
    df[LABEL_AT] = label_times(cfg, df)
    known = df[list(label.requires)].notna().all(axis=1) if label.requires else True
    known = known & df[LABEL_AT].notna()
    value = df.eval(label.expr, engine="python").astype("float64")
    df[label.name] = np.where(known, value, np.nan)
    df[LABEL_AT] = df[LABEL_AT].where(known)
    out = _select(cfg, df, [ROW_KEY, PREDICTION_TIME, EVENT_TIME, LABEL_AT, label.name])
    return out.sort_values([PREDICTION_TIME, ROW_KEY], kind="stable").reset_index(drop=True)


def label_times(cfg: Config, df: pd.DataFrame) -> pd.Series:
    """When each row's outcome is known (UTC): `label.available_at` (per row) or the event
    time, plus `label.available_after`; missing where the row's time is missing. An outcome
    known before its event is refused (rolling statistics would see it too early)."""
    ev, label = cfg.dataset.events, cfg.dataset.label
    if label.available_at is None:
        return df[EVENT_TIME] + label.delay
    col = label.available_at
    if col not in df.columns:
        raise ValueError(f"dataset.label.available_at: no column {col!r} in {ev.table}")
    try:
        at = parse_utc(df[col], f"{ev.table}.{col}") + label.delay
    except ValueError as exc:
        raise ValueError(f"{exc} (dataset.label.available_at; naive local times: declare "
                         f"dataset.sources.{ev.table}.timezone and list {col!r} in its "
                         "timestamp_columns)") from None
    early = at.notna() & (at < df[EVENT_TIME])
    if early.any():
        rows = df.loc[early, [*ev.key, col]].head(3).to_dict("records")
        raise ValueError(f"{ev.table}.{col} (dataset.label.available_at): {int(early.sum())} "
                         f"outcomes known before their event ({ev.timestamp}), e.g. {rows}")
    return at


def deduplicate(cfg: Config, raw: pd.DataFrame) -> pd.DataFrame:
    """One row per event key, by `dataset.events.duplicates`: `error` names the duplicated
    keys; `first` / `last` keep that row of each key, ordered by `order_by` (ties, and no
    `order_by`: the order the rows were read)."""
    ev = cfg.dataset.events
    policy = ev.duplicates
    absent = [c for c in ev.key if c not in raw.columns]
    if absent:
        raise ValueError(f"dataset.events.key: no column {absent} in {ev.table}")
    dup = raw.duplicated(subset=list(ev.key), keep=False)
    if not dup.any():
        return raw.copy()
    if policy.keep == "error":
        examples = raw.loc[dup, list(ev.key)].drop_duplicates().head(3).to_dict("records")
        raise ValueError(f"{ev.table}: {int(dup.sum())} rows share an event key "
                         f"{list(ev.key)} (e.g. {examples}); declare "
                         "dataset.events.duplicates (keep: first | last, order_by: a column) "
                         "or fix the source")
    df = raw
    if policy.order_by is not None:
        if policy.order_by not in raw.columns:
            raise ValueError(f"dataset.events.duplicates.order_by: no column "
                             f"{policy.order_by!r} in {ev.table}")
        order = _sortable(raw[policy.order_by], f"{ev.table}.{policy.order_by}")
        df = raw.iloc[np.argsort(order.to_numpy(), kind="stable")]
    out = df.drop_duplicates(subset=list(ev.key), keep=policy.keep).sort_index()
    log.info("events: %d of %d rows were duplicates of an event key; kept the %s%s",
             len(raw) - len(out), len(raw), policy.keep,
             f" by {policy.order_by}" if policy.order_by else "")
    return out.copy()


def _sortable(values: pd.Series, what: str) -> pd.Series:
    """Values to order rows by: timestamps with offsets as instants (their text would sort
    wrongly across offsets), anything else as it is."""
    if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
        text = values.dropna().astype(str)
        if len(text) and text.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True).all():
            return parse_utc(values, what).dt.tz_convert(None)  # naive UTC: NaT sorts last
    return values


def entity_rows(cfg: Config, raw: pd.DataFrame) -> pd.DataFrame:
    """Raw event rows whose outcome is not known yet -> the rows a model scores, in the given
    order: row key, prediction and event time, join keys, passthrough features and request
    inputs, exactly as `prepare_events` makes them (no label)."""
    return pd.DataFrame(entity_columns(cfg, raw), index=raw.index)


def entity_columns(cfg: Config, raw: Columns) -> dict[str, pd.Series]:
    """`entity_rows`' columns by name, without the frame around them (the online server's
    path: for a request of a row or a few, building the frame costs as much as a step); `raw`
    may be the columns by name too (`serving.inference.raw_columns`)."""
    cols = _derived_columns(cfg, raw)
    return _selected(cfg, cols, [ROW_KEY, PREDICTION_TIME, EVENT_TIME],
                     _times_and_key(cfg, cols))


def request_columns(cfg: Config) -> tuple[list[str], list[str]]:
    """(text, numeric) raw event columns `entity_rows` reads: the key, the timestamp, the
    inputs of derived columns, join keys, passthrough features and request-time inputs that
    are not computed here. Numeric: the passthrough numeric features; the rest is text."""
    ev, computed = cfg.dataset.events, {ROW_KEY, PREDICTION_TIME, EVENT_TIME}
    wanted = [*ev.key, ev.timestamp]
    for name, spec in ev.derived.items():
        wanted += [c for c in (spec.concat or spec.expression.names) if c not in wanted]
        computed.add(name)
    wanted += [*cfg.features.join_keys, *model_passthrough(cfg), *cfg.features.request_inputs]
    cols = [c for c in dict.fromkeys(wanted) if c not in computed]
    numeric = [c for c in ev.passthrough_features.numeric if c in cols]
    return [c for c in cols if c not in numeric], numeric


def derive_column(df: Columns, name: str, spec: DerivedColumn) -> pd.Series:
    """One `dataset.events.derived` column of the event rows `df` (a frame; for a concat, the
    columns by name are enough).

    `concat`: the columns' text joined by `sep`, missing (not the text "nan") where any of them
    is missing; `expr`: the expression as its declared dtype. Either way `on_missing` decides
    what a row with a missing input becomes; a failure names the column and its definition.
    """
    what = f"dataset.events.derived.{name}"
    if spec.concat is None:
        return derive(spec.expression, df, spec.dtype, spec.on_missing, spec.fill_value, what)
    absent = [c for c in spec.concat if c not in df]
    if absent:
        raise ValueError(f"{what} = concat {list(spec.concat)}: no column {absent}")
    index = df[spec.concat[0]].index
    missing = pd.Series(np.logical_or.reduce([pd.isna(df[c].to_numpy()) for c in spec.concat]),
                        index=index)
    parts = zip(*(_text(df[c]) for c in spec.concat))
    text = pd.Series([spec.sep.join(p) for p in parts], index=index, dtype=object)
    return apply_missing(text, missing, "string", spec.on_missing, spec.fill_value,
                         f"{what} = concat {list(spec.concat)}")


def model_passthrough(cfg: Config) -> list[str]:
    pf = cfg.dataset.events.passthrough_features
    return list(pf.numeric) + list(pf.categorical)


def load_events(cfg: Config, landing_uri: str, start: date | datetime | str,
                end: date | datetime | str) -> pd.DataFrame:
    """Model rows of the events in [start, end) (dates: local midnight in the grain's zone),
    from the batches of the intervals that overlap it."""
    lo, hi = instant(cfg, start), instant(cfg, end)
    intervals = cfg.grain.between(lo.to_pydatetime(), hi.to_pydatetime())
    events = prepare_events(cfg, load_table(cfg, landing_uri, cfg.dataset.events.table,
                                            intervals))
    if events.empty:
        return events
    inside = (events[EVENT_TIME] >= lo) & (events[EVENT_TIME] < hi)
    return events if inside.all() else events[inside].reset_index(drop=True)
