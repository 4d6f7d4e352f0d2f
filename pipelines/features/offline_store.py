"""Feast's DuckDB offline store, reading object-store Parquet through fsspec instead of httpfs.

Feast's `duckdb` offline store reads a FileSource with `ibis.read_parquet(path)`; for an
`s3://` path ibis first loads DuckDB's httpfs extension, which DuckDB downloads from the
internet at first use (and which would need its own endpoint and credential settings). This
store is the same store with one difference: a FileSource on a remote URI (s3://, gs://, ...)
is read by DuckDB through the fsspec filesystem `pipelines.core.storage` configures (endpoint and
credentials from the environment), registered on ibis's DuckDB connection. Local paths go to
Feast's own reader unchanged.

Selected in feature_repo/feature_store*.yaml as a Feast custom offline store:

    offline_store:
      type: pipelines.features.offline_store.FsspecDuckDBOfflineStore
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores import duckdb as feast_duckdb
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.ibis import (
    get_historical_features_ibis,
    pull_all_from_table_or_query_ibis,
    pull_latest_from_table_or_query_ibis,
)
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import RepoConfig
from pydantic import StrictStr

TYPE = "pipelines.features.offline_store.FsspecDuckDBOfflineStore"


class FsspecDuckDBOfflineStoreConfig(feast_duckdb.DuckDBOfflineStoreConfig):
    type: StrictStr = TYPE


def _remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def read_data_source(data_source: DataSource, repo_path: str) -> Any:
    """An ibis table over the source; remote Parquet through fsspec (see the module doc)."""
    path = getattr(data_source, "path", "") or ""
    if not (isinstance(data_source, FileSource) and _remote(path)
            and not data_source.resolve_credentials()
            and (data_source.file_format is None or type(data_source.file_format).__name__
                 == "ParquetFormat")):
        return feast_duckdb._read_data_source(data_source, repo_path)
    import ibis

    from pipelines.core import duck

    con = ibis.get_backend()  # the DuckDB connection ibis.read_parquet would have used
    # What ibis.read_parquet does, minus its httpfs load: a temp view, then an ibis table on it.
    name = ibis.util.gen_name("read_parquet")
    quoted = duck.readable(con.con, path).replace("'", "''")
    con.con.execute(f'CREATE TEMP VIEW "{name}" AS SELECT * FROM read_parquet(\'{quoted}\')')
    return con.table(name)


def _io(config: RepoConfig) -> dict[str, Any]:
    """Reader, writer and staging settings every ibis entry point of the store takes."""
    return {"data_source_reader": read_data_source,
            "data_source_writer": feast_duckdb._write_data_source,
            "staging_location": config.offline_store.staging_location,
            "staging_location_endpoint_override":
                config.offline_store.staging_location_endpoint_override}


class FsspecDuckDBOfflineStore(feast_duckdb.DuckDBOfflineStore):
    """Feast's DuckDBOfflineStore with `read_data_source` as its reader."""

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig, data_source: DataSource, join_key_columns: list[str],
        feature_name_columns: list[str], timestamp_field: str,
        created_timestamp_column: str | None, start_date: datetime, end_date: datetime,
    ) -> RetrievalJob:
        return pull_latest_from_table_or_query_ibis(
            config=config, data_source=data_source, join_key_columns=join_key_columns,
            feature_name_columns=feature_name_columns, timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column, start_date=start_date,
            end_date=end_date, **_io(config),
        )

    @staticmethod
    def get_historical_features(
        config: RepoConfig, feature_views: list[FeatureView], feature_refs: list[str],
        entity_df: pd.DataFrame | str, registry: BaseRegistry, project: str,
        full_feature_names: bool = False, filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        feast_duckdb._validate_lance_feature_views(feature_views)
        return get_historical_features_ibis(
            config=config, feature_views=feature_views, feature_refs=feature_refs,
            entity_df=entity_df, registry=registry, project=project,
            full_feature_names=full_feature_names, **_io(config),
            filter_by_created_timestamp=filter_by_created_timestamp,
        )

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig, data_source: DataSource, join_key_columns: list[str],
        feature_name_columns: list[str], timestamp_field: str,
        created_timestamp_column: str | None = None, start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        return pull_all_from_table_or_query_ibis(
            config=config, data_source=data_source, join_key_columns=join_key_columns,
            feature_name_columns=feature_name_columns, timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column, start_date=start_date,
            end_date=end_date, **_io(config),
        )
