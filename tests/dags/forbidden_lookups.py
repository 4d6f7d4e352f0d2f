"""A secrets backend that records and refuses every lookup: configured
(AIRFLOW__SECRETS__BACKEND) only in the probe process that parses the DAG files, so a Variable or
Connection read at parse time is caught instead of quietly hitting the metadata database on
every parse loop. Airflow logs and skips a failing backend, so the lookups are also appended to
the file $LOOKUP_LOG names, which the test reads."""

from __future__ import annotations

import os

from airflow.secrets.base_secrets import BaseSecretsBackend


class ForbiddenLookups(BaseSecretsBackend):
    def _refuse(self, kind: str, key: str) -> None:
        with open(os.environ["LOOKUP_LOG"], "a", encoding="utf-8") as fh:
            fh.write(f"{kind} {key}\n")
        raise RuntimeError(f"{kind} {key!r} looked up while parsing DAG files")

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        self._refuse("connection", conn_id)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        self._refuse("variable", key)

    def get_config(self, key: str) -> str | None:
        return None
