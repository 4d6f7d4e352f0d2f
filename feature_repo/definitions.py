"""Feast definitions for the NYC flights 2013 dataset: entities, sources, feature views, services.

This module is configuration: it is the one place that names the dataset's stored features.
Training, batch scoring and the online path all read features through the service
`features.service` in params.yaml names (a model records the service it was trained with and is
scored with it). Source files are written by `pipelines.features.sources` under
MLOPS_DATA_URI/features/<source>/; every row has `event_timestamp` (when the value holds) and
`created_timestamp` (when it was known).

Data only: no on-demand or stream feature views. Feast stores their Python functions in the
registry and runs them in every process that reads it, so whoever can write the registry would
run code in every training and scoring task (`pipelines.features.store.get_store` refuses such
a registry). Features computed at request time (the calendar of the prediction time) are
declared in params.yaml `features.request_time` and computed by pipelines.features.request.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

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

delay_model_v1 = FeatureService(
    name="delay_model_v1",
    features=[weather_fv, plane_fv, carrier_stats_fv, route_stats_fv],
    description="Features of the late-arrival model, version 1",
)

# v2: the stored features of v1; its models also take the weekday and hour of the prediction
# time in New York, computed at request time (params.yaml features.request_time.calendar) and
# recorded with each model. Month is left out: a 60-day training window sees one or two months,
# so it would extrapolate and trip the drift monitor every month.
delay_model_v2 = FeatureService(
    name="delay_model_v2",
    features=[weather_fv, plane_fv, carrier_stats_fv, route_stats_fv],
    description="Stored features of the late-arrival model, version 2 (request-time calendar "
                "features: params.yaml features.request_time)",
)
