"""Small date and timestamp helpers shared by the stages: parsing timestamps to UTC, making
naive local ones timezone-aware (daylight saving time applied), and the interval of each row."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from pipelines.core.intervals import Grain


def to_date(value: str | date | datetime) -> date:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).date() if value.tzinfo else value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def date_range(start: date, end: date) -> list[date]:
    """Days in [start, end)."""
    return [start + timedelta(days=i) for i in range((end - start).days)]


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


_OFFSET = r"(?:Z|[+-]\d{2}:?\d{2})$"


def parse_utc(values: pd.Series, what: str) -> pd.Series:
    """Timestamps with an explicit offset (or tz-aware values) -> UTC; naive ones are rejected.

    `pd.to_datetime(..., utc=True)` would read "2013-01-01 05:00" as UTC without a word; a
    source that means local time must say so.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        raise ValueError(f"{what}: naive timestamps (no time zone); refusing to assume UTC")
    offset = re.compile(_OFFSET)  # a loop: pandas' `str.contains` is one too, with overhead
    naive = [str(v) for v, absent in zip(values.tolist(), values.isna().tolist())
             if not absent and not offset.search(str(v).strip())]
    if naive:
        raise ValueError(f"{what}: {len(naive)} timestamps without a UTC offset, e.g. "
                         f"{naive[:3]}; refusing to assume UTC")
    return pd.to_datetime(values, utc=True, format="ISO8601")


def localize(values: pd.Series, tz: str, what: str, ambiguous: str = "earliest",
             nonexistent: str = "raise", fmt: str | None = None) -> pd.Series:
    """Naive local timestamps (text, dates or datetimes) of zone `tz` as timezone-aware values
    in that zone; values that carry an offset are kept (converted to the zone).

    Where the clocks change, a repeated local time (clocks back) is its `earliest` or `latest`
    occurrence, or refused (`raise`); a skipped one (clocks forward: no clock shows it) is
    refused (`raise`) or moved past the gap (`shift_forward`). A refusal names `what`, how many
    values and examples. `fmt`: the strptime format of the naive text (default ISO 8601).
    """
    import numpy as np

    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert(tz)
    text = values.astype("string").str.strip()
    present = text.notna() & (text != "")
    aware = present & text.str.contains(_OFFSET, regex=True).fillna(False).astype(bool)
    naive = present & ~aware
    out = pd.Series(pd.NaT, index=values.index, dtype=f"datetime64[ns, {tz}]")
    if aware.any():
        out[aware] = pd.to_datetime(text[aware], utc=True, format="ISO8601").dt.tz_convert(tz)
    if naive.any():
        try:
            wall = pd.to_datetime(text[naive], format=fmt or "ISO8601")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{what}: not a timestamp in the format {fmt or 'ISO 8601'}: {exc}"
                             ) from None
        def flags(n: int) -> Any:
            return {"earliest": np.ones(n, bool), "latest": np.zeros(n, bool),
                    "raise": "NaT"}[ambiguous]

        local = wall.dt.tz_localize(tz, ambiguous=flags(len(wall)), nonexistent="NaT").copy()
        gone = local.isna()
        if gone.any():  # skipped (and, under 'raise', repeated) local times
            sub = wall[gone]
            moved = sub.dt.tz_localize(tz, ambiguous=np.ones(len(sub), bool),
                                       nonexistent="shift_forward")
            skipped = moved.dt.tz_localize(None) != sub
            bad = skipped if nonexistent == "raise" else pd.Series(False, index=skipped.index)
            if ambiguous == "raise":
                bad = bad | ~skipped
            if bad.any():
                kind = ("skipped (clocks went forward)" if skipped[bad].all() else
                        "repeated (clocks went back)" if not skipped[bad].any() else
                        "skipped or repeated")
                examples = text[naive][gone][bad].head(3).tolist()
                raise ValueError(
                    f"{what}: {int(bad.sum())} local times that {tz} {kind} on a daylight-saving "
                    f"change, e.g. {examples}; set dst.nonexistent / dst.ambiguous of the source "
                    "to say what they mean")
            local[gone] = moved
        out[naive] = local
    return out


def interval_keys(ts: pd.Series, grain: Grain) -> pd.Series:
    """The key of the interval (`pipelines.core.intervals`) holding each timezone-aware
    timestamp, vectorised (`grain.at(t).key` for every t; missing for a missing one)."""
    utc = ts.dt.tz_convert("UTC")
    if grain.kind == "hourly":
        return utc.dt.floor("h").dt.strftime("%Y-%m-%dT%HZ")
    local_day = pd.to_datetime(utc.dt.tz_convert(grain.timezone).dt.strftime("%Y-%m-%d"))
    if grain.kind == "weekly":
        local_day = local_day - pd.to_timedelta(local_day.dt.weekday, unit="D")
    return local_day.dt.strftime("%Y-%m-%d")
