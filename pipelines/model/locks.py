"""Serialise alias moves between processes and machines: a Postgres advisory lock when a
Postgres URL is configured (MLOPS_LOCK_URL, else MLOPS_METRICS_DB), else a file lock in the
local state folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.core import storage
from pipelines.core.settings import Settings


def lock_url(settings: Settings | None = None) -> str | None:
    """Postgres URL for locks across machines: $MLOPS_LOCK_URL, else $MLOPS_METRICS_DB if that
    is Postgres; None: a file lock in the local state folder."""
    if settings is None:
        from pipelines.core.settings import get_settings

        settings = get_settings()
    for url in (settings.lock_url, settings.metrics_db):
        if url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
            return url
    return None


@contextmanager
def pg_advisory_lock(url: str, name: str, timeout: float = 300.0) -> Iterator[None]:
    """A Postgres session-level advisory lock on `name`, held while the block runs (released
    on exit, or by the server if this process dies: the lock lives in its connection)."""
    import hashlib

    import psycopg2

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    con = psycopg2.connect("postgresql://" + url.split("://", 1)[1], connect_timeout=30)
    try:
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("SET lock_timeout = %s", (f"{int(timeout * 1000)}ms",))
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            with con.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        con.close()


@contextmanager
def alias_lock(settings: Settings) -> Iterator[None]:
    """Serialise alias moves between processes.

    Concurrent `set_registered_model_alias` calls on SQLite were seen to fail with a UNIQUE
    constraint error. With a Postgres lock URL (MLOPS_LOCK_URL, or MLOPS_METRICS_DB when it is
    Postgres) this is an advisory lock, which holds across machines; otherwise a file lock in
    the local state folder (processes of one machine). The Airflow pool `model_registry` (one
    slot) also serialises the DAG tasks that move aliases.
    """
    from filelock import FileLock

    url = lock_url(settings)
    if url:
        with pg_advisory_lock(url, "mlops:registry-aliases"):
            yield
        return
    if not storage.is_local(settings.state_uri):
        yield
        return
    path = os.path.join(storage.local_path(settings.state_uri), "registry.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileLock(path, timeout=300):
        yield
