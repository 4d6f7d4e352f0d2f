"""The checks of a scored interval: drift of its window against the model's reference, and
live quality once its outcomes are known.

Drift: the window of prediction partitions ending with the interval (model inputs +
probabilities) against the training reference of the model version that scored the interval,
scored by the same ONNX (`pipelines.monitoring.reference`); the window is `drift.window_days`
of intervals (`Grain.window`). Quality: a run judges the interval that ended
`monitoring.quality.wait_days` (default: the label delay) before its own end: its predictions
are joined by row key to the outcomes known by the end of the run's interval (each row's
`label_available_at`), pooled over a trailing window and compared with the model's own
evaluation metrics; outcomes not known yet are counted as pending, never guessed. Every verdict
and quality check is a JSON record in the monitoring state and rows in the metrics history.
"""

from __future__ import annotations

import logging
import math
from datetime import date, timedelta
from typing import Any

import pandas as pd

from pipelines.core import locations, storage
from pipelines.core.config import Config
from pipelines.core.intervals import Interval
from pipelines.core.settings import Settings
from pipelines.data.events import LABEL_AT, ROW_KEY, load_events
from pipelines.model.metrics import compute_metrics
from pipelines.monitoring import history as metrics_store
from pipelines.monitoring.drift import check_drift
from pipelines.monitoring.reference import model_reference
from pipelines.scoring.io import read_manifest
from pipelines.scoring.parts import PROBABILITY
from pipelines.scoring.table import read_partition

log = logging.getLogger(__name__)


def window_days(cfg: Config, day: Interval | date, first_day: Interval | date | None
                ) -> list[Interval]:
    """The intervals a drift check of `day` covers, newest first (`drift.window_days` of them
    by the calendar, none before the first scheduled interval)."""
    grain = cfg.grain
    first = grain.interval(first_day) if first_day is not None else None
    return grain.window(grain.interval(day), cfg.drift.window_days, first)


def window_ready(cfg: Config, settings: Settings, day: Interval | date,
                 first_day: Interval | date | None) -> bool:
    """True once every partition of the window is published (the sensor's condition)."""
    return all(read_manifest(settings, d) is not None for d in window_days(cfg, day, first_day))


def _covered_days(intervals: list[Interval]) -> float | int:
    """Calendar days the intervals cover (a count of days for daily ones)."""
    days = round(sum(iv.nominal_days for iv in intervals), 6)
    return int(days) if days == int(days) else days


def check_interval(cfg: Config, settings: Settings, day: Interval | date,
                   first_day: Interval | date | None = None,
                   run_id: str | None = None) -> dict[str, Any]:
    """Drift verdict of the window ending with an interval against its model's training
    reference."""
    day = cfg.grain.interval(day)
    manifest = read_manifest(settings, day)
    if manifest is None:
        raise FileNotFoundError(f"no published prediction partition for {day.label}: run "
                                "batch_scoring")
    manifests = {d: read_manifest(settings, d) for d in window_days(cfg, day, first_day)}
    days = [d for d, m in manifests.items() if m is not None]
    current = pd.concat([read_partition(settings, d) for d in days], ignore_index=True)
    version = str(manifest["model_version"])
    if PROBABILITY in current.columns and "model_version" in current.columns:
        # predictions of other versions are not comparable with this version's reference
        other = current["model_version"].astype(str) != version
        current[PROBABILITY] = current[PROBABILITY].where(~other)
    version_days = [d for d in days if str(manifests[d]["model_version"]) == version]
    reference, meta = model_reference(settings, manifest)
    verdict = check_drift(reference, current, meta["numeric"], meta["categorical"], PROBABILITY,
                          cfg.drift, locations.drift_report(settings, day, "evidently.html"),
                          days=_covered_days(days), prediction_days=_covered_days(version_days))
    verdict.update({"date": day.key, "model": manifest["model"], "model_version": version,
                    "window_start": days[-1].key, "window_days": [d.key for d in days]})
    storage.write_json(locations.monitoring_record(settings, "verdicts", day), verdict)
    metrics_store.record(settings, day, "drift", metrics_store.drift_rows(verdict), version, run_id)
    log.info("drift: %s drift=%s share=%.3f prediction_psi=%s (%s)", day.key, verdict["drift"],
             verdict["drift_share"], verdict.get("prediction_psi"), verdict["reason"])
    return verdict


# --------------------------------------------------------------------------- quality


def labelled_day(cfg: Config, day: Interval | date) -> Interval:
    """The interval a quality check run for `day` judges: the latest one that ended
    `monitoring.quality.wait_days` (default: the label delay, rounded up to whole days)
    before the end of `day`'s interval."""
    grain, q = cfg.grain, cfg.monitoring.quality
    wait = q.wait_days if q.wait_days is not None else math.ceil(
        cfg.dataset.label.delay / timedelta(days=1))
    iv = grain.interval(day)
    return grain.previous(grain.at(iv.end - timedelta(days=wait)))


