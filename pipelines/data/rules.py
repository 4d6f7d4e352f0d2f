"""The parts of validation that know about rules: suites, GX runs and check records.

Every check ends up as one flat "check record" (a small JSON-able dict), whether it came from a
Great Expectations expectation (built-in, or the timestamp expectations of
`pipelines.data.timestamps`) or from the input hardening (a file that is not a readable table):

    {"check": "expect_...", "column": "amount", "on_failure": "fail" | "warn", "success": bool,
     "observed": "...", "unexpected_count": int | None, "examples": ["..."], "error": str | None}
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from typing import Any

import pandas as pd

from pipelines.core import storage

NOT_NULL = "expect_column_values_to_not_be_null"
TYPE_LIST = "expect_column_values_to_be_in_type_list"
POLICIES = ("fail", "warn")
SEVERITY = {"fail": "critical", "warn": "warning"}  # meta.on_failure -> GX failure severity
MAX_EXAMPLES = 5


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

    import pipelines.data.timestamps  # noqa: F401  (registers the timestamp expectations with GX)

    expectations = []
    for i, exp in enumerate(suite.get("expectations", [])):
        fields = {k: exp[k] for k in ("type", "kwargs", "meta", "notes", "description") if k in exp}
        # our policy, in GX's own words too (the validation result and Data Docs carry it)
        fields["severity"] = SEVERITY[(exp.get("meta") or {}).get("on_failure", "fail")]
        try:  # build each one here: ExpectationSuite(...) would only log an invalid expectation
            expectations.append(ExpectationConfiguration(**fields).to_domain_obj())
        except Exception as exc:
            raise ValueError(f"suite {suite.get('name')!r}: expectation {i} ({exp.get('type')}) "
                             f"is not valid: {exc}") from exc
    meta = suite.get("meta") or {}
    notes = [meta[k] for k in ("description", "policy") if meta.get(k)]
    return ExpectationSuite(name=suite.get("name") or "suite", expectations=expectations,
                            notes=notes or None)


def run_gx(df: pd.DataFrame, suite: dict, docs_uri: str | None = None, asset: str = "batch",
           run_name: str = "batch") -> tuple[list[dict], str | None]:
    """Validate the whole dataframe with the suite: a GX ValidationDefinition in an ephemeral
    context.

    With `docs_uri`, GX Data Docs are built for this run (what a Checkpoint's
    UpdateDataDocsAction builds: the validation page, the suite's page and the index) and
    published there. Returns (one record per check, the validation page URI or None). No
    Checkpoint: it would only wrap this one definition and that action, and check again that
    what it just stored is fresh (about a tenth of a batch's time here).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from pipelines.data import data_docs, gx_kwargs

    gx_kwargs.apply()  # about a fifth of a batch's validation time: see the module
    gx_suite = _gx_suite(suite)
    with tempfile.TemporaryDirectory(prefix="gx-data-docs-") as site:
        context = data_docs.context(site if docs_uri else None)
        batch = (context.data_sources.add_pandas("validation").add_dataframe_asset(asset)
                 .add_batch_definition_whole_dataframe("whole"))
        definition = context.validation_definitions.add(gx.ValidationDefinition(
            name=asset, data=batch, suite=context.suites.add(gx_suite)))
        run_id = gx.RunIdentifier(run_name=_gx_key(run_name))
        validation = definition.run(
            batch_parameters={"dataframe": df}, run_id=run_id,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES})
        page = None
        if docs_uri:
            suite_id = ExpectationSuiteIdentifier(name=gx_suite.name)
            context.build_data_docs(build_index=True, resource_identifiers=[
                ValidationResultIdentifier(expectation_suite_identifier=suite_id, run_id=run_id,
                                           batch_identifier=validation.batch_id),
                suite_id])
            page = data_docs.publish(site, docs_uri)
    records = [_record(r.to_json_dict()) for r in validation.results]
    for rec in records:  # GX's own words for a missing column vary by expectation
        if rec["error"] and rec["kwargs"].get("column") not in (None, *df.columns):
            rec["error"] = f"column {rec['kwargs']['column']!r} is not in the batch"
    _explain_text_columns(df, suite, records)
    return sorted(records, key=lambda r: (r["column"] != "(table)", r["column"], r["check"])), page


def _gx_key(text: str) -> str:
    """GX file-store keys may not contain path separators."""
    return text.replace("/", "_").replace("\\", "_") or "batch"


def _example(value: Any, index: Any = None) -> str:
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{k}={v!r}" for k, v in value.items()) + "}"
    elif isinstance(value, (list, tuple)):  # a row of a column pair or compound key
        text = "(" + ", ".join(str(v) for v in value) + ")"
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
        observed = _counts(cfg.get("type"), kwargs, res)
    else:
        observed = "not evaluated" if errors else None
    return {"check": cfg.get("type"), "column": column, "kwargs": kwargs,
            "on_failure": (cfg.get("meta") or {}).get("on_failure", "fail"),
            "success": bool(r.get("success")) and not errors, "observed": observed,
            "unexpected_count": res.get("unexpected_count"), "examples": examples[:MAX_EXAMPLES * 2],
            "error": "; ".join(errors) or None}


