"""Small date helpers shared by the stages (all times are UTC)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pandas as pd


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
    text = values.astype("string")
    naive = text.notna() & ~text.str.strip().str.contains(_OFFSET, regex=True)
    if naive.any():
        examples = text[naive].head(3).tolist()
        raise ValueError(f"{what}: {int(naive.sum())} timestamps without a UTC offset, e.g. "
                         f"{examples}; refusing to assume UTC")
    return pd.to_datetime(values, utc=True, format="ISO8601")
