"""Locks between processes and machines: a Postgres advisory lock when a Postgres URL is
configured (MLOPS_LOCK_URL, else MLOPS_METRICS_DB), else a file lock in the local state folder.

Two users: alias moves (`alias_lock`: concurrent moves on the SQLite registry were seen to fail)
and raw-batch validation (`named_lock` per batch report: concurrent runs that read the same
batch validate it once and the others reuse its report). Each holder takes one lock at a time,
so they cannot deadlock.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from pipelines.core import storage
from pipelines.core.settings import Settings

FILE_LOCKS = 64  # file locks other than the alias lock hash into this many files under locks/


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


def _key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


@contextmanager
def pg_advisory_lock(url: str, name: str, timeout: float = 300.0) -> Iterator[None]:
    """A Postgres session-level advisory lock on `name`, held while the block runs (released
    on exit, or by the server if this process dies: the lock lives in its connection)."""
    import psycopg2

    key = int.from_bytes(_key(name)[:8], "big", signed=True)
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


def lock_file(settings: Settings, name: str, file: str | None = None) -> str | None:
    """The local file that locks `name` without Postgres (None: the state folder is not local):
    `file` under the state folder, else `locks/NN.lock`, one of FILE_LOCKS files `name` hashes
    into, so the folder stays small however many batches are validated (two names sharing a
    file only wait for each other)."""
    if not storage.is_local(settings.state_uri):
        return None
    if file is None:
        bucket = int.from_bytes(_key(name)[:4], "big") % FILE_LOCKS
        file = os.path.join("locks", f"{bucket:02d}.lock")
    return os.path.join(storage.local_path(settings.state_uri), file)


@contextmanager
def named_lock(settings: Settings, name: str, timeout: float = 300.0,
               file: str | None = None) -> Iterator[None]:
    """Hold `name` while the block runs, against every process that uses the same lock URL
    (any machine) or, without one, the same local state folder (one machine; see `lock_file`).
    A state folder in an object store without a lock URL locks nothing. Raises on waiting
    longer than `timeout` seconds (filelock.Timeout, or Postgres's lock timeout)."""
    url = lock_url(settings)
    if url:
        with pg_advisory_lock(url, f"mlops:{name}", timeout):
            yield
        return
    path = lock_file(settings, name, file)
    if path is None:
        yield
        return
    from filelock import FileLock

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileLock(path, timeout=timeout):
        yield


def alias_lock(settings: Settings) -> AbstractContextManager[None]:
    """Serialise alias moves between processes.

    Concurrent `set_registered_model_alias` calls on SQLite were seen to fail with a UNIQUE
    constraint error. With a Postgres lock URL (MLOPS_LOCK_URL, or MLOPS_METRICS_DB when it is
    Postgres) this is an advisory lock, which holds across machines; otherwise a file lock in
    the local state folder (processes of one machine). The Airflow pool `model_registry` (one
    slot) also serialises the DAG tasks that move aliases.
    """
    return named_lock(settings, "registry-aliases", file="registry.lock")
