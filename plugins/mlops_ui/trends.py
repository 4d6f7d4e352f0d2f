"""Drift and live-quality points of the last N days, for the model page's plots.

The page asks a `TrendSource`. Today's source reads the JSON records `drift_monitor` writes
(verdicts, quality, decisions: `locations.monitoring_record`); a source backed by the metrics history table
(`pipelines.monitoring.history`) only has to return the same point dicts, and `source_for` is the one
place that chooses. "The last N days" ends at the latest checked interval, not at the wall clock:
a backfilled or replayed span is shown as it was monitored.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, Protocol

from pipelines.core import locations, storage
from pipelines.core.settings import Settings

QUALITY_METRICS = ("roc_auc", "pr_auc", "calibration_error")


class TrendSource(Protocol):
    def span(self) -> tuple[date, date] | None:
        """The first and the last interval with a drift or quality check."""

    def drift(self, start: date, end: date) -> list[dict[str, Any]]:
        """Drift points with date in [start, end]: drift, drift_share, prediction_psi, ..."""

    def quality(self, start: date, end: date) -> list[dict[str, Any]]:
        """Live-quality points whose labelled day is in [start, end]."""

    def decisions(self, start: date, end: date) -> list[dict[str, Any]]:
        """Retraining decisions with date in [start, end]."""


class VerdictFiles:
    """Reads the monitoring records of each day (`locations.monitoring_record`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _days(self, kind: str) -> list[date]:
        """Days with a record of `kind`: the names in its folder that are its records."""
        out = []
        for name in storage.listdir(locations.monitoring_records(self.settings, kind)):
            try:
                day = date.fromisoformat(name.rsplit(".", 1)[0])
            except ValueError:
                continue
            if locations.monitoring_record(self.settings, kind, day).rsplit("/", 1)[1] == name:
                out.append(day)
        return sorted(out)

    def _read(self, kind: str, start: date, end: date) -> list[dict[str, Any]]:
        out = []
        for day in self._days(kind):
            if start <= day <= end:
                try:
                    out.append(storage.read_json(locations.monitoring_record(self.settings, kind, day)))
                except (OSError, ValueError):
                    continue  # a file being replaced: skip it this time
        return out

    def span(self) -> tuple[date, date] | None:
        days = self._days("verdicts") + self._days("quality")
        return (min(days), max(days)) if days else None

    def drift(self, start: date, end: date) -> list[dict[str, Any]]:
        return [drift_point(v) for v in self._read("verdicts", start, end)]

    def quality(self, start: date, end: date) -> list[dict[str, Any]]:
        # a check on day D scores the outcomes of an earlier day: read a little further back
        points = [quality_point(q) for q in self._read("quality", start, end + timedelta(days=60))]
        return sorted((p for p in points if p["date"] and start.isoformat() <= p["date"] <= end.isoformat()),
                      key=lambda p: p["date"])

    def decisions(self, start: date, end: date) -> list[dict[str, Any]]:
        return [{k: d.get(k) for k in ("date", "retrain", "signal", "streak", "reason")}
                for d in self._read("decisions", start, end)]


def drift_point(verdict: dict[str, Any]) -> dict[str, Any]:
    thresholds = verdict.get("thresholds") or {}
    return {"date": verdict.get("date"), "drift": bool(verdict.get("drift")),
            "drift_share": verdict.get("drift_share"),
            "drift_share_threshold": thresholds.get("drift_share"),
            "prediction_psi": verdict.get("prediction_psi"),
            "prediction_psi_threshold": thresholds.get("prediction_psi"),
            "drifted": list(verdict.get("drifted") or []), "status": verdict.get("status"),
            "reason": verdict.get("reason"), "model_version": verdict.get("model_version"),
            "report_uri": verdict.get("report_uri")}


def quality_point(check: dict[str, Any]) -> dict[str, Any]:
    """A quality check as a point on its labelled day (the day whose outcomes it scored)."""
    daily, window, baseline = (check.get(k) or {} for k in ("daily", "window", "baseline"))
    point = {"date": check.get("labelled_day"), "checked_on": check.get("date"),
             "model_version": check.get("model_version"), "decay": bool(check.get("decay")),
             "status": check.get("status"), "reason": check.get("reason"), "n": daily.get("n")}
    for m in QUALITY_METRICS:
        point[m] = daily.get(m)
        point[f"window_{m}"] = window.get(m)
        point[f"baseline_{m}"] = baseline.get(m)
    return point


def source_for(settings: Settings) -> TrendSource:
    """The trend source of this deployment (swap in a metrics-history source here)."""
    return VerdictFiles(settings)


def trend(source: TrendSource, days: int, end: date | None = None) -> dict[str, Any]:
    """The points of the `days` days ending at `end` (default: the latest checked interval),
    starting no earlier than the first check (a young deployment is not drawn as empty days)."""
    span = source.span()
    if span is None:
        return {"start": None, "end": None, "days": [], "drift": [], "quality": [], "retrain": []}
    end = end or span[1]
    start = max(end - timedelta(days=days - 1), min(span[0], end))
    decisions = source.decisions(start, end)
    return {"start": start.isoformat(), "end": end.isoformat(),
            "days": [(start + timedelta(days=k)).isoformat() for k in range((end - start).days + 1)],
            "drift": sorted(source.drift(start, end), key=lambda p: p["date"] or ""),
            "quality": source.quality(start, end),
            "retrain": sorted(d["date"] for d in decisions if d.get("retrain"))}
