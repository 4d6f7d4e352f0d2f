"""Feast definitions of the shelter example: entities, the rolling adoption statistics, the
service.

Configuration, like the flights repo's: the one place naming this dataset's stored features.
The sources are written by `pipelines.features.sources` (params.yaml `dataset.aggregates`)
under MLOPS_DATA_URI/features/<aggregate>/: one file per weekly interval, stamped at the week's
end + 1 day (`label.available_after`), counting only the outcomes known by then. A row reads the
latest statistics stamped before it, so the TTL covers a week and the stamping day (9 days).
The features computed at request time (the calendar of the intake, weight for age) are in
params.yaml `features.request_time`.
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


animal_type = Entity(name="animal_type", join_keys=["animal_type"], value_type=ValueType.STRING,
                     description="Dog, Cat or Other")
intake_condition = Entity(name="intake_condition", join_keys=["intake_condition"],
                          value_type=ValueType.STRING,
                          description="Condition at intake (Normal, Injured, Sick, Nursing)")

type_stats_fv = FeatureView(
    name="type_stats_fv",
    entities=[animal_type],
    ttl=timedelta(days=9),
    schema=[Field(name="label_rate", dtype=Float64), Field(name="label_count", dtype=Int64)],
    source=_source("type_stats"),
    description="Adoption share of the last 28 days' intakes of the animal type, among those "
                "whose outcome is known",
)

condition_stats_fv = FeatureView(
    name="condition_stats_fv",
    entities=[intake_condition],
    ttl=timedelta(days=9),
    schema=[Field(name="label_rate", dtype=Float64), Field(name="label_count", dtype=Int64)],
    source=_source("condition_stats"),
    description="Adoption share of the last 28 days' intakes in the condition, among those "
                "whose outcome is known",
)

shelter_model_v1 = FeatureService(
    name="shelter_model_v1",
    features=[type_stats_fv, condition_stats_fv],
    description="Stored features of the adoption model, version 1 (request-time features: "
                "params.yaml features.request_time)",
)
