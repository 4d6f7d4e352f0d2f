"""A request's rows -> model inputs, by the functions batch scoring and the skew check run.

Raw event columns (what the event feed carries: the key, the timestamp, the inputs of derived
columns, join keys, passthrough features) become entity rows by `data.events.entity_columns`
(`entity_rows` without the frame), the code that makes batch scoring's rows (row key,
prediction time = event time - lead, derived columns); the features are
`features.serving.serving_columns` (`serving_features` without the frame: the online store
with each view's TTL applied at each row's prediction time, and the request-time features of
the version's own spec), which the skew check proves equal to the offline retrieval; the model
inputs are `scoring.inputs.prepare_inputs` under `scoring.missing_features`, batch scoring's
missing-value policy and float32 feeds.

A request may also carry a view's features itself (inputs `<view>__<feature>`, every feature of
the view): that view is then not read from the online store, e.g. for a caller that has them
already. The model inputs are prepared from them exactly as from the store's values.

A row for which one of the model's feature views has no online value is counted per view; with
`serving.unknown_entities: reject` the request fails with 422 naming rows, view and join keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from pipelines.core.config import Config
from pipelines.data.events import PREDICTION_TIME, entity_columns, request_columns
from pipelines.features.request import inputs as request_inputs
from pipelines.serving.protocol import RequestError

if TYPE_CHECKING:
    from feast import FeatureStore

    from pipelines.features.pit import ViewSpec
    from pipelines.scoring.inputs import ModelInputs
    from pipelines.serving.model import ServedModel


def service_name(cfg: Config, served: ServedModel) -> str:
    """The Feast feature service the version was trained with (params.yaml's if unrecorded)."""
    return served.described.get("feature_service") or cfg.features.service


def same_inputs(cfg: Config, a: ServedModel, b: ServedModel) -> bool:
    """Whether `prepare` gives both versions the same model inputs for any request: the same
    feature service, request-time features and model inputs (e.g. a retraining)."""
    return (service_name(cfg, a) == service_name(cfg, b) and a.request_spec == b.request_spec
            and a.numeric == b.numeric and a.categorical == b.categorical)


def declared_inputs(cfg: Config) -> dict[str, str]:
    """The V2 inputs of the served model: raw event columns, text as BYTES, numbers as FP64."""
    text, numeric = request_columns(cfg)
    return {**{c: "BYTES" for c in text}, **{c: "FP64" for c in numeric}}


def raw_columns(cfg: Config, columns: Mapping[str, np.ndarray]) -> dict[str, pd.Series]:
    """The raw event columns `entity_columns` reads (`request_columns`) of decoded request
    columns (None / NaN missing), one Series each on one index: no frame (for a request of a
    row or a few, a frame and a Series taken out of it per column cost twice as much as the
    Series alone), and none for the columns it does not read (e.g. supplied features)."""
    n = len(next(iter(columns.values()))) if columns else 0
    index = pd.RangeIndex(n)
    wanted = [c for cols in request_columns(cfg) for c in cols if c in columns]
    return {name: pd.Series(values if (values := columns[name]).dtype == object else
                            values.astype(np.float64, copy=False), index=index, name=name,
                            copy=False) for name in wanted}


def supplied_columns(views: list[ViewSpec]) -> list[str]:
    """The feature columns (`<view>__<feature>`) a request may carry instead of the online
    store's values (a whole view at a time)."""
    return [f"{spec.name}__{f}" for spec in views for f in spec.features]


def supplied_inputs(views: list[ViewSpec], served: ServedModel) -> dict[str, str]:
    """`supplied_columns` as optional V2 inputs: text (BYTES) for a categorical model input,
    numbers (FP64) otherwise."""
    text = set(served.categorical)
    return {c: "BYTES" if c in text else "FP64" for c in supplied_columns(views)}


def unknown_rows(views: list[ViewSpec], features: Mapping[str, np.ndarray | pd.Series]
                 ) -> dict[str, tuple[list[int], tuple[str, ...]]]:
    """Per feature view: the rows with no online value of any of its features, and the view's
    join keys."""
    out = {}
    for spec in views:
        empty = np.logical_and.reduce([pd.isna(np.asarray(features[f"{spec.name}__{f}"]))
                                       for f in spec.features])
        if empty.any():
            out[spec.name] = (np.flatnonzero(empty).tolist(), tuple(k for _, k in spec.join_keys))
    return out


def _reject_unknown(rows: Mapping[str, pd.Series],
                    unknown: dict[str, tuple[list[int], tuple[str, ...]]]) -> None:
    lines = []
    for view, (idx, keys) in unknown.items():
        shown = ", ".join(f"row {i} ({', '.join(f'{k}={rows[k].iloc[i]!r}' for k in keys)})"
                          for i in idx[:5])
        lines.append(f"{view} has no online value for {len(idx)} rows: {shown}"
                     + (" ..." if len(idx) > 5 else ""))
    raise RequestError("unknown entities (not in the online store, a missing join key, or "
                       "expired by the view's ttl) and serving.unknown_entities=reject: "
                       + "; ".join(lines), status=422)


def prepare(cfg: Config, store: FeatureStore, views: list[ViewSpec], served: ServedModel,
            columns: Mapping[str, np.ndarray]) -> tuple[ModelInputs, dict[str, int]]:
    """The model inputs of a request's rows (its decoded columns), in request order, and the rows
    without an online value per view (`views`: `pit.service_views` of the version's feature
    service). Raises RequestError (400: a bad value, naming the column; 422: rows the
    policies reject)."""
    from pipelines.features.serving import serving_columns
    from pipelines.scoring.inputs import prepare_inputs

    n = len(next(iter(columns.values()))) if columns else 0
    try:
        rows = entity_columns(cfg, raw_columns(cfg, columns))
    except ValueError as exc:  # e.g. a timestamp without an offset, named by its column
        raise RequestError(str(exc)) from None
    keys = list(cfg.features.join_keys)
    key_values = {c: [None if pd.isna(v) else v for v in rows[c]] for c in keys}
    entities = [dict(zip(key_values, values)) for values in zip(*key_values.values())]
    # the request-time features' inputs as the entity rows hold them (timestamps as UTC
    # timestamps: request.compute reads them as it reads ISO text)
    wanted = request_inputs(served.request_spec)
    request_rows = pd.DataFrame({c: rows[c].array for c in wanted if c in rows},
                                index=pd.RangeIndex(n))
    try:
        features = serving_columns(store, service_name(cfg, served), served.request_spec,
                                    entities, list(rows[PREDICTION_TIME]), views,
                                    {c: columns[c] for c in supplied_columns(views)
                                     if c in columns}, request_rows)
    except ValueError as exc:  # a request-time feature refusing a value (on_missing: error)
        raise RequestError(str(exc)) from None
    unknown = unknown_rows(views, features)
    if unknown and cfg.serving.unknown_entities == "reject":
        _reject_unknown(rows, unknown)
    # the entity rows' and the features' columns side by side (a concatenated frame costs
    # more than the rest of a one-row request's preparation)
    frame = {**rows, **features}
    inputs, counts = prepare_inputs(frame, served.numeric, served.categorical,
                                    cfg.scoring.missing_features)
    if counts["rejected_rows"]:
        raise RequestError(f"{counts['rejected_rows']} of {n} rows have missing or "
                           f"non-finite model inputs ({counts['by_feature']}) and "
                           f"scoring.missing_features=reject", status=422)
    return inputs, {view: len(idx) for view, (idx, _) in unknown.items()}
