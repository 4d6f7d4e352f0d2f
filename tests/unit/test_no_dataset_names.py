"""Nothing in pipelines/ or dags/ names a column of a dataset: every column of both example
configurations (flights: params.yaml, expectations/; shelter: examples/shelter/) is absent
from their string literals, docstrings and comments.

Allowed, because the framework itself defines them or uses them in their ordinary sense, and a
flights table happens to have a column of that name: the calendar fields the request-time
features compute (year, month, day, weekday, hour, minute), the statistics an aggregate writes
(label_rate, label_count), an expression feature's default field (value), and the English words
model, type, engine(s), temp and distance (a model record, a retrieval engine, a temporary view,
a statistical distance). Identifiers are code, not column names."""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = [(REPO / "params.yaml", REPO / "expectations"),
           (REPO / "examples" / "shelter" / "params.yaml",
            REPO / "examples" / "shelter" / "expectations")]
FRAMEWORK = {"row_key", "event_timestamp", "event_time", "label_available_at", "probability",
             "model_name", "model_version", "year", "month", "day", "weekday", "hour", "minute",
             "label_rate", "label_count", "value", "model", "type", "engine", "engines", "temp",
             "distance"}


def dataset_columns() -> set[str]:
    """Every column the configurations and their suites name: raw, derived, label, features."""
    names: set[str] = set()
    for params, suites in CONFIGS:
        raw = yaml.safe_load(params.read_text())
        names |= set(raw["dataset"]["events"].get("derived", {})) | {raw["dataset"]["label"]["name"]}
        for suite in suites.glob("*.json"):
            for exp in json.loads(suite.read_text())["expectations"]:
                kwargs = exp["kwargs"]
                names |= set(kwargs.get("column_set") or []) | {kwargs.get("column")}
    names |= {part for name in list(names) if name for part in name.split("__")[1:]}
    return {n for n in names if n} - FRAMEWORK


def texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal (docstrings too) and comment of a module."""
    source = path.read_text()
    out = [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
           if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    out += [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(
        io.StringIO(source).readline) if tok.type == tokenize.COMMENT]
    return out


def test_no_dataset_column_is_named_in_pipelines_or_dags() -> None:
    columns = dataset_columns()
    assert {"time_hour", "tailnum", "arr_delay", "intake_time", "outcome_date",
            "weight_kg", "age_years", "adopted", "precip"} <= columns  # the scan sees them
    found = []
    for path in sorted([*(REPO / "pipelines").rglob("*.py"), *(REPO / "dags").glob("*.py")]):
        for line, text in texts(path):
            hits = sorted(columns & set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)))
            found += [f"{path.relative_to(REPO)}:{line}: {hits}"] if hits else []
    assert not found, "dataset columns named in code:\n" + "\n".join(found)
