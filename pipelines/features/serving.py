"""What an online model server calls: for entity rows (join keys and request columns, as a
request carries them), the feature service's values from the online store and the request-time
features, computed by `pipelines.features.request.compute`, the code training and batch scoring
run. The server takes the request-time spec of the model it serves from the model version
(`parse_request_spec(registry.describe(...)["request_features"])`), not from params.yaml.

`pipelines.features.online.check_skew` calls `serving_features` on sampled events (as JSON) and
compares the result with the offline retrieval.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pipelines.features import request

if TYPE_CHECKING:
    from feast import FeatureStore

    from pipelines.features import pit


def online_features(store: "FeatureStore", refs: list[str], entity_rows: list[dict[str, Any]],
                    as_of: datetime | Sequence[datetime],
                    ttls: dict[str, timedelta | None]) -> pd.DataFrame:
    """Online values (`<view>__<feature>`) with each view's TTL applied at `as_of` (one time
    for all rows, or one per row)."""
    return pd.DataFrame(online_values(store, refs, entity_rows, as_of, ttls))


def online_values(store: "FeatureStore", refs: list[str], entity_rows: list[dict[str, Any]],
                  as_of: datetime | Sequence[datetime],
                  ttls: dict[str, timedelta | None]) -> dict[str, list[Any]]:
    """`online_features` as a list of values per column."""
    resp = online_read(store, refs, entity_rows)
    times = [as_of] * len(entity_rows) if isinstance(as_of, datetime) else list(as_of)
    oldest: dict[timedelta, list[float]] = {}  # per TTL: each row's oldest valid time
    out = {}
    for ref in refs:
        view, feature = ref.split(":")
        col = f"{view}__{feature}"
        values, ttl = resp[col], ttls.get(view)
        if ttl:  # Feast's online read does not expire values: do it as the offline join does
            if ttl not in oldest:
                oldest[ttl] = [(at - ttl).timestamp() for at in times]
            values = [v if ts >= low else None
                      for v, ts, low in zip(values, resp[f"{col}__ts"], oldest[ttl])]
        out[col] = values
    return out


def online_read(store: "FeatureStore", refs: list[str], entity_rows: list[dict[str, Any]]
                ) -> dict[str, list[Any]]:
    """What `store.get_online_features(refs, entity_rows, full_feature_names=True)
    .to_dict(include_event_timestamps=True)` returns (`<view>__<feature>` values and their
    `__ts` event seconds), by Feast's own steps, without its response.

    The same request context (Feast's cached resolution of the refs), the same entity value
    protos, the same de-duplicated entity keys and the same `OnlineStore.online_read` (SQLite,
    Redis, ...) as `get_online_features`; the values converted as its `to_dict` converts them.
    What it skips is building and converting the response protos (about two thirds of a
    1-row read here). Anything that path does beyond plain feature views (on-demand views,
    request data, entityless views, versioned reads) goes through `get_online_features`
    itself. `tests/component/test_pit.py` checks the two are equal.
    """
    from feast import utils as feast_utils
    from feast.type_map import (
        feast_value_type_to_python_type,
        python_values_to_proto_values,
    )
    from feast.value_type import ValueType
    from google.protobuf.timestamp_pb2 import Timestamp

    (_, on_demand, entity_join_keys, entity_types, join_keys, grouped, _, request_data,
     entityless) = feast_utils._get_cached_request_context(store.registry, store.project, refs,
                                                            True)
    versioned = any(getattr(t.projection, "version_tag", None) is not None for t, _ in grouped)
    if on_demand or request_data or entityless or versioned or not entity_rows:
        return store.get_online_features(features=refs, entity_rows=entity_rows,
                                         full_feature_names=True).to_dict(
            include_event_timestamps=True)
    n = len(entity_rows)
    columns = {k: [row[k] for row in entity_rows] for k in entity_rows[0]}
    protos = {k: python_values_to_proto_values(v, entity_types.get(k, ValueType.UNKNOWN))
              for k, v in columns.items() if k in join_keys}
    provider = store._get_provider()
    out: dict[str, list[Any]] = {}
    for table, requested in grouped:
        entities, positions, _ = feast_utils._get_unique_entities(table, protos,
                                                                  entity_join_keys)
        read = provider.online_read(config=store.config, table=table,
                                    entity_keys=feast_utils._get_entity_key_protos(entities),
                                    requested_features=requested)
        types = {f.name: f.dtype.to_value_type() for f in table.features}
        name = table.projection.name_to_use()
        seconds = [0] * n
        values = {f: [None] * n for f in requested}
        for (at, data), rows in zip(read, positions):
            if at is not None:
                stamp = Timestamp()
                stamp.FromDatetime(at)
                for i in rows:
                    seconds[i] = stamp.seconds
            for feature, value in (data or {}).items():
                if feature in values:
                    python = feast_value_type_to_python_type(value, types.get(feature))
                    for i in rows:
                        values[feature][i] = python
        for feature in requested:
            out[f"{name}__{feature}"] = values[feature]
            out[f"{name}__{feature}__ts"] = list(seconds)
    return out


def serving_features(store: "FeatureStore", service_name: str, request_time: request.Spec,
                     entity_rows: list[dict[str, Any]], as_of: datetime | Sequence[datetime],
                     views: "list[pit.ViewSpec] | None" = None,
                     given: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """`serving_columns` as a frame."""
    return pd.DataFrame(serving_columns(store, service_name, request_time, entity_rows, as_of,
                                        views, given), index=pd.RangeIndex(len(entity_rows)))


def serving_columns(store: "FeatureStore", service_name: str, request_time: request.Spec,
                    entity_rows: list[dict[str, Any]], as_of: datetime | Sequence[datetime],
                    views: "list[pit.ViewSpec] | None" = None,
                    given: Mapping[str, np.ndarray] | None = None,
                    request_rows: pd.DataFrame | None = None
                    ) -> dict[str, np.ndarray | pd.Series]:
    """The features an online model server gives a model, one value per request row, by
    column (store features: object arrays, None where missing; request-time features: numpy
    arrays of the values `request.compute` gives).

    `entity_rows`: the join keys and the request columns (`request.inputs(request_time)`) as
    JSON-like values (ISO timestamps with an offset, or timezone-aware timestamps). Returns
    the service's online features (each view's TTL applied at `as_of`: one time, or each
    row's prediction time as the offline join applies it) and the request-time features
    computed by `request.compute` (the code training and batch scoring run), named as
    offline.
    `views`: the service's `pit.service_views`, when the caller keeps them (a server: reading
    them asks Feast's registry without its cache, on every call).
    `given`: feature columns (`<view>__<feature>`, one value per row) the caller supplies: a
    view whose every feature is given is not read from the store; one given in part is
    refused (ValueError naming the missing columns).
    `request_rows`: the request columns as a frame, one row per entity row, when the caller
    has them as columns already (a server: its entity rows' own); otherwise they are read
    from `entity_rows` (`request.serving_frame`).
    """
    from pipelines.features import pit

    n = len(entity_rows)
    specs = views if views is not None else pit.service_views(store, service_name)
    values: dict[str, np.ndarray] = {}
    reads = []  # (refs, row positions, their entity keys, TTLs): one Feast call each
    for spec in specs:
        keys = [ek for _, ek in spec.join_keys]
        # a missing join key matches nothing (as offline); Feast cannot read one
        known = [i for i, row in enumerate(entity_rows) if all(row.get(k) is not None
                                                               for k in keys)]
        refs = [f"{spec.name}:{f}" for f in spec.features]
        cols = [f"{spec.name}__{f}" for f in spec.features]
        supplied = [c for c in cols if c in (given or {})]
        if supplied:
            if len(supplied) < len(cols):
                raise ValueError(f"feature view {spec.name}: the request gives {supplied} but "
                                 f"not {[c for c in cols if c not in supplied]}; give all of "
                                 f"a view's features or none (then the online store's)")
            values.update({c: np.asarray(given[c], dtype=object) for c in cols})
            continue
        values.update({c: np.full(n, None, dtype=object) for c in cols})
        if known:
            reads.append((refs, known, keys, {spec.name: spec.ttl}))
    if len(reads) > 1 and all(len(known) == n for _, known, _, _ in reads):
        # every row has every view's keys (the usual case): one call reads all views
        keys = list(dict.fromkeys(k for _, _, ks, _ in reads for k in ks))
        reads = [([r for refs, _, _, _ in reads for r in refs], list(range(n)), keys,
                  {v: t for *_, ttls in reads for v, t in ttls.items()})]
    for refs, known, keys, ttls in reads:
        found = online_values(store, refs, [{k: entity_rows[i][k] for k in keys}
                                            for i in known],
                              as_of if isinstance(as_of, datetime)
                              else [as_of[i] for i in known], ttls)
        for col, found_values in found.items():
            values[col][known] = found_values
    if not request_time:
        return dict(values)
    if request_rows is None:
        request_rows = request.serving_frame(entity_rows, request_time)
    computed = request.compute_arrays(request_time, request_rows)
    # each column's values as `request.compute` gives them (an int64 feature with missing
    # values as float64 with NaN), as numpy: without a Series or a frame around them
    return {**values, **{c: a.to_numpy(zero_copy_only=False) for c, a in computed.items()}}


def plain(v: Any) -> Any:
    """A JSON-like value: None for missing, ISO text for a timestamp, Python numbers."""
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    if isinstance(v, (pd.Timestamp, datetime)):
        return v.isoformat()
    return v.item() if hasattr(v, "item") else v


def as_requests(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Entity rows as a serving request carries them: JSON values (floats exact), ISO
    timestamps with their offset, null for a missing value."""
    return json.loads(json.dumps([{c: plain(v) for c, v in zip(rows.columns, r)}
                                  for r in rows.itertuples(index=False)]))
