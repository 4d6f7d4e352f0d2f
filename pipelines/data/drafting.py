"""The suite drafter: a first suite for a table, profiled from its data for a human to review.

`python -m pipelines.cli draft-suite --data <file or glob> --table <name> --out <suite>.json`
runs `profile_suite` through `pipelines.data.validation.draft_suite`. Given a glob of batch
files (`landing/<table>/date=*/<table>.csv`), each file is one batch: the null-share bounds
are learnt from how much of each column is missing batch by batch, not over the whole table.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime

import pandas as pd

from pipelines.core import storage
from pipelines.data.rules import NOT_NULL, expectation

MAX_LEVELS = 20  # string columns with at most this many distinct values get a value set
STRING_TYPES = ["object", "StringDtype", "str"]
NUMERIC_TYPES = ["int64", "float64"]  # an integer column with a missing value reads as float64
# The null-share bound of a column (expect_column_values_to_not_be_null with `mostly`): the
# drafter measures the share of non-null values of the column in every batch, takes the lowest
# (the worst batch seen) and multiplies it by NULL_MARGIN, rounding down to 4 decimals. So a
# batch fails when fewer than half as many of its values are present as in the worst batch of
# the drafting data: headroom for an unusual day, whatever the batch size, that still fails on
# a column a broken export left empty. A column never null in the drafting data gets a plain
# not-null check (required); one entirely empty in some batch gets no bound (the only bound
# every batch met would be mostly=0, which cannot fail): it is listed in meta.review instead.
NULL_MARGIN = 0.5
_GLOB = ("*", "?", "[")


def batch_uris(data_uri: str) -> list[str]:
    """The files `data_uri` names: itself, or every file its glob pattern matches, sorted."""
    if not any(c in data_uri for c in _GLOB):
        return [data_uri]
    fs, path = storage.resolve(data_uri)
    found = sorted(p for p in fs.glob(path) if fs.isfile(p))
    if not found:
        raise FileNotFoundError(f"{data_uri}: no file matches this pattern")
    protocol = storage.protocol_of(data_uri)
    local = storage.is_local(data_uri)
    return [p if local else f"{protocol}://{p}" for p in found]


def batch_labels(uris: list[str]) -> dict[str, str]:
    """Short names of batch files for notes and messages: the path below their common folder."""
    base = os.path.dirname(uris[0]) if len(uris) == 1 else os.path.commonpath(uris)
    return {uri: uri[len(base):].lstrip("/") or uri for uri in uris}


def _looks_like_timestamps(values: pd.Series) -> bool:
    sample = values.astype(str).head(200)
    return bool(pd.to_datetime(sample, errors="coerce", format="ISO8601", utc=True).notna().all())


def null_bound(present: pd.Series) -> tuple[float | None, str]:
    """`mostly` for one column from its non-null share per batch (1.0: required; None: no bound
    can fail without failing a batch of the drafting data), and a note saying where it came from."""
    lowest = float(present.min())
    batches = f"{len(present)} batch{'es' if len(present) != 1 else ''}"
    if lowest == 1:
        return 1.0, f"never null in {batches}"
    null = 1 - present
    seen = (f"null share per batch: worst {null.max():.2%} ({present.idxmin()}), median "
            f"{null.median():.2%}, over {batches}")
    mostly = math.floor(lowest * NULL_MARGIN * 10_000) / 10_000
    if mostly <= 0:
        return None, seen
    return mostly, (f"{seen}; mostly = {NULL_MARGIN} x the lowest non-null share "
                    f"({lowest:.2%}), rounded down")


def _same_columns(batches: dict[str, pd.DataFrame]) -> list[str]:
    names = list(batches)
    columns = list(batches[names[0]].columns)
    for name in names[1:]:
        if list(batches[name].columns) != columns:
            raise ValueError(f"{name} has columns {list(batches[name].columns)}, but {names[0]} "
                             f"has {columns}: draft a suite from batches of one layout")
    return columns


def _value_checks(col: str, s: pd.Series, non_null: pd.Series,
                  empty_in_a_batch: bool = False) -> list[dict]:
    """Type, range and value-set checks of one column, from all its values. A text column
    entirely empty in some batch is read as float64 there (pandas has no other type for a
    column of blanks), so that batch's type is allowed too."""
    if pd.api.types.is_bool_dtype(s):
        return [expectation("expect_column_values_to_be_in_type_list", column=col,
                            type_list=["bool"])]
    if pd.api.types.is_numeric_dtype(s):
        types = list(dict.fromkeys([s.dtype.name, *NUMERIC_TYPES]))
        lo, hi = float(non_null.min()), float(non_null.max())
        margin = 0.1 * (hi - lo) or 0.1 * abs(hi) or 1.0
        low, high = (max(0.0, lo - margin) if lo >= 0 else lo - margin), hi + margin
        digits = 0 if pd.api.types.is_integer_dtype(s) else 6  # round outwards
        low = math.floor(low * 10**digits) / 10**digits
        high = math.ceil(high * 10**digits) / 10**digits
        if not digits:
            low, high = int(low), int(high)
        return [expectation("expect_column_values_to_be_in_type_list", column=col,
                            type_list=types),
                expectation("expect_column_values_to_be_between", column=col,
                            min_value=low, max_value=high)]
    if not non_null.map(type).eq(str).all():
        return []
    exps = [expectation("expect_column_values_to_be_in_type_list", column=col,
                        type_list=STRING_TYPES + (["float64"] if empty_in_a_batch else []))]
    if empty_in_a_batch:
        exps[-1]["meta"]["notes"] = ("float64: a batch where this text column is entirely empty "
                                     "reads it as float64")
    levels = non_null.unique()
    if len(levels) <= min(MAX_LEVELS, len(non_null) / 2) and not _looks_like_timestamps(non_null):
        exps.append(expectation("expect_column_values_to_be_in_set", column=col,
                                value_set=sorted(levels)))
    return exps