def _labelled_rows(cfg: Config, settings: Settings, d: Interval, version: str,
                   as_of: pd.Timestamp) -> tuple[pd.DataFrame, int]:
    """(rows of `d` scored by `version` whose outcome is known by `as_of`, rows still pending)."""
    label = cfg.dataset.label.name
    empty = pd.DataFrame(columns=[ROW_KEY, PROBABILITY, label, "day"])
    preds = read_partition(settings, d)
    if "model_version" in preds.columns:
        preds = preds[preds["model_version"].astype(str) == version]
    events = load_events(cfg, settings.landing_uri, d.start, d.end)
    if preds.empty or events.empty or PROBABILITY not in preds.columns:
        return empty, 0
    rows = preds[[ROW_KEY, PROBABILITY]].merge(events[[ROW_KEY, label, LABEL_AT]],
                                               on=ROW_KEY, how="inner")
    known = rows[label].notna() & (rows[LABEL_AT] <= as_of)
    return rows[known].assign(day=d.key)[[ROW_KEY, PROBABILITY, label, "day"]], \
        int((~known).sum())


def check_quality(cfg: Config, settings: Settings, day: Interval | date,
                  run_id: str | None = None) -> dict[str, Any]:
    """Live quality of the interval whose outcomes are due (`labelled_day`), and the decay
    verdict.

    Only the predictions of the labelled interval's model version count, and only outcomes
    known by the end of `day`'s interval (`pending`: those not known yet); decay compares the
    trailing window with that version's evaluation metrics (`monitoring.quality.max_drop` /
    `max_rise`).
    """
    q, label, grain = cfg.monitoring.quality, cfg.dataset.label.name, cfg.grain
    day = grain.interval(day)
    target = labelled_day(cfg, day)
    result: dict[str, Any] = {"date": day.key, "labelled_day": target.key,
                              "decay": False, "status": "ok", "reason": "", "model_version": None,
                              "daily": {}, "window": {}, "baseline": {}, "checks": [], "failed": []}
    manifest = read_manifest(settings, target)
    if manifest is None:
        result.update(status="no predictions", reason=f"no scored partition for {target.key} yet")
    else:
        version = str(manifest["model_version"])
        _, meta = model_reference(settings, manifest)
        as_of = pd.Timestamp(day.end)
        days = grain.window(target, q.window_days)
        found = [_labelled_rows(cfg, settings, d, version, as_of) for d in days
                 if read_manifest(settings, d) is not None]
        rows = pd.concat([f for f, _ in found], ignore_index=True)
        today = rows[rows["day"] == target.key]
        result.update(model_version=version, baseline=meta.get("baseline", {}),
                      daily=compute_metrics(today[label], today[PROBABILITY]),
                      window=compute_metrics(rows[label], rows[PROBABILITY]),
                      window_start=days[-1].key, pending=sum(n for _, n in found),
                      scored_rows=int(manifest.get("output_rows", 0)))
        _judge(result, q)
    storage.write_json(locations.monitoring_record(settings, "quality", day), result)
    metrics_store.record(settings, target, "quality", metrics_store.quality_rows(result),
                         result["model_version"], run_id)
    log.info("quality: %s (outcomes of %s) decay=%s (%s)", day.key, target.key, result["decay"],
             result["reason"])
    return result


def _judge(result: dict[str, Any], q: Any) -> None:
    window, baseline = result["window"], result["baseline"]
    if window["n"] < q.min_labels:
        result.update(status="insufficient labels",
                      reason=f"{window['n']} labelled rows < min_labels {q.min_labels}: no quality verdict")
        return
    for metric, limit, sign in ([(m, v, 1) for m, v in q.max_drop.items()]
                                + [(m, v, -1) for m, v in q.max_rise.items()]):
        live, base = window.get(metric), baseline.get(metric)
        if live is None or base is None:
            result["checks"].append({"metric": metric, "passed": None, "live": live, "baseline": base})
            continue
        change = sign * (base - live)  # how much worse than at evaluation
        passed = change <= limit
        result["checks"].append({"metric": metric, "passed": passed, "live": live, "baseline": base,
                                 "worse_by": change, "limit": limit})
        if not passed:
            result["failed"].append(f"{metric} {live:.3f} vs evaluation {base:.3f} (worse by "
                                    f"{change:.3f} > {limit:g})")
    result["decay"] = bool(result["failed"])
    result["reason"] = ("quality decay: " + "; ".join(result["failed"]) if result["failed"] else
                        f"no decay over {window['n']} labelled rows")


# --------------------------------------------------------------------------- decision


