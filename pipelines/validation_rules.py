"""The parts of batch validation that know about rules: suites, GX runs, timestamp checks, reports.

Every check ends up as one flat "check record" (a small JSON-able dict), whether it came from a
Great Expectations expectation or from the timestamp checks done here in code:

    {"check": "expect_...", "column": "distance", "on_failure": "fail" | "warn", "success": bool,
     "observed": "...", "unexpected_count": int | None, "examples": ["..."], "error": str | None}
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from pipelines import storage

POLICIES = ("fail", "warn")
MAX_EXAMPLES = 5
MAX_LEVELS = 20  # draft_suite: string columns with at most this many distinct values get a value set
STRING_TYPES = ["object", "StringDtype", "str"]
NUMERIC_TYPES = ["int64", "float64"]  # an integer column with a missing value reads as float64
# an explicit zone designator right after the time part ("...T10:00:00Z", "...10:00+05:30")
_TZ_SUFFIX = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"


def load_suite(suite_dir: str, table: str) -> tuple[dict, str]:
    """The suite JSON for `table` and the sha256 of its bytes; rejects unknown on_failure policies."""
    uri = storage.join(suite_dir, f"{table}.json")
    raw = storage.read_bytes(uri)
    suite = json.loads(raw.decode("utf-8"))
    for i, exp in enumerate(suite.get("expectations", [])):
        policy = (exp.get("meta") or {}).get("on_failure", "fail")
        if policy not in POLICIES:
            raise ValueError(f"{uri}: expectation {i} ({exp.get('type')}) has meta.on_failure="
                             f"{policy!r}; allowed values are {POLICIES}")
    return suite, hashlib.sha256(raw).hexdigest()


def _gx_suite(suite: dict):
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    expectations = []
    for i, exp in enumerate(suite.get("expectations", [])):
        fields = {k: exp[k] for k in ("type", "kwargs", "meta", "notes", "description") if k in exp}
        try:  # build each one here: ExpectationSuite(...) would only log an invalid expectation
            expectations.append(ExpectationConfiguration(**fields).to_domain_obj())
        except Exception as exc:
            raise ValueError(f"suite {suite.get('name')!r}: expectation {i} ({exp.get('type')}) "
                             f"is not valid: {exc}") from exc
    return ExpectationSuite(name=suite.get("name") or "suite", expectations=expectations)


def run_gx(df: pd.DataFrame, suite: dict) -> list[dict]:
    """Validate the whole dataframe with the suite in an ephemeral GX context; one record per check."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    gx_suite = _gx_suite(suite)
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(project_config=config, mode="ephemeral")
    asset = context.data_sources.add_pandas("landing").add_dataframe_asset("batch")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
        batch_parameters={"dataframe": df})
    result = batch.validate(gx_suite, result_format={
        "result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES})
    records = [_record(r.to_json_dict()) for r in result.results]
    for rec in records:  # GX's own words for a missing column vary by expectation
        if rec["error"] and rec["kwargs"].get("column") not in (None, *df.columns):
            rec["error"] = f"column {rec['kwargs']['column']!r} is not in the batch"
    return sorted(records, key=lambda r: (r["column"] != "(table)", r["column"], r["check"]))


def _example(value: Any, index: Any = None) -> str:
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{k}={v!r}" for k, v in value.items()) + "}"
    elif isinstance(value, float) and math.isnan(value):
        text = "NaN"
    else:
        text = repr(value)
    return text if index is None else f"{text} at row {int(index) + 1}"


def _record(r: dict) -> dict:
    cfg = r.get("expectation_config") or {}
    kwargs = {k: v for k, v in (cfg.get("kwargs") or {}).items() if k != "batch_id"}
    res = r.get("result") or {}
    info = r.get("exception_info") or {}
    infos = [info] if "raised_exception" in info else list(info.values())
    errors = sorted({str(i.get("exception_message")) for i in infos
                     if isinstance(i, dict) and i.get("raised_exception")})
    column = kwargs.get("column") or ", ".join(kwargs.get("column_list") or []) or (
        ", ".join(str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs) or "(table)")
    examples: list[str] = []
    mismatched = (res.get("details") or {}).get("mismatched") or {}
    if mismatched:
        examples = [f"missing column {c!r}" for c in mismatched.get("missing") or []]
        examples += [f"unexpected column {c!r}" for c in mismatched.get("unexpected") or []]
    elif res.get("partial_unexpected_list"):
        idx = res.get("partial_unexpected_index_list") or []
        values = res["partial_unexpected_list"][:MAX_EXAMPLES]
        examples = [_example(v, idx[i] if i < len(idx) else None) for i, v in enumerate(values)]
    if "observed_value" in res:
        observed = res["observed_value"]
    elif "unexpected_count" in res:
        observed = (f"{res['unexpected_count']} of {res.get('element_count')} values unexpected "
                    f"({res.get('unexpected_percent') or 0:.2f}%)")
    else:
        observed = "not evaluated" if errors else None
    return {"check": cfg.get("type"), "column": column, "kwargs": kwargs,
            "on_failure": (cfg.get("meta") or {}).get("on_failure", "fail"),
            "success": bool(r.get("success")) and not errors, "observed": observed,
            "unexpected_count": res.get("unexpected_count"), "examples": examples[:MAX_EXAMPLES * 2],
            "error": "; ".join(errors) or None}


def as_utc(value: datetime | str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _mask_record(check: str, column: str, mask: pd.Series, values: pd.Series, what: str) -> dict:
    bad = mask.fillna(True).astype(bool)
    n = int(bad.sum())
    examples = [_example(values[i], i) for i in bad[bad].index[:MAX_EXAMPLES]]
    return {"check": check, "column": column, "kwargs": {}, "on_failure": "fail", "success": n == 0,
            "observed": f"{n} of {len(values)} values {what}", "unexpected_count": n,
            "examples": examples[:MAX_EXAMPLES], "error": None}


def timestamp_checks(df: pd.DataFrame, column: str, start: datetime | str | None,
                     end: datetime | str | None) -> list[dict]:
    """Timestamps are timezone-aware UTC and inside [start, end). A naive start/end counts as UTC."""
    if column not in df.columns:
        return []  # the suite's column-set expectation reports the missing column
    values = df[column].reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values):
        aware = pd.Series(getattr(values.dtype, "tz", None) is not None, index=values.index)
        parsed = values.dt.tz_convert("UTC") if aware.all() else values.dt.tz_localize("UTC")
    else:
        text = values.astype("string").str.strip()
        aware = text.str.contains(_TZ_SUFFIX, regex=True).fillna(False).astype(bool)
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    checks = [_mask_record("expect_column_values_to_be_timezone_aware_utc_timestamps", column,
                           ~(aware & parsed.notna()), values, "missing, unparseable or timezone-naive")]
    if start is not None and end is not None:
        start_ts, end_ts = as_utc(start), as_utc(end)
        checks.append(_mask_record("expect_column_values_to_not_be_before_interval_start", column,
                                   parsed < start_ts, values, f"before {start_ts.isoformat()}"))
        checks.append(_mask_record("expect_column_values_to_be_before_interval_end", column,
                                   parsed >= end_ts, values,
                                   f"at or after the interval end {end_ts.isoformat()}"))
    return checks


def input_failure(check: str, message: str) -> dict:
    """A record for a file that could not be read as a table at all (size, encoding, CSV syntax)."""
    return {"check": check, "column": "(file)", "kwargs": {}, "on_failure": "fail",
            "success": False, "observed": message, "unexpected_count": None, "examples": [],
            "error": None}


def describe(rec: dict) -> str:
    """One plain-words line for a check record."""
    where = {"(table)": "table", "(file)": "file"}.get(rec["column"], f"column {rec['column']}")
    text = f"{where}: {rec['check']} failed; observed: {rec['observed']}"
    if rec.get("examples"):
        text += "; examples: " + ", ".join(rec["examples"])
    if rec.get("error"):
        text += f"; error: {rec['error']}"
    return text


def _exp(type_: str, on_failure: str = "fail", **kwargs: Any) -> dict:
    return {"type": type_, "kwargs": kwargs, "meta": {"on_failure": on_failure}}


def _looks_like_timestamps(values: pd.Series) -> bool:
    sample = values.astype(str).head(200)
    return bool(pd.to_datetime(sample, errors="coerce", format="ISO8601", utc=True).notna().all())


def profile_suite(df: pd.DataFrame, table: str) -> dict:
    """A draft suite from one table's data: a starting point for a human to review, not a verdict."""
    exps = [_exp("expect_table_columns_to_match_set", column_set=list(df.columns), exact_match=True),
            _exp("expect_table_row_count_to_be_between", min_value=1)]
    for col in df.columns:
        s, non_null = df[col], df[col].dropna()
        if non_null.empty:
            continue
        if len(non_null) == len(s):
            exps.append(_exp("expect_column_values_to_not_be_null", column=col))
        if pd.api.types.is_bool_dtype(s):
            exps.append(_exp("expect_column_values_to_be_in_type_list", column=col, type_list=["bool"]))
        elif pd.api.types.is_numeric_dtype(s):
            types = list(dict.fromkeys([s.dtype.name, *NUMERIC_TYPES]))
            exps.append(_exp("expect_column_values_to_be_in_type_list", column=col, type_list=types))
            lo, hi = float(non_null.min()), float(non_null.max())
            margin = 0.1 * (hi - lo) or 0.1 * abs(hi) or 1.0
            low, high = (max(0.0, lo - margin) if lo >= 0 else lo - margin), hi + margin
            digits = 0 if pd.api.types.is_integer_dtype(s) else 6  # round outwards
            low = math.floor(low * 10**digits) / 10**digits
            high = math.ceil(high * 10**digits) / 10**digits
            if not digits:
                low, high = int(low), int(high)
            exps.append(_exp("expect_column_values_to_be_between", column=col,
                             min_value=low, max_value=high))
        elif non_null.map(type).eq(str).all():
            exps.append(_exp("expect_column_values_to_be_in_type_list", column=col,
                             type_list=STRING_TYPES))
            levels = non_null.unique()
            if len(levels) <= min(MAX_LEVELS, len(non_null) / 2) and not _looks_like_timestamps(non_null):
                exps.append(_exp("expect_column_values_to_be_in_set", column=col,
                                 value_set=sorted(levels)))
    meta = {"drafted_at": datetime.now(timezone.utc).isoformat(), "drafted_from_rows": len(df),
            "review": "Drafted by pipelines.validation.draft_suite: tighten or loosen the bounds, and "
                      "set meta.on_failure to 'warn' where a violation should not stop the pipeline."}
    return {"name": table, "expectations": exps, "meta": meta}
