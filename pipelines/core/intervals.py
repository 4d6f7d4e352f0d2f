"""Data intervals: the unit every scheduled stage works on (a batch, a partition, a run).

The grain comes from params.yaml `orchestration.interval` (hourly | daily | weekly) and
`orchestration.timezone` (an IANA zone; daylight saving time applied): a daily interval in
America/Chicago runs from local midnight to local midnight (23 or 25 hours on the days the
clocks change), a weekly one from Monday 00:00 local to the next Monday. Each interval has a
partition name (`locations.partition`):

    daily   date=YYYY-MM-DD        the local date (daily UTC: exactly the layout of before)
    weekly  week=YYYY-MM-DD        the local date of its Monday
    hourly  hour=YYYY-MM-DDTHHZ    its UTC start (a local hour repeats when clocks go back)

Windows in the configuration stay in days (`training.window_days`, `drift.window_days`, ...): a
window of N days ending with an interval is the intervals that start within the N days before
its end. Standard library only: DAG files import it at parse time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

KINDS = ("hourly", "daily", "weekly")
PREFIX = {"hourly": "hour", "daily": "date", "weekly": "week"}
CRON = {"hourly": "0 * * * *", "daily": "0 0 * * *", "weekly": "0 0 * * 1"}
NOMINAL = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(days=7)}


@dataclass(frozen=True, order=True)
class Interval:
    """[start, end) in UTC, and the name of its partition (`<prefix>=<key>`)."""

    start: datetime
    end: datetime
    key: str  # e.g. 2013-06-01, 2024-09-02, 2024-11-03T06Z
    prefix: str = "date"
    nominal_days: float = 1.0  # its length by the calendar (a 23-hour DST day counts as 1)

    @property
    def last(self) -> datetime:
        """Its last instant (`end` minus 1 µs): what a closed window over it ends at. Feast's
        materialisation and the point-in-time join both include their end; the row stamped
        exactly at `end` belongs to the next interval and may not have landed yet."""
        return self.end - timedelta(microseconds=1)

    @property
    def label(self) -> str:
        """The partition folder name (`date=2013-06-01`)."""
        return f"{self.prefix}={self.key}"

    def isoformat(self) -> str:
        """The key: what records, reports and asset events call the interval."""
        return self.key

    def __str__(self) -> str:
        return self.key


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as "
                         "'America/Chicago', or 'UTC')") from None


@dataclass(frozen=True)
class Grain:
    """How time is cut into intervals: hourly, daily or weekly, in a time zone."""

    kind: str = "daily"
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"interval {self.kind!r}: expected one of {', '.join(KINDS)}")
        zone(self.timezone)

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)

    @property
    def cron(self) -> str:
        """The cron expression of a schedule with one run per interval (in `timezone`)."""
        return CRON[self.kind]

    @property
    def length(self) -> timedelta:
        """The nominal length (a calendar day or week; an hour)."""
        return NOMINAL[self.kind]

    # -- from a point in time --------------------------------------------------------------

    def _local_midnight(self, day: date) -> datetime:
        return datetime.combine(day, time(0), tzinfo=self.tz).astimezone(UTC)

    def _utc(self, ts: datetime) -> datetime:
        if ts.tzinfo is None:
            raise ValueError(f"{ts!r} is a naive datetime: an interval needs a time zone")
        return ts.astimezone(UTC)

    def at(self, ts: datetime) -> Interval:
        """The interval that holds the instant `ts` (timezone-aware)."""
        ts = self._utc(ts)
        if self.kind == "hourly":  # hours of UTC (the same instants as local hours in every
            start = ts.replace(minute=0, second=0, microsecond=0)  # zone of whole-hour offsets)
            return Interval(start, start + timedelta(hours=1), start.strftime("%Y-%m-%dT%HZ"),
                            "hour", 1 / 24)
        local_day = ts.astimezone(self.tz).date()
        if self.kind == "weekly":
            local_day -= timedelta(days=local_day.weekday())
            end_day = local_day + timedelta(days=7)
        else:
            end_day = local_day + timedelta(days=1)
        return Interval(self._local_midnight(local_day), self._local_midnight(end_day),
                        local_day.isoformat(), PREFIX[self.kind], NOMINAL[self.kind].days)

    def interval(self, value: Interval | date | datetime | str) -> Interval:
        """An interval from what callers hold: an Interval (as is), an aware datetime (the
        interval holding it), a date (the interval holding its local midnight), a key or a
        partition name (`2013-06-01`, `week=2024-09-02`, `2024-11-03T06Z`)."""
        if isinstance(value, Interval):
            if value.prefix != PREFIX[self.kind]:
                raise ValueError(f"{value.label} is not a {self.kind} interval")
            return value
        if isinstance(value, datetime):
            return self.at(value)
        if isinstance(value, date):
            return self.at(self._local_midnight(value))
        text = str(value).strip()
        if "=" in text:
            prefix, text = text.split("=", 1)
            if prefix != PREFIX[self.kind]:
                raise ValueError(f"{value!r} is not a {self.kind} partition ({PREFIX[self.kind]}=...)")
        if len(text) == 10:
            return self.interval(date.fromisoformat(text))
        try:
            ts = (datetime.strptime(text, "%Y-%m-%dT%HZ").replace(tzinfo=UTC)  # 2024-11-03T06Z
                  if len(text) == 14 and text.endswith("Z") else datetime.fromisoformat(text))
        except ValueError:
            raise ValueError(f"{value!r} names no interval (a date, an ISO time with an offset, "
                             "or a partition name)") from None
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=self.tz)
        return self.at(ts)

    # -- neighbours and spans --------------------------------------------------------------

    def next(self, iv: Interval) -> Interval:
        return self.at(iv.end)

    def previous(self, iv: Interval) -> Interval:
        return self.at(iv.start - timedelta(microseconds=1))

    def between(self, start: datetime, end: datetime) -> list[Interval]:
        """The intervals that overlap [start, end) (aware datetimes), in order."""
        out: list[Interval] = []
        if self._utc(end) <= self._utc(start):
            return out
        iv = self.at(start)
        while iv.start < self._utc(end):
            out.append(iv)
            iv = self.next(iv)
        return out

    def days(self, start: date, end: date) -> list[Interval]:
        """The intervals that overlap the local days [start, end)."""
        return self.between(self._local_midnight(start), self._local_midnight(end))

    def count(self, days: float) -> int:
        """How many intervals make `days` days (at least one)."""
        return max(1, math.ceil(round(days / (self.length / timedelta(days=1)), 9)))

    def window(self, iv: Interval, days: float, first: Interval | None = None) -> list[Interval]:
        """The intervals of the `days` days ending with `iv` (newest first; `count(days)` of
        them, calendar days: DST does not change how many), none before `first`."""
        out, cur = [], iv
        for _ in range(self.count(days)):
            if first is not None and cur.start < first.start:
                break
            out.append(cur)
            cur = self.previous(cur)
        return out

    @property
    def schedule_timezone(self) -> str:
        """The zone of the schedule's cron: the grain's (hourly: UTC, its hours)."""
        return "UTC" if self.kind == "hourly" else self.timezone

    def bound(self, text: str | date) -> datetime:
        """A window bound as an instant: a date (`2024-09-02`) is its local midnight, an hour
        (`2024-11-03T06Z`, `bound_text`'s form) or an ISO time with an offset is that time."""
        if isinstance(text, date) and not isinstance(text, datetime):
            return self._local_midnight(text)
        text = str(text).strip()
        if len(text) == 10:
            return self._local_midnight(date.fromisoformat(text))
        if len(text) == 14 and text.endswith("Z"):
            return datetime.strptime(text, "%Y-%m-%dT%HZ").replace(tzinfo=UTC)
        ts = datetime.fromisoformat(text)
        if ts.tzinfo is None:
            raise ValueError(f"window bound {text!r}: a date, or a time with an offset")
        return ts.astimezone(UTC)

    def bound_text(self, ts: datetime) -> str:
        """How a window bound is written (in names and records): the local date when it is a
        local midnight, else its UTC hour (`2024-11-03T06Z`)."""
        utc = self._utc(ts)
        local = utc.astimezone(self.tz)
        if self._local_midnight(local.date()) == utc:
            return local.date().isoformat()
        if utc.minute or utc.second or utc.microsecond:
            raise ValueError(f"window bound {utc.isoformat()}: a local midnight or a whole hour")
        return utc.strftime("%Y-%m-%dT%HZ")

    def day_start(self, day: date) -> datetime:
        """Local midnight of `day` as a UTC instant (where a window given in dates starts)."""
        return self._local_midnight(day)


DAILY_UTC = Grain("daily", "UTC")


@lru_cache(maxsize=16)
def grain(kind: str, timezone: str) -> Grain:
    return Grain(kind, timezone)


def as_interval(value: Interval | date) -> Interval:
    """An Interval as is; a bare date is the daily UTC interval of that date (the layout the
    stages had before intervals were configurable: callers with a config convert first)."""
    return value if isinstance(value, Interval) else DAILY_UTC.interval(value)
