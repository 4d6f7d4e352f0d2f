"""Online store: materialise an interval idempotently, read it with TTLs, prove it equals offline.

Feast's `materialize(start, end)` loads the latest row per entity with an event timestamp in
[start, end] and overwrites the online value unconditionally (the SQLite store does not compare
timestamps), and its online read does not apply TTLs. So, per interval:

- the end is the later of the interval's end and the latest end any view was materialised to:
  re-running an old interval rewrites the values the store already holds instead of rolling it
  back, so a re-run changes nothing;
- the start reaches back `lateness_days` before the interval (late rows of those days are
  picked up) and at least one TTL before the end (every entity still valid at the end is in
  the store, whatever ran before); a view without TTL is read whole (snapshots, e.g. static
  attributes stamped at the epoch, would never fall in an incremental window);
- reads apply each view's TTL at the as-of time, as the offline join does.

`check_skew` samples entities, reads them online and offline (the training path, as of the
same time) and fails with a report naming entity, feature and both values.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.core.config import Config
from pipelines.core.dates import day_start
from pipelines.core.settings import Settings
from pipelines.data.events import PREDICTION_TIME, ROW_KEY

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNKNOWN = "__unknown_entity__"  # one key per view no source has: must be null on both sides


class SkewError(ValueError):
    """Online and offline features disagree; the message is the report."""


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def materialization_plan(store: "FeatureStore", day: date, lateness_days: int
                         ) -> tuple[datetime, dict[str, datetime]]:
    """(end, start per online feature view) for the interval starting on `day`."""
    views = [fv for fv in store.list_feature_views() if fv.online and getattr(fv, "enabled", True)]
    ends = [_utc(fv.most_recent_end_time) for fv in views if fv.most_recent_end_time]
    end = max([day_start(day + timedelta(days=1)), *ends])
    earliest = day_start(day - timedelta(days=lateness_days))
    return end, {fv.name: (min(earliest, end - fv.ttl) if fv.ttl else EPOCH) for fv in views}


def materialize_interval(store: "FeatureStore", day: date, lateness_days: int) -> dict[str, Any]:
    """Load what the interval of `day` (and its lateness window) may have changed (idempotent)."""
    end, starts = materialization_plan(store, day, lateness_days)
    for name, start in starts.items():
        store.materialize(start_date=start, end_date=end, feature_views=[name])
    windows = {name: [start.isoformat(), end.isoformat()] for name, start in starts.items()}
    log.info("materialize: %s -> online store as of %s: %s", day, end, windows)
    return {"as_of": end.isoformat(), "windows": windows}


def materialize(cfg: Config, settings: Settings, day: date) -> dict[str, Any]:
    from pipelines.features.store import get_store

    return materialize_interval(get_store(settings), day,
                                cfg.orchestration.materialization_lateness_days)


def online_features(store: "FeatureStore", refs: list[str], entity_rows: list[dict[str, Any]],
                    as_of: datetime, ttls: dict[str, timedelta | None]) -> pd.DataFrame:
    """Online values (`<view>__<feature>`) with each view's TTL applied at `as_of`."""
    resp = store.get_online_features(features=refs, entity_rows=entity_rows,
                                     full_feature_names=True).to_dict(include_event_timestamps=True)
    out = {}
    for ref in refs:
        view, feature = ref.split(":")
        col = f"{view}__{feature}"
        values, ttl = resp[col], ttls.get(view)
        if ttl:  # Feast's online read does not expire values: do it as the offline join does
            oldest = (as_of - ttl).timestamp()
            values = [v if ts >= oldest else None for v, ts in zip(values, resp[f"{col}__ts"])]
        out[col] = values
    return pd.DataFrame(out)


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


def skew_report(store: "FeatureStore", service_name: str, join_keys: list[str], as_of: datetime,
                n: int, seed: int, engine: str = "duckdb", cutoff: bool = True) -> dict[str, Any]:
    """Online vs offline (the training path) for sampled entities of every view of the service."""
    from pipelines.features import pit
    from pipelines.features.retrieval import historical_features

    specs, odfvs = pit.service_views(store, service_name)
    con = pit.connect()
    frames, checks = [], []  # checks: (refs, key columns, entity rows) per view
    for spec in specs:
        keys = _sample_keys(con, spec, as_of, n, seed)
        cols = [ek for _, ek in spec.join_keys]
        frames.append(pd.DataFrame(keys, columns=cols).assign(**{PREDICTION_TIME: as_of}))
        checks.append(([f"{spec.name}:{f}" for f in spec.features], cols, frames[-1][cols]))
    hours = [as_of - timedelta(hours=h) for h in range(24)]  # on-demand views: every hour of a day
    for odfv, features in odfvs:
        frames.append(pd.DataFrame({PREDICTION_TIME: hours}))
        checks.append(([f"{odfv.projection.name_to_use()}:{f}" for f in features],
                       [PREDICTION_TIME], frames[-1][[PREDICTION_TIME]]))
    rows = pd.concat(frames, ignore_index=True).reindex(columns=[PREDICTION_TIME, *join_keys])
    rows[PREDICTION_TIME] = pd.to_datetime(rows[PREDICTION_TIME], utc=True)
    rows[join_keys] = rows[join_keys].astype("string")
    rows.insert(0, ROW_KEY, [f"skew-{i}" for i in range(len(rows))])
    offline = historical_features(store, service_name, rows, join_keys, engine=engine,
                                  cutoff=cutoff)
    ttls = {s.name: s.ttl for s in specs}
    mismatches, compared, first = [], 0, 0
    for refs, cols, entities in checks:
        entity_rows = [{c: (v.to_pydatetime() if isinstance(v, pd.Timestamp) else v)
                        for c, v in zip(cols, row)} for row in entities.itertuples(index=False)]
        online = online_features(store, refs, entity_rows, as_of, ttls)
        for col in online.columns:
            for i, (on, off) in enumerate(zip(online[col], offline[col].iloc[first:first + len(online)])):
                compared += 1
                if not _same(on, off):
                    mismatches.append({"entity": entity_rows[i], "feature": col,
                                       "online": None if pd.isna(on) else on,
                                       "offline": None if pd.isna(off) else off})
        first += len(online)
    return {"as_of": as_of.isoformat(), "compared": compared, "entities": len(rows),
            "mismatches": mismatches}


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


def check_skew(cfg: Config, settings: Settings, as_of: str) -> dict[str, Any]:
    """Fail (SkewError) if any sampled online feature differs from offline as of `as_of`."""
    from pipelines.features.store import get_store

    f = cfg.features
    report = skew_report(get_store(settings), f.service, list(f.join_keys),
                         _utc(datetime.fromisoformat(as_of)), f.skew_sample_entities, f.skew_seed,
                         f.retrieval, f.created_timestamp_cutoff)
    summary = assert_no_skew(report)
    log.info("skew check: %d feature values of %d entities agree as of %s", report["compared"],
             report["entities"], as_of)
    return summary
