"""The suite drafter: a first suite for a table, profiled from its data for a human to review.

`python -m pipelines.cli draft-suite --data <file> --table <name> --out expectations/<name>.json`
runs `profile_suite` through `pipelines.data.validation.draft_suite`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pandas as pd

from pipelines.data.rules import expectation

MAX_LEVELS = 20  # string columns with at most this many distinct values get a value set
STRING_TYPES = ["object", "StringDtype", "str"]
NUMERIC_TYPES = ["int64", "float64"]  # an integer column with a missing value reads as float64


def _looks_like_timestamps(values: pd.Series) -> bool:
    sample = values.astype(str).head(200)
    return bool(pd.to_datetime(sample, errors="coerce", format="ISO8601", utc=True).notna().all())


def profile_suite(df: pd.DataFrame, table: str) -> dict:
    """A draft suite from one table's data: a starting point for a human to review, not a verdict."""
    exps = [expectation("expect_table_columns_to_match_set", column_set=list(df.columns), exact_match=True),
            expectation("expect_table_row_count_to_be_between", min_value=1)]
    for col in df.columns:
        s, non_null = df[col], df[col].dropna()
        if non_null.empty:
            continue
        if len(non_null) == len(s):
            exps.append(expectation("expect_column_values_to_not_be_null", column=col))
        if pd.api.types.is_bool_dtype(s):
            exps.append(expectation("expect_column_values_to_be_in_type_list", column=col, type_list=["bool"]))
        elif pd.api.types.is_numeric_dtype(s):
            types = list(dict.fromkeys([s.dtype.name, *NUMERIC_TYPES]))
            exps.append(expectation("expect_column_values_to_be_in_type_list", column=col, type_list=types))
            lo, hi = float(non_null.min()), float(non_null.max())
            margin = 0.1 * (hi - lo) or 0.1 * abs(hi) or 1.0
            low, high = (max(0.0, lo - margin) if lo >= 0 else lo - margin), hi + margin
            digits = 0 if pd.api.types.is_integer_dtype(s) else 6  # round outwards
            low = math.floor(low * 10**digits) / 10**digits
            high = math.ceil(high * 10**digits) / 10**digits
            if not digits:
                low, high = int(low), int(high)
            exps.append(expectation("expect_column_values_to_be_between", column=col,
                             min_value=low, max_value=high))
        elif non_null.map(type).eq(str).all():
            exps.append(expectation("expect_column_values_to_be_in_type_list", column=col,
                             type_list=STRING_TYPES))
            levels = non_null.unique()
            if len(levels) <= min(MAX_LEVELS, len(non_null) / 2) and not _looks_like_timestamps(non_null):
                exps.append(expectation("expect_column_values_to_be_in_set", column=col,
                                 value_set=sorted(levels)))
    meta = {"drafted_at": datetime.now(UTC).isoformat(), "drafted_from_rows": len(df),
            "review": "Drafted by pipelines.data.validation.draft_suite: tighten or loosen the bounds, and "
                      "set meta.on_failure to 'warn' where a violation should not stop the pipeline."}
    return {"name": table, "expectations": exps, "meta": meta}
