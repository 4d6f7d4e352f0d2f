"""Feast definitions for the NYC flights 2013 dataset: entities, sources, feature views, services.

This module is configuration: it is the one place that names the dataset's features. Training,
batch scoring and the online path all read features through the service `features.service` in
params.yaml names (a model records the service it was trained with and is scored with it).
Source files are written by `pipelines.features.store` under MLOPS_DATA_URI/features/<source>/; every
row has `event_timestamp` (when the value holds) and `created_timestamp` (when it was known).
"""

from datetime import timedelta

import pandas as pd
from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, UnixTimestamp

from pipelines.core.settings import get_settings

FEATURES = get_settings().features_uri


def _source(name: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=f"{FEATURES}/{name}/*.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
    )


origin = Entity(name="origin", join_keys=["origin"], value_type=ValueType.STRING,
                description="Departure airport (FAA code)")
plane = Entity(name="plane", join_keys=["tailnum"], value_type=ValueType.STRING,
               description="Aircraft tail number")
carrier = Entity(name="carrier", join_keys=["carrier"], value_type=ValueType.STRING,
                 description="Airline carrier code")
route = Entity(name="route", join_keys=["route"], value_type=ValueType.STRING,
               description="origin-dest pair")

weather_fv = FeatureView(
    name="weather_fv",
    entities=[origin],
    ttl=timedelta(hours=6),
    schema=[
        Field(name="temp", dtype=Float64),
        Field(name="dewp", dtype=Float64),
        Field(name="humid", dtype=Float64),
        Field(name="wind_speed", dtype=Float64),
        Field(name="precip", dtype=Float64),
        Field(name="pressure", dtype=Float64),
        Field(name="visib", dtype=Float64),
    ],
    source=_source("weather"),
    description="Hourly weather observed at the origin airport",
)

plane_fv = FeatureView(
    name="plane_fv",
    entities=[plane],
    ttl=timedelta(days=0),  # static attributes: never expire
    schema=[
        Field(name="year", dtype=Float64),
        Field(name="engines", dtype=Int64),
        Field(name="seats", dtype=Int64),
    ],
    source=_source("planes"),
    description="Static aircraft attributes",
)

carrier_stats_fv = FeatureView(
    name="carrier_stats_fv",
    entities=[carrier],
    ttl=timedelta(days=3),
    schema=[
        Field(name="label_rate", dtype=Float64),
        Field(name="label_count", dtype=Int64),
    ],
    source=_source("carrier_stats"),
    description="Late-arrival share of the carrier over the last 7 days of landed flights",
)

route_stats_fv = FeatureView(
    name="route_stats_fv",
    entities=[route],
    ttl=timedelta(days=3),
    schema=[
        Field(name="label_rate", dtype=Float64),
        Field(name="label_count", dtype=Int64),
    ],
    source=_source("route_stats"),
    description="Late-arrival share on the route over the last 14 days of landed flights",
)

# The prediction time of the entity row (Feast's `event_timestamp`): offline it is the entity
# dataframe's column, online the caller passes it with the entity keys.
prediction_request = RequestSource(
    name="prediction_request",
    schema=[Field(name="event_timestamp", dtype=UnixTimestamp)],
)


@on_demand_feature_view(
    sources=[prediction_request],
    schema=[Field(name="hour", dtype=Int64), Field(name="weekday", dtype=Int64),
            Field(name="month", dtype=Int64)],
    mode="pandas",
    description="Calendar fields of the prediction time, local to the origin airports",
)
def calendar_odfv(inputs: pd.DataFrame) -> pd.DataFrame:
    # the UDF travels pickled in the registry: it names its time zone (the origins') itself
    local = pd.to_datetime(inputs["event_timestamp"], utc=True).dt.tz_convert("America/New_York")
    return pd.DataFrame({"hour": local.dt.hour.astype("int64"),
                         "weekday": local.dt.weekday.astype("int64"),
                         "month": local.dt.month.astype("int64")}, index=inputs.index)


delay_model_v1 = FeatureService(
    name="delay_model_v1",
    features=[weather_fv, plane_fv, carrier_stats_fv, route_stats_fv],
    description="Features of the late-arrival model, version 1",
)

# v2 = v1 + the weekday and hour of the prediction time. Month is left out: a 60-day training
# window sees one or two months, so it would extrapolate and trip the drift monitor every month.
delay_model_v2 = FeatureService(
    name="delay_model_v2",
    features=[weather_fv, plane_fv, carrier_stats_fv, route_stats_fv,
              calendar_odfv[["weekday", "hour"]]],
    description="Features of the late-arrival model, version 2: v1 + calendar of the prediction time",
)