def profile_suite(batches: dict[str, pd.DataFrame], table: str) -> dict:
    """A draft suite from a table's batches (name -> rows; one name for a single file): a
    starting point for a human to review, not a verdict."""
    columns = _same_columns(batches)
    # the share of non-null values per batch and column (empty batches say nothing about it)
    present = pd.DataFrame({name: b.notna().mean() for name, b in batches.items() if len(b)}).T
    quiet = [name for name, b in batches.items() if not len(b)]
    exps = [expectation("expect_table_columns_to_match_set", column_set=columns,
                        exact_match=True),
            expectation("expect_table_row_count_to_be_between", min_value=0 if quiet else 1)]
    if quiet:  # intervals without rows happen in this table: an empty batch is valid
        exps[-1]["meta"]["notes"] = (f"{len(quiet)} of {len(batches)} batches have no rows "
                                     f"(e.g. {quiet[0]}): a quiet interval is valid")
    empty, unbounded = [], []
    for col in columns:
        # its values in every batch that has any (an all-empty batch says nothing of the type)
        parts = [b[col] for b in batches.values() if b[col].notna().any()]
        s = pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=object)
        non_null = s.dropna()
        if non_null.empty:
            empty.append(col)
            continue
        mostly, note = null_bound(present[col])
        if mostly is None:
            unbounded.append(f"{col} ({note})")
        elif mostly == 1:
            exps.append(expectation(NOT_NULL, column=col))
        else:
            exps.append(expectation(NOT_NULL, column=col, mostly=mostly))
            exps[-1]["meta"]["notes"] = note
        exps += _value_checks(col, s, non_null, bool((present[col] == 0).any()))
    review = ("Drafted by pipelines.data.validation.draft_suite: tighten or loosen the bounds "
              "(a column's null share: kwargs.mostly), and set meta.on_failure to 'warn' where a "
              "violation should not stop the pipeline.")
    if unbounded:
        review += (" No null-share bound for columns entirely empty in some batch: "
                   + "; ".join(unbounded) + ".")
    if empty:
        review += f" No checks at all for columns empty in every batch: {', '.join(empty)}."
    meta = {"drafted_at": datetime.now(UTC).isoformat(),
            "drafted_from_rows": sum(map(len, batches.values())),
            "drafted_from_batches": len(present), "null_margin": NULL_MARGIN, "review": review}
    return {"name": table, "expectations": exps, "meta": meta}