def _counts(check: str | None, kwargs: dict, res: dict) -> str:
    """How many values broke a column-map rule, each share over the count it is a share of:
    a null-share rule counts nulls among all values; any other rule checks only the non-null
    values (GX's `unexpected_percent`), so the nulls are stated apart."""
    bad, total = res["unexpected_count"] or 0, res.get("element_count") or 0
    mostly = kwargs.get("mostly", 1)
    if check == NOT_NULL:
        text = f"{bad} of {total} values are null ({100 * bad / (total or 1):.2f}%)"
        return text + (f"; at most {100 * (1 - mostly):.2f}% may be (mostly={mostly})"
                       if mostly < 1 else "")
    missing = res.get("missing_count") or 0
    checked = total - missing
    text = (f"{bad} of {checked} {'non-null ' if missing else ''}values unexpected "
            f"({100 * bad / (checked or 1):.2f}%)")
    text += f"; at least {100 * mostly:.2f}% must pass (mostly={mostly})" if mostly < 1 else ""
    return text + (f"; {missing} of {total} values are null" if missing else "")


def _numeric_types(type_list: list[str]) -> bool:
    return bool(type_list) and all(t.lower().startswith(("int", "uint", "float"))
                                   for t in type_list)


def _explain_text_columns(df: pd.DataFrame, suite: dict, records: list[dict]) -> None:
    """A column the suite types as numbers but that was read as text: GX lists the first values
    (valid numbers, as text) as unexpected and cannot compare it with numeric bounds. Name the
    cells that are not numbers instead, in the type check and in the checks it broke."""
    for exp in suite.get("expectations", []):
        col, types = exp["kwargs"].get("column"), exp["kwargs"].get("type_list") or []
        if (exp["type"] != TYPE_LIST or col not in df.columns or not _numeric_types(types)
                or pd.api.types.is_numeric_dtype(df[col])):
            continue
        values = df[col]
        bad = values[values.notna() & pd.to_numeric(values, errors="coerce").isna()]
        if bad.empty:
            continue
        examples = [_example(v, i) for i, v in bad.head(MAX_EXAMPLES).items()]
        nulls = int(values.isna().sum())
        for rec in records:
            if rec["kwargs"].get("column") != col:
                continue
            if rec["check"] == TYPE_LIST and not rec["success"]:
                rec.update(examples=examples, unexpected_count=len(bad), observed=(
                    f"read as text, not {'/'.join(types)}: {len(bad)} of {values.notna().sum()} "
                    f"non-null values {'is' if len(bad) == 1 else 'are'} not "
                    f"{'a number' if len(bad) == 1 else 'numbers'}"
                    + (f"; {nulls} of {len(values)} values are null" if nulls else "")))
            elif rec["error"]:
                rec["error"] = ("the column is text because of values that are "
                                f"not numbers ({', '.join(examples)})")


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


def expectation(type_: str, on_failure: str = "fail", **kwargs: Any) -> dict:
    """One suite entry: its GX type, kwargs and policy."""
    return {"type": type_, "kwargs": kwargs, "meta": {"on_failure": on_failure}}
