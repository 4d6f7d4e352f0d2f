"""Alias promotion, history and rollback against a real MLflow registry on SQLite."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines.core import locks
from pipelines.core.settings import get_settings
from pipelines.model import registry

NAME = "registry_test_model"


@pytest.fixture()
def settings(tmp_path):
    base = get_settings()
    return dataclasses.replace(base, data_uri=str(tmp_path / "data"),
                               mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                               mlflow_artifacts_uri=str(tmp_path / "artifacts"))


def _versions(settings, n):
    c = registry.client(settings)
    registry.ensure_registered_model(c, NAME)
    return [str(c.create_model_version(NAME, source=f"file:///tmp/model-{i}").version)
            for i in range(n)]


def _alias(settings, alias):
    mv = registry.by_alias(registry.client(settings), NAME, alias)
    return str(mv.version) if mv else None


def test_promotion_keeps_previous_champion_and_records_history(settings):
    v1, v2 = _versions(settings, 2)
    registry.promote(settings, NAME, v1, "test", "first", None)
    registry.promote(settings, NAME, v2, "test", "better", "gates/v2.json")
    assert _alias(settings, "champion") == v2
    assert _alias(settings, "previous_champion") == v1
    moves = [(e["action"], e["from_version"], e["to_version"]) for e in registry.history(settings)]
    assert moves == [("promote", None, v1), ("promote", v1, v2)]
    assert registry.history(settings)[-1]["gate_report"] == "gates/v2.json"


def test_rollback_to_previous_and_to_a_version(settings):
    v1, v2, v3 = _versions(settings, 3)
    for v in (v1, v2, v3):
        registry.promote(settings, NAME, v, "test", "promote", None)
    registry.rollback(settings, NAME, "previous", "test", "bad release")
    assert _alias(settings, "champion") == v2
    registry.rollback(settings, NAME, v1, "test", "back to the first")
    assert _alias(settings, "champion") == v1
    assert [e["action"] for e in registry.history(settings)][-2:] == ["rollback", "rollback"]


def test_rollback_refuses_nonsense(settings):
    (v1,) = _versions(settings, 1)
    with pytest.raises(registry.RegistryError, match="no previous_champion"):
        registry.rollback(settings, NAME, "previous", "test", "x")
    registry.promote(settings, NAME, v1, "test", "first", None)
    with pytest.raises(registry.RegistryError, match="already the champion"):
        registry.rollback(settings, NAME, v1, "test", "x")


def test_missing_champion_is_a_clear_error(settings):
    with pytest.raises(registry.RegistryError, match="no 'champion' alias"):
        registry.resolve_champion(settings, "never_trained_model")


def test_lock_url_prefers_postgres_settings(monkeypatch):
    """Alias moves lock in Postgres (across machines) when a Postgres URL is configured, else
    with a file lock in the local state folder."""
    monkeypatch.delenv("MLOPS_LOCK_URL", raising=False)
    monkeypatch.delenv("MLOPS_METRICS_DB", raising=False)
    assert locks.lock_url() is None
    monkeypatch.setenv("MLOPS_METRICS_DB", "/tmp/metrics.db")  # SQLite: not a lock service
    assert locks.lock_url() is None
    monkeypatch.setenv("MLOPS_METRICS_DB", "postgresql://u:p@127.0.0.1:5432/metrics")
    assert locks.lock_url() == "postgresql://u:p@127.0.0.1:5432/metrics"
    monkeypatch.setenv("MLOPS_LOCK_URL", "postgresql+psycopg2://u:p@db:5432/locks")
    assert locks.lock_url() == "postgresql+psycopg2://u:p@db:5432/locks"


def test_alias_lock_is_a_file_lock_by_default(settings, monkeypatch, tmp_path):
    monkeypatch.delenv("MLOPS_LOCK_URL", raising=False)
    monkeypatch.delenv("MLOPS_METRICS_DB", raising=False)
    local = dataclasses.replace(settings, state_uri=str(tmp_path / "state"))
    with locks.alias_lock(local):
        assert (tmp_path / "state" / "registry.lock").exists()
