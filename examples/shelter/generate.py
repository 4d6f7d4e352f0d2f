"""A small synthetic animal-shelter intake table: the second example dataset (examples/shelter).

One row per intake, made to exercise what a real export brings (`python examples/shelter/
generate.py [--out PATH]`, deterministic: the same seed gives the same bytes):

- naive local timestamps (America/Chicago, no offset), across the daylight-saving change of
  3 November 2024, with after-hours intakes in its repeated hour (01:00-02:00 happens twice);
- the outcome on its own date (`outcome_date`, a date without a time), days to months after
  the intake (median 5 days; a long tail: drawn with a 99th percentile near 330 days, about
  175 among the outcomes known at export), and no outcome yet for the animals still in the
  shelter when the table was exported (2025-06-30);
- days without rows (closed on Sundays and on Thanksgiving) and a whole week without any (the
  holiday closure, 23-29 December);
- events recorded twice: about 1% of intakes appear again, re-recorded later (`recorded_at`)
  with a corrected weight;
- a text column that is empty in about half of the weeks (`outcome_subtype`), a birth date to derive an age
  from, and a change in the intake mix from 4 November (more cats, more owner surrenders, more
  nursing litters): the drift the monitor should find.
"""

from __future__ import annotations

import argparse
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

START, END = date(2024, 8, 5), date(2024, 12, 30)  # Mondays: 21 weeks
SHIFT = date(2024, 11, 4)  # the intake mix changes from this day
EXPORTED = datetime(2025, 6, 30, 23, 59)  # outcomes after this are not in the table yet
CLOSED = {date(2024, 11, 28)} | {date(2024, 12, 23) + timedelta(days=i) for i in range(7)}
DST_NIGHT = date(2024, 11, 3)  # 01:00-02:00 local happens twice that night
COLUMNS = ["intake_id", "intake_time", "recorded_at", "animal_type", "intake_type",
           "intake_condition", "birth_date", "weight_kg", "outcome_type", "outcome_subtype",
           "outcome_date"]


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return str(rng.choice(names, p=p / p.sum()))


def _intake(rng: np.random.Generator, day: date, when: datetime) -> dict:
    shifted = day >= SHIFT
    animal = _pick(rng, {"Dog": 0.30, "Cat": 0.55, "Other": 0.15} if shifted else
                   {"Dog": 0.55, "Cat": 0.35, "Other": 0.10})
    kind = _pick(rng, {"Stray": 0.40, "Owner Surrender": 0.50, "Public Assist": 0.10}
                 if shifted else {"Stray": 0.60, "Owner Surrender": 0.30, "Public Assist": 0.10})
    condition = _pick(rng, {"Normal": 0.55, "Injured": 0.08, "Sick": 0.12, "Nursing": 0.25}
                      if shifted else
                      {"Normal": 0.70, "Injured": 0.10, "Sick": 0.12, "Nursing": 0.08})
    young = condition == "Nursing" or rng.random() < 0.25
    age_days = int(rng.integers(14, 120)) if young else int(rng.gamma(2.0, 700) + 120)
    base = {"Dog": 18.0, "Cat": 4.0, "Other": 0.8}[animal] * (0.25 if young else 1.0)
    weight = round(float(base * rng.lognormal(0, 0.35)), 2)
    # adoption: cats and the young more, the sick and injured less, owner surrenders more
    logit = (-0.4 + {"Dog": 0.0, "Cat": 0.5, "Other": -1.2}[animal] + (0.9 if young else 0.0)
             + {"Normal": 0.3, "Injured": -1.1, "Sick": -1.3, "Nursing": 0.4}[condition]
             + {"Stray": -0.3, "Owner Surrender": 0.4, "Public Assist": -0.8}[kind]
             + rng.normal(0, 0.6))
    adopted = rng.random() < 1 / (1 + np.exp(-logit))
    outcome = "Adoption" if adopted else _pick(rng, {
        "Transfer": 0.45, "Return to Owner": 0.35 if kind == "Stray" else 0.05,
        "Euthanasia": 0.08 if condition in ("Sick", "Injured") else 0.01})
    delay = float(rng.lognormal(np.log(5.0), 1.8))  # days: median 5, p99 near 330
    outcome_day = (when + timedelta(days=delay)).date()
    known = datetime.combine(outcome_day, datetime.min.time()) <= EXPORTED
    subtype = "Partner" if outcome == "Transfer" and rng.random() < 0.02 else None
    return {"intake_time": when, "animal_type": animal, "intake_type": kind,
            "intake_condition": condition,
            "birth_date": None if rng.random() < 0.1 else (when - timedelta(days=age_days)).date(),
            "weight_kg": None if rng.random() < 0.05 else weight,
            "outcome_type": outcome if known else None,
            "outcome_subtype": subtype if known else None,
            "outcome_date": outcome_day if known else None}


def generate(seed: int = 7) -> pd.DataFrame:
    """The table, one row per recorded intake (duplicates included), in recording order."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    day = START
    while day < END:
        opening = day.weekday() != 6 and day not in CLOSED  # closed on Sundays
        n = int(rng.poisson(18 if day.weekday() == 5 else 26)) if opening else 0
        times = sorted(datetime.combine(day, datetime.min.time())
                       + timedelta(minutes=int(m)) for m in rng.integers(8 * 60, 19 * 60, n))
        if day == DST_NIGHT:  # after-hours drop-offs in the hour that happens twice
            times = [datetime(2024, 11, 3, 1, 10), datetime(2024, 11, 3, 1, 40),
                     datetime(2024, 11, 3, 1, 55)]
        rows += [_intake(rng, day, t) for t in times]
        day += timedelta(days=1)
    df = pd.DataFrame(rows)
    df.insert(0, "intake_id", [f"A{i:06d}" for i in range(1, len(df) + 1)])
    df["recorded_at"] = df["intake_time"] + pd.to_timedelta(rng.integers(1, 30, len(df)),
                                                             unit="m")
    again = df.sample(frac=0.01, random_state=seed).copy()  # recorded twice, corrected later
    again["recorded_at"] = again["recorded_at"] + pd.to_timedelta(
        rng.integers(1, 4, len(again)), unit="D")
    again["weight_kg"] = (again["weight_kg"] * 1.1).round(2)
    df = pd.concat([df, again]).sort_values("recorded_at", kind="stable")
    for col in ("intake_time", "recorded_at"):
        df[col] = df[col].dt.strftime("%Y-%m-%d %H:%M:%S")  # naive local wall-clock time
    return df[COLUMNS].reset_index(drop=True)


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(here / "data" / "intakes.csv"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df = generate(args.seed)
    df.to_csv(out, index=False)
    print(f"{out}: {len(df)} rows ({df['intake_id'].duplicated().sum()} recorded twice)")


if __name__ == "__main__":
    main()
