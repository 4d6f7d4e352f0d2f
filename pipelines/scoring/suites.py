"""Drafts of the derived-output suites, from the configuration alone: `training_set.json` (the
rows a model trains on) and `predictions.json` (a published partition).

Their columns follow from params.yaml and the Feast service, so they are written, not learnt
from data: the exact column set (a leaked outcome column fails), keys and timestamps, the label
as 0/1, probabilities in [0, 1], each feature's type by its declared Feast dtype, the bounds a
rolling label statistic or a calendar field cannot leave, and a null-share warning per feature.
`python -m pipelines.cli draft-suite --output training_set --out <suite>.json` (after `feast
apply`) runs `draft_output_suite`; a person then reviews it (row-count bounds, value sets and
ranges of the passthrough features, which only data can tell).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipelines.core.config import Config
from pipelines.core.settings import Settings
from pipelines.data.drafting import NUMERIC_TYPES, STRING_TYPES
from pipelines.data.events import EVENT_TIME, LABEL_AT, PREDICTION_TIME, ROW_KEY
from pipelines.data.rules import NOT_NULL, expectation
from pipelines.scoring.parts import PROBABILITY

OUTPUTS = ("training_set", "predictions")
NUMBERS = [*NUMERIC_TYPES, "Int64"]  # a derived int64 column is pandas' nullable Int64
CALENDAR_BOUNDS = {"hour": (0, 23), "minute": (0, 59), "weekday": (0, 6), "month": (1, 12),
                   "day": (1, 31), "dayofyear": (1, 366)}
FEATURE_PRESENT = 0.3  # warn when fewer than this share of rows have a feature value


def _types(declared: object) -> list[str] | None:
    from feast import types as ft

    if declared in (ft.Int32, ft.Int64, ft.Float32, ft.Float64):
        return NUMBERS
    if declared == ft.String:
        return STRING_TYPES
    if declared == ft.Bool:
        return ["bool", "object"]
    return None


def _columns(cfg: Config, schema: dict[str, tuple[str, str, object]],
             request_cols: dict[str, tuple[str, str, str]]) -> dict[str, list[str]]:
    """The exact columns of a training set and of a prediction partition, in their order."""
    pf, label = cfg.dataset.events.passthrough_features, cfg.dataset.label.name
    rows = list(dict.fromkeys([ROW_KEY, PREDICTION_TIME, EVENT_TIME, LABEL_AT, label,
                               *cfg.features.join_keys, *pf.numeric, *pf.categorical,
                               *cfg.features.request_inputs]))
    features = [*schema, *request_cols]
    numeric = [*pf.numeric, *features]
    return {"training_set": [*rows, *features],
            "predictions": [ROW_KEY, EVENT_TIME, PREDICTION_TIME, *numeric, *pf.categorical,
                            PROBABILITY, "model_name", "model_version"]}


def _aggregate_views(cfg: Config, store: Any) -> set[str]:
    """Feature views reading the sources of `dataset.aggregates` (rolling label statistics)."""
    from pipelines.features import pit

    names = set(cfg.dataset.aggregates)
    return {s.name for s in pit.service_views(store, cfg.features.service)
            if s.path.rstrip("/").split("/")[-2] in names}


def _feature_checks(col: str, declared: object, aggregate: bool,
                    bounds: tuple[int, int] | None) -> list[dict[str, Any]]:
    exps = []
    types = _types(declared)
    if types:
        exps.append(expectation("expect_column_values_to_be_in_type_list", column=col,
                                type_list=types))
    if aggregate and col.endswith("__label_rate"):
        bounds = (0, 1)
    elif aggregate and col.endswith("__label_count"):
        exps.append(expectation("expect_column_values_to_be_between", column=col, min_value=1))
    if bounds is not None:
        exps.append(expectation("expect_column_values_to_be_between", column=col,
                                min_value=bounds[0], max_value=bounds[1]))
    exps.append(expectation(NOT_NULL, "warn", column=col, mostly=FEATURE_PRESENT))
    exps[-1]["meta"]["notes"] = ("a feature may be missing (an entity without a value, a TTL "
                                 "passed); most rows missing one means a broken source")
    return exps


def draft_output_suite(cfg: Config, settings: Settings, name: str) -> dict[str, Any]:
    """The draft suite of a derived output (`training_set` or `predictions`) from the
    configuration and the Feast service it names."""
    from pipelines.features import request
    from pipelines.features.store import get_store, service_schema

    if name not in OUTPUTS:
        raise ValueError(f"draft-suite --output {name!r}: one of {', '.join(OUTPUTS)}")
    store = get_store(settings)
    schema = service_schema(store, cfg.features.service)
    request_cols = request.columns(cfg.features.request_time)
    columns = _columns(cfg, schema, request_cols)[name]
    aggregates = _aggregate_views(cfg, store)
    ev, label = cfg.dataset.events, cfg.dataset.label
    exps = [expectation("expect_table_columns_to_match_set", column_set=columns,
                        exact_match=True),
            expectation("expect_table_row_count_to_be_between", min_value=1)]
    exps[0]["meta"]["notes"] = ("Exact: the label must be the only outcome column; a leaked "
                                "outcome column, a missing or a renamed one fails.")
    exps += [expectation(NOT_NULL, column=ROW_KEY),
             expectation("expect_column_values_to_be_unique", column=ROW_KEY),
             expectation("expect_column_value_lengths_to_equal", column=ROW_KEY, value=16)]
    times = [PREDICTION_TIME, EVENT_TIME] + ([LABEL_AT] if name == "training_set" else [])
    for col in times:
        exps += [expectation(NOT_NULL, column=col),
                 expectation("expect_column_values_to_be_timezone_aware_utc_timestamps",
                             column=col)]
    exps.append(expectation("expect_column_pair_values_a_to_be_greater_than_b",
                            column_A=EVENT_TIME, column_B=PREDICTION_TIME,
                            or_equal=not ev.prediction_lead))
    if name == "training_set":
        exps += [expectation("expect_column_pair_values_a_to_be_greater_than_b",
                             column_A=LABEL_AT, column_B=EVENT_TIME,
                             or_equal=label.available_at is not None or not label.delay),
                 expectation(NOT_NULL, column=label.name),
                 expectation("expect_column_values_to_be_in_set", column=label.name,
                             value_set=[0, 1]),
                 expectation("expect_column_mean_to_be_between", "warn", column=label.name,
                             min_value=0.01, max_value=0.99)]
        exps += [expectation(NOT_NULL, "warn", column=k, mostly=0.5)
                 for k in cfg.features.join_keys]
    else:
        exps += [expectation(NOT_NULL, column=PROBABILITY),
                 expectation("expect_column_values_to_be_in_type_list", column=PROBABILITY,
                             type_list=["float64", "float32"]),
                 expectation("expect_column_values_to_be_between", column=PROBABILITY,
                             min_value=0, max_value=1),
                 expectation(NOT_NULL, column="model_name"),
                 expectation(NOT_NULL, column="model_version")]
    pf = ev.passthrough_features
    for col in pf.numeric:
        exps.append(expectation("expect_column_values_to_be_in_type_list", column=col,
                                type_list=NUMBERS))
    for col in pf.categorical:
        exps.append(expectation("expect_column_values_to_be_in_type_list", column=col,
                                type_list=STRING_TYPES))
    for col, (view, _, declared) in schema.items():
        exps += _feature_checks(col, declared, view in aggregates, None)
    from feast import types as ft

    feast_types = {"int64": ft.Int64, "float64": ft.Float64}
    for col, (feature, fld, dtype) in request_cols.items():
        spec = cfg.features.request_time[feature]
        bounds = CALENDAR_BOUNDS.get(fld) if spec.kind == "calendar" else None
        exps += _feature_checks(col, feast_types[dtype], False, bounds)
    what = "the rows a model trains on" if name == "training_set" else "a prediction partition"
    meta = {"drafted_at": datetime.now(UTC).isoformat(),
            "drafted_from": f"the configuration ({settings.params_path}) and the Feast service "
                            f"{cfg.features.service}",
            "feature_service": cfg.features.service,
            "description": f"Draft suite of {what}: columns from params.yaml and the feature "
                           "service.",
            "review": "Set the row-count bounds an interval or window should meet, and add the "
                      "value sets and ranges of the passthrough features (draft-suite --data on "
                      "the raw table proposes them) and of the features."}
    return {"name": name, "expectations": exps, "meta": meta}
