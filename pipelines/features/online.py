"""Online store: materialise an interval idempotently, read it with TTLs, prove it equals offline.

Feast's `materialize(start, end)` loads the latest row per entity with an event timestamp in
[start, end] and overwrites the online value unconditionally (the SQLite store does not compare
timestamps), and its online read does not apply TTLs. So, per interval:

- the end is the later of the interval's last instant (`Interval.last`: intervals are
  half-open, Feast's windows closed, so the row stamped exactly at the interval's end is the
  next interval's, whether or not its sources are built yet) and the latest end any view was
  materialised to:
  re-running an old interval rewrites the values the store already holds instead of rolling it
  back, so a re-run changes nothing;
- the start reaches back `lateness_days` before the interval (late rows of those days are
  picked up) and at least one TTL before the end (every entity still valid at the end is in
  the store, whatever ran before); a view without TTL is read whole (snapshots, e.g. static
  attributes stamped at the epoch, would never fall in an incremental window);
- reads apply each view's TTL at the as-of time, as the offline join does.

`check_skew` samples entities, reads them online and offline (the training path, as of the
same time), computes the request-time features of sampled events as serving does (from the
rows as JSON, `pipelines.features.serving.serving_features`) and as training does, and fails with a report naming
entity, feature and both values.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.core import duck, locations
from pipelines.core.config import Config
from pipelines.core.intervals import Interval, as_interval
from pipelines.core.settings import Settings
from pipelines.data.events import PREDICTION_TIME, ROW_KEY
from pipelines.features import request
from pipelines.features.serving import (
    as_requests,
    online_features,
    plain,
    serving_features,
)

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNKNOWN = "__unknown_entity__"  # one key per view no source has: must be null on both sides


class SkewError(ValueError):
    """Online and offline features disagree; the message is the report."""


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def materialization_plan(store: "FeatureStore", day: Interval | date, lateness_days: int
                         ) -> tuple[datetime, dict[str, datetime]]:
    """(end, start per online feature view) for an interval (a date: its daily UTC one)."""
    iv = as_interval(day)
    views = [fv for fv in store.list_feature_views() if fv.online and getattr(fv, "enabled", True)]
    ends = [_utc(fv.most_recent_end_time) for fv in views if fv.most_recent_end_time]
    end = max([iv.last, *ends])
    earliest = iv.start - timedelta(days=lateness_days)
    return end, {fv.name: (min(earliest, end - fv.ttl) if fv.ttl else EPOCH) for fv in views}


def materialize_interval(store: "FeatureStore", day: Interval | date, lateness_days: int
                         ) -> dict[str, Any]:
    """Load what an interval (and its lateness window) may have changed (idempotent)."""
    end, starts = materialization_plan(store, day, lateness_days)
    for name, start in starts.items():
        store.materialize(start_date=start, end_date=end, feature_views=[name])
    windows = {name: [start.isoformat(), end.isoformat()] for name, start in starts.items()}
    log.info("materialize: %s -> online store as of %s: %s", locations.key(day), end, windows)
    return {"as_of": end.isoformat(), "windows": windows}


def materialize(cfg: Config, settings: Settings, day: Interval | date) -> dict[str, Any]:
    from pipelines.features.store import get_store

    return materialize_interval(get_store(settings), cfg.grain.interval(day),
                                cfg.orchestration.materialization_lateness_days)


def _same(a: Any, b: Any) -> bool:
    if pd.isna(a) and pd.isna(b):
        return True
    if pd.isna(a) or pd.isna(b):
        return False
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def _sample_keys(con: Any, spec: Any, as_of: datetime, n: int, seed: int) -> list[tuple]:
    """Up to `n` entities with a row at or before `as_of` (seeded), plus one unknown entity."""
    import numpy as np

    from pipelines.features import pit

    keys = ", ".join(pit._q(k) for k, _ in spec.join_keys)
    rows = pit._all(con, f"SELECT DISTINCT {keys} FROM ({pit._read(con, spec)}) "
                         f"WHERE {pit.TS} <= '{as_of.isoformat()}'::TIMESTAMPTZ ORDER BY {keys}")
    pick = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in sorted(pick)] + [tuple(UNKNOWN for _ in spec.join_keys)]


def _compare(online: pd.DataFrame, offline: pd.DataFrame, entities: list[dict[str, Any]],
             mismatches: list[dict[str, Any]]) -> int:
    """Append a mismatch per differing value (online[col][i] vs offline[col][i]); the count."""
    compared = 0
    for col in online.columns:
        for i, (on, off) in enumerate(zip(online[col], offline[col])):
            compared += 1
            if not _same(on, off):
                mismatches.append({"entity": entities[i], "feature": col,
                                   "online": plain(on), "offline": plain(off)})
    return compared


def skew_report(store: "FeatureStore", service_name: str, join_keys: list[str], as_of: datetime,
                n: int, seed: int, engine: str = "duckdb", cutoff: bool = True,
                request_time: request.Spec | None = None,
                request_rows: pd.DataFrame | None = None) -> dict[str, Any]:
    """Online vs offline (the training path) for sampled entities of every view of the service,
    and for the request-time features on `request_rows` (entity rows holding the request
    columns, e.g. sampled events; None: every hour of the day before `as_of`, when the
    prediction time is the only request column): the serving path (`serving_features` on the
    rows as JSON) against the offline retrieval of the same rows."""
    from pipelines.features import pit
    from pipelines.features.retrieval import historical_features

    specs = pit.service_views(store, service_name)
    con = duck.connect()
    frames, checks = [], []  # checks: (refs, key columns, entity rows) per view
    for spec in specs:
        keys = _sample_keys(con, spec, as_of, n, seed)
        cols = [ek for _, ek in spec.join_keys]
        frames.append(pd.DataFrame(keys, columns=cols).assign(**{PREDICTION_TIME: as_of}))
        checks.append(([f"{spec.name}:{f}" for f in spec.features], cols, frames[-1][cols]))
    rows = _entity_rows(frames, join_keys, "skew")
    offline = historical_features(store, service_name, rows, join_keys, engine=engine,
                                  cutoff=cutoff)
    ttls = {s.name: s.ttl for s in specs}
    mismatches: list[dict[str, Any]] = []
    compared, first = 0, 0
    for refs, cols, entities in checks:
        entity_rows = [dict(zip(cols, row)) for row in entities.itertuples(index=False)]
        online = online_features(store, refs, entity_rows, as_of, ttls)
        compared += _compare(online, offline.iloc[first:first + len(online)].reset_index(
            drop=True), entity_rows, mismatches)
        first += len(online)
    report = {"as_of": as_of.isoformat(), "compared": compared, "entities": len(rows),
              "mismatches": mismatches}
    if request_time:
        report.update(_request_skew(store, service_name, join_keys, as_of, engine, cutoff,
                                    request_time, request_rows, mismatches))
        report["compared"] += report.pop("request_compared")
    return report


def _entity_rows(frames: list[pd.DataFrame], join_keys: list[str], prefix: str,
                 extra: list[str] = ()) -> pd.DataFrame:
    """Entity rows for the offline retrieval: row keys, UTC prediction times, string keys."""
    cols = list(dict.fromkeys([PREDICTION_TIME, *join_keys, *extra]))
    rows = pd.concat(frames, ignore_index=True).reindex(columns=cols)
    rows[PREDICTION_TIME] = pd.to_datetime(rows[PREDICTION_TIME], utc=True)
    rows[join_keys] = rows[join_keys].astype("string")
    rows.insert(0, ROW_KEY, [f"{prefix}-{i}" for i in range(len(rows))])
    return rows


def _request_skew(store: "FeatureStore", service_name: str, join_keys: list[str],
                  as_of: datetime, engine: str, cutoff: bool, spec: request.Spec,
                  rows: pd.DataFrame | None, mismatches: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    """The request-time part of the skew report (see `skew_report`)."""
    from pipelines.features.retrieval import historical_features

    needed = request.inputs(spec)
    if rows is None and set(needed) <= {PREDICTION_TIME}:
        rows = pd.DataFrame({PREDICTION_TIME: [as_of - timedelta(hours=h) for h in range(24)]})
    if rows is None or rows.empty:
        log.warning("skew check: no entity rows carrying %s: request-time features %s not "
                    "compared", needed, list(spec))
        return {"request_rows": 0, "request_compared": 0}
    absent = [c for c in needed if c not in rows.columns]
    if absent:
        raise ValueError(f"skew check: the request rows lack the request columns {absent}")
    rows = _entity_rows([rows], join_keys, "skew-request", needed)
    offline = historical_features(store, service_name, rows, join_keys, engine=engine,
                                  cutoff=cutoff, request_time=spec)
    requests = as_requests(rows.drop(columns=[ROW_KEY]))
    served = serving_features(store, service_name, spec, requests, as_of)
    outputs = list(request.columns(spec))
    compared = _compare(served[outputs], offline[outputs],
                        [{c: r[c] for c in needed} for r in requests], mismatches)
    return {"request_rows": len(rows), "request_compared": compared}


def assert_no_skew(report: dict[str, Any]) -> dict[str, Any]:
    """Raise SkewError naming entity, feature, online and offline value of every mismatch."""
    bad = report["mismatches"]
    if bad:
        lines = [f"  {m['feature']} for {m['entity']}: online={m['online']!r} "
                 f"offline={m['offline']!r}" for m in bad[:20]]
        more = [f"  ... and {len(bad) - 20} more"] if len(bad) > 20 else []
        raise SkewError(f"online/offline skew as of {report['as_of']}: {len(bad)} of "
                        f"{report['compared']} feature values differ:\n" + "\n".join(lines + more))
    return {k: v for k, v in report.items() if k != "mismatches"}


def request_sample(cfg: Config, settings: Settings, as_of: datetime) -> pd.DataFrame:
    """Up to `features.skew_sample_entities` events of the interval that ends at `as_of`
    (seeded): the entity rows, with their request columns, the skew check serves."""
    from pipelines.data.events import load_events

    f = cfg.features
    iv = cfg.grain.at(as_of - timedelta(microseconds=1))
    events = load_events(cfg, settings.landing_uri, iv.start, iv.end)
    if events.empty:
        return events
    events = events.sample(min(len(events), f.skew_sample_entities), random_state=f.skew_seed)
    cols = list(dict.fromkeys([PREDICTION_TIME, *f.join_keys, *f.request_inputs]))
    return events[cols].sort_values(PREDICTION_TIME, kind="stable").reset_index(drop=True)


def check_skew(cfg: Config, settings: Settings, as_of: str) -> dict[str, Any]:
    """Fail (SkewError) if any sampled online feature, or a request-time feature as serving
    computes it, differs from offline as of `as_of`."""
    from pipelines.features.store import get_store

    f = cfg.features
    at = _utc(datetime.fromisoformat(as_of))
    report = skew_report(get_store(settings), f.service, list(f.join_keys), at,
                         f.skew_sample_entities, f.skew_seed, f.retrieval,
                         f.created_timestamp_cutoff, f.request_time,
                         request_sample(cfg, settings, at) if f.request_time else None)
    summary = assert_no_skew(report)
    log.info("skew check: %d feature values of %d entities agree as of %s", report["compared"],
             report["entities"], as_of)
    return summary
