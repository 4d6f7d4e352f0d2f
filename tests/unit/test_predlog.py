"""The prediction log's rows: requests handed over as records, made into Arrow rows by the
log's thread many at a time, must be the rows each request would make alone, and a flush
writes every one of them, partitioned by event day."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.core.settings import get_settings
from pipelines.scoring.inputs import prepare_inputs
from pipelines.scoring.table import log_records
from pipelines.serving.predlog import LogRecord, PredictionLog, log_table

MODEL = {"model": "m", "version": "3", "numeric": ["x"], "categorical": ["c"]}


def _record(keys: list[str], days: list[str], request_id: str, latency_s: float,
            shadow=None) -> LogRecord:
    n = len(keys)
    at = pd.to_datetime([f"{d}T12:00:00Z" for d in days], utc=True)
    rows = pd.DataFrame({"row_key": keys, "event_time": at, "event_timestamp": at,
                         "x": np.arange(n, dtype=float) + (np.nan if n > 1 else 0.0),
                         "c": ["a", None, "b"][:n]})
    inputs, _ = prepare_inputs(rows, ["x"], ["c"], "impute")
    return LogRecord(inputs, np.linspace(0.1, 0.9, n), MODEL, request_id, "champion",
                     latency_s, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), shadow)


def _records() -> list[LogRecord]:
    return [_record(["k1", "k2"], ["2013-06-01", "2013-06-02"], "r1", 0.0041234),
            _record(["k3"], ["2013-06-01"], "r2", 0.002, ("challenger", "4", np.array([0.3]),
                                                          "ok")),
            _record(["k4", "k5", "k6"], ["2013-06-02"] * 3, "r3", 0.01,
                    ("challenger", "4", None, "timeout"))]


def test_requests_made_into_rows_together_are_the_rows_each_makes_alone():
    records = _records()
    together = log_table(records)
    alone = pa.concat_tables([log_table([r]) for r in records])
    assert together.combine_chunks().equals(alone.combine_chunks())
    assert together["request_id"].to_pylist() == ["r1", "r1", "r2", "r3", "r3", "r3"]
    assert together["latency_ms"].to_pylist() == [4.123, 4.123, 2.0, 10.0, 10.0, 10.0]
    assert together["shadow_probability"].to_pylist() == [None, None, 0.3, None, None, None]
    assert together["shadow_status"].to_pylist() == [None, None, "ok", *["timeout"] * 3]
    assert together["row_key"].to_pylist() == ["k1", "k2", "k3", "k4", "k5", "k6"]
    assert together["model_version"].to_pylist() == ["3"] * 6
    assert together["c"].to_pylist() == ["a", None, "a", "a", None, "b"]


def test_a_flush_writes_every_row_once_by_event_day(tmp_path):
    settings = dataclasses.replace(get_settings(), data_uri=str(tmp_path / "data"))
    log = PredictionLog(settings, batch_rows=10**6, flush_seconds=3600)
    for record in _records():
        log.append(record)
    assert log.flush() == 6
    assert log.flush() == 0  # nothing twice
    day1 = log_records(settings, datetime(2013, 6, 1).date())
    day2 = log_records(settings, datetime(2013, 6, 2).date())
    assert sorted(day1["row_key"].to_pylist()) == ["k1", "k3"]
    assert sorted(day2["row_key"].to_pylist()) == ["k2", "k4", "k5", "k6"]
