"""Feast definitions for the NYC flights 2013 dataset: entities, sources, feature views, service.

This module is configuration: it is the one place that names the dataset's features. Training,
batch scoring and the online path all read features through the `delay_model_v1` service.
Source files are written by `pipelines.features` under MLOPS_DATA_URI/features/<source>/.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

from pipelines.settings import get_settings

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
