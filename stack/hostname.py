"""Airflow's `hostname_callable` for the stack: several Celery workers on one machine each
record their own name on the task instances they run."""

from __future__ import annotations

import os
import socket


def worker_name() -> str:
    return os.environ.get("MLOPS_WORKER_NAME") or socket.getfqdn()
