"""Validation of a day's raw batches (every daily table) and the reference snapshots."""

from __future__ import annotations

import os
from datetime import date, timedelta
from typing import Any

from pipelines import storage
from pipelines.config import Config
from pipelines.dates import day_start
from pipelines.ingest import batch_uri
from pipelines.settings import REPO_ROOT, Settings

SUITES = os.environ.get("MLOPS_EXPECTATIONS_DIR", str(REPO_ROOT / "expectations"))


def validate_day(cfg: Config, settings: Settings, day: date,
                 tables: list[str] | None = None) -> list[dict[str, Any]]:
    """Validate `day`'s batch of each daily table; raises DataValidationError on a bad one."""
    from pipelines.validation import validate_batch

    results = []
    for table in tables or cfg.dataset.daily_tables:
        source = cfg.dataset.sources[table]
        uri = batch_uri(settings.landing_uri, table, day)
        if not storage.exists(uri):
            raise FileNotFoundError(f"{uri}: no {table} batch has landed for {day}")
        results.append(validate_batch(
            table=table, batch_uri=uri, suite_dir=SUITES,
            report_uri=storage.join(settings.reports_uri, "validation", table,
                                    f"date={day.isoformat()}.json"),
            interval_start=day_start(day), interval_end=day_start(day + timedelta(days=1)),
            timestamp_column=source.timestamp, max_file_mb=cfg.validation.max_file_mb,
            quarantine_uri=settings.quarantine_uri))
    return results


def validate_snapshots(cfg: Config, settings: Settings) -> list[dict[str, Any]]:
    from pipelines.validation import validate_batch

    results = []
    for table, source in cfg.dataset.sources.items():
        if source.timestamp:
            continue
        results.append(validate_batch(
            table=table, batch_uri=batch_uri(settings.landing_uri, table, None), suite_dir=SUITES,
            report_uri=storage.join(settings.reports_uri, "validation", table, "snapshot.json"),
            interval_start=None, interval_end=None, timestamp_column=None,
            max_file_mb=cfg.validation.max_file_mb, quarantine_uri=settings.quarantine_uri))
    return results


def validate_interval(cfg: Config, settings: Settings, day: date) -> list[dict[str, Any]]:
    """Validate every raw batch a run for `day` reads: `day` and the feature-source lookback."""
    results = []
    for back in range(cfg.features.source_lookback_days, 0, -1):
        earlier = day - timedelta(days=back)
        present = [t for t in cfg.dataset.daily_tables
                   if storage.exists(batch_uri(settings.landing_uri, t, earlier))]
        results += validate_day(cfg, settings, earlier, present) if present else []
    return results + validate_day(cfg, settings, day)
