"""The published predictions, read back: one partition as a frame, or all as a DuckDB table;
and the online server's prediction log, read back in the same shape.

Readers trust only the files a partition's manifest names: files of runs in progress or killed
are never read. The prediction log has no manifest: each part is written atomically by one
server worker, so every part present is complete.
"""

from __future__ import annotations

from datetime import UTC, date
from typing import TYPE_CHECKING

import pandas as pd

from pipelines.core import duck, locations, storage
from pipelines.core.intervals import Interval
from pipelines.core.locations import When
from pipelines.core.settings import Settings
from pipelines.data.events import PREDICTION_TIME, ROW_KEY
from pipelines.scoring.io import read_manifest, read_table
from pipelines.scoring.parts import PROBABILITY

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


def read_partition(settings: Settings, day: When) -> pd.DataFrame:
    """The published predictions of an interval (only the files its manifest names)."""
    import pyarrow as pa

    manifest = read_manifest(settings, day)
    if manifest is None:
        raise FileNotFoundError(f"no published prediction partition for {day}")
    base = locations.predictions(settings, day)
    tables = [read_table(storage.join(base, f)) for f in manifest["files"]]
    return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame()


def read_contributions(settings: Settings, day: When) -> pd.DataFrame:
    """The per-row top contributions published beside an interval's predictions
    (`scoring.explain_top_k`; `parts.contributions_schema`), in the partition's row order."""
    import pyarrow as pa

    manifest = read_manifest(settings, day)
    if manifest is None:
        raise FileNotFoundError(f"no published prediction partition for {day}")
    if not manifest.get("contributions"):
        raise FileNotFoundError(f"the partition of {day} was published without contributions "
                                f"(scoring.explain_top_k was 0)")
    base = locations.predictions(settings, day)
    files = manifest["contributions"]["files"]
    return pa.concat_tables([read_table(storage.join(base, f)) for f in files]).to_pandas()


# What a prediction-log row holds besides the columns of a prediction partition
# (`parts.output_schema`): the V2 request id, the alias that served it, the server-side time from
# request to response, and when it was served.
# the shadow's answer beside the primary's in the same record (null when not mirrored)
SHADOW_COLUMNS = ("shadow_variant", "shadow_version", "shadow_probability", "shadow_status")
LOG_COLUMNS = ("request_id", "variant", "latency_ms", "served_at", *SHADOW_COLUMNS)


def log_records(settings: Settings, day: date) -> pa.Table:
    """Every record of the prediction log for events of `day` (each request's rows, a key
    served twice twice), in no particular order; raises FileNotFoundError if there is none."""
    import pyarrow as pa

    base = locations.prediction_log(settings, day)
    names = sorted(n for n in storage.listdir(base) if n.endswith(".parquet")
                   and not n.startswith("."))  # ".tmp-*": a write in progress
    if not names:
        raise FileNotFoundError(f"no online predictions logged for {day} under {base}")
    return pa.concat_tables([read_table(storage.join(base, n)) for n in names],
                            promote_options="default")  # versions with other inputs: by name


def read_log(settings: Settings, day: date, variant: str | None = "champion",
             extra: bool = False) -> pd.DataFrame:
    """The online predictions of events of `day`, as `read_partition` returns batch ones.

    One row per row key (a key served twice: the later answer), ordered as a partition is (by
    prediction time, then row key), with the partition's columns and dtypes; `extra` adds
    LOG_COLUMNS. `variant`: only the rows the given alias served (None: all of them).
    """
    import pyarrow.compute as pc

    table = log_records(settings, day)
    if variant is not None:
        table = table.filter(pc.equal(table["variant"], variant))
    frame = table.to_pandas()
    frame = frame.sort_values("served_at", kind="stable").drop_duplicates(ROW_KEY, keep="last")
    frame = frame.sort_values([PREDICTION_TIME, ROW_KEY], kind="stable").reset_index(drop=True)
    return frame if extra else frame.drop(columns=list(LOG_COLUMNS))


def read_log_interval(settings: Settings, iv: Interval, variant: str | None = "champion"
                      ) -> pd.DataFrame:
    """The online predictions of the events of an interval (`read_log` of every UTC day it
    overlaps, cut to its events); empty when none were logged."""
    from datetime import timedelta

    first, last = iv.start.astimezone(UTC).date(), iv.last.astimezone(UTC).date()
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    frames = []
    for day in days:
        try:
            frames.append(read_log(settings, day, variant))
        except FileNotFoundError:
            continue  # no request for events of that day
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    inside = (frame["event_time"] >= pd.Timestamp(iv.start)) & \
        (frame["event_time"] < pd.Timestamp(iv.end))
    return frame[inside].reset_index(drop=True)


def published_files(settings: Settings, start: date | None = None,
                    end: date | None = None) -> list[str]:
    """URIs of every file a published manifest names, for days in [start, end)."""
    uris = []
    for name in storage.listdir(settings.predictions_uri):
        if not name.startswith("date="):
            continue
        day = date.fromisoformat(name[len("date="):])
        if (start and day < start) or (end and day >= end):
            continue
        manifest = read_manifest(settings, day)
        if manifest is not None:
            uris += [storage.join(settings.predictions_uri, name, f) for f in manifest["files"]]
    return uris


def predictions_relation(settings: Settings, con: duckdb.DuckDBPyConnection | None = None,
                         start: date | None = None, end: date | None = None
                         ) -> duckdb.DuckDBPyRelation:
    """The published predictions as one DuckDB relation, with a `date` column.

    A snapshot: it names the files the manifests name now; files of runs in progress or killed
    are never read. Partitions scored by versions with different inputs are unioned by name.
    """
    con = duck.connect(con)
    uris = published_files(settings, start, end)
    if not uris:
        return con.sql(f"SELECT NULL::VARCHAR AS {ROW_KEY}, NULL::DOUBLE AS {PROBABILITY}, "
                       "NULL::VARCHAR AS model_version, NULL::DATE AS date WHERE false")
    return con.read_parquet([duck.readable(con, u) for u in uris], hive_partitioning=True,
                            union_by_name=True)


def create_predictions_view(con: duckdb.DuckDBPyConnection, settings: Settings,
                            name: str = "predictions") -> None:
    """`CREATE VIEW <name>` over the published predictions (see `predictions_relation`)."""
    predictions_relation(settings, con).create_view(name, replace=True)
