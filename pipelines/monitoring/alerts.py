"""Alerts: one Airflow notifier for drift, quality decay, gate failure and pipeline failure.

`MonitoringNotifier` is a `BaseNotifier`: use it as a DAG's or task's `on_failure_callback`, or
call it with a task's context. The channel comes from `params.yaml` `alerts`: `log` (default)
or `webhook` (a JSON POST; URL from `$MLOPS_ALERT_WEBHOOK_URL`, else the Airflow connection
`alerts.webhook_conn_id`). A delivery failure is logged as an error and returned, never raised:
an unreachable alert endpoint must not stop monitoring or retraining.

A webhook URL is a secret (it often carries a token): https only (plain http only to a relay
on this machine's loopback), redirects refused (a redirect could send the alert, and the URL's
secret, elsewhere), and the URL never appears in a log line or a returned error.
Imported by DAG files at parse time: the standard library and `airflow.sdk` only.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)
__all__ = ["MonitoringNotifier", "deliver", "notify_decision", "notify_gate_failure"]


def _channel() -> tuple[str, str | None, float]:
    """(channel, webhook URL or None, timeout) from config, env and Airflow connections."""
    from pipelines.core.config import load_config

    cfg = load_config().alerts
    if cfg.channel != "webhook":
        return cfg.channel, None, cfg.timeout_seconds
    from pipelines.core.settings import env_value

    url = env_value(cfg.webhook_url_env) or None
    if url is None:
        try:
            from airflow.sdk import BaseHook

            conn = BaseHook.get_connection(cfg.webhook_conn_id)
            host = conn.host or ""
            if "://" not in host:
                scheme = conn.conn_type if conn.conn_type in ("http", "https") else "http"
                host = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
            url = host.rstrip("/") + (f"/{conn.schema.lstrip('/')}" if conn.schema else "")
        except Exception as exc:  # noqa: BLE001 - reported as an undelivered alert
            log.error("alerts: webhook channel but no $%s and no connection %r (%s)",
                      cfg.webhook_url_env, cfg.webhook_conn_id, exc)
    return "webhook", url, cfg.timeout_seconds


def _text(alert: dict[str, Any]) -> str:
    where = ".".join(str(alert[k]) for k in ("dag_id", "task_id") if alert.get(k))
    return (f"[{alert.get('severity', 'info')}] {alert.get('title', '')}"
            + (f" ({where} {alert.get('run_id', '')})" if where else "")
            + (f": {alert['message']}" if alert.get("message") else "")
            + (f" | report: {alert['link']}" if alert.get("link") else ""))


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def refuse_url(url: str) -> str | None:
    """Why a webhook URL is refused (None: allowed): https, or http to a loopback relay."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the webhook URL is not a URL"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK:
        return None
    return (f"webhook URLs must be https (plain http only to a loopback relay); got a "
            f"{parts.scheme or 'scheme-less'} URL")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - stdlib
        raise urllib.error.HTTPError(req.full_url, code, f"redirect ({code}) refused", headers, fp)


def _scrub(text: str, url: str) -> str:
    """`text` without the URL or its host and path (exception messages may quote them)."""
    parts = urlsplit(url)
    for secret in sorted({url, parts.netloc, parts.path, parts.query} - {"", "/"}, key=len,
                         reverse=True):
        text = text.replace(secret, "<webhook>")
    return text


def deliver(alert: dict[str, Any], channel: str | None = None, url: str | None = None,
            timeout: float = 5.0) -> dict[str, Any]:
    """Send one alert on the configured (or given) channel; returns what happened."""
    if channel is None:
        channel, url, timeout = _channel()
    text = _text(alert)
    if channel == "log":
        log.warning("ALERT %s", text)
        return {"channel": "log", "delivered": True}
    if not url:
        log.error("ALERT (undelivered: no webhook URL) %s", text)
        return {"channel": channel, "delivered": False, "error": "no webhook URL configured"}
    if (refused := refuse_url(url)) is not None:
        log.error("ALERT (undelivered: %s) %s", refused, text)
        return {"channel": "webhook", "delivered": False, "error": refused}
    body = json.dumps({"text": text, **alert}, default=str).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=timeout) as response:
            status = int(response.status)
        return {"channel": "webhook", "delivered": 200 <= status < 300, "status": status}
    except Exception as exc:  # noqa: BLE001 - never let alerting break the pipeline
        error = _scrub(f"{type(exc).__name__}: {exc}", url)
        log.error("ALERT (undelivered: %s) %s", error, text)
        return {"channel": "webhook", "delivered": False, "error": error}


class MonitoringNotifier(BaseNotifier):
    """Alert on drift, decay, gate failure or a failed task/DAG run, with a link to the report.

    `kind`: drift | decay | retrain | gate_failure | task_failure | dag_failure. `title`,
    `message` and `link` are Jinja templates rendered with the callback's context; `details`
    (a dict) is sent as is. Without a link, a failure alert links to the task's log.
    """

    template_fields = ("title", "message", "link")

    def __init__(self, kind: str = "task_failure", title: str = "", message: str = "",
                 link: str = "", severity: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.kind, self.title, self.message, self.link = kind, title, message, link
        self.severity = severity or ("error" if kind.endswith("failure") else "warning")
        self.details = details or {}
        self.result: dict[str, Any] | None = None

    def notify(self, context: Any) -> None:
        ti = context.get("ti") or context.get("task_instance")
        dag_run = context.get("dag_run")
        exception = context.get("exception")
        alert = {
            "kind": self.kind, "severity": self.severity,
            "title": self.title or f"{self.kind.replace('_', ' ')}",
            "message": self.message or (f"{type(exception).__name__}: {exception}" if exception else
                                        (context.get("reason") or "")),
            "link": self.link or (getattr(ti, "log_url", None) if ti is not None else None) or "",
            "dag_id": getattr(dag_run, "dag_id", None) or getattr(context.get("dag"), "dag_id", None),
            "run_id": getattr(dag_run, "run_id", None) or context.get("run_id"),
            "task_id": getattr(ti, "task_id", None),
            "details": self.details,
        }
        self.result = deliver(alert)


def notify_decision(context: Any, decision: dict[str, Any]) -> dict[str, Any] | None:
    """Alert on a drift / decay episode or a retraining request (`decision["alert"]` set)."""
    if not decision.get("alert"):
        return None
    evidence = decision.get("evidence", {})
    signals = " and ".join(k for k in ("drift", "decay") if evidence.get(k)) or "signal"
    title = (f"retraining requested: {signals} on {decision['date']}" if decision["retrain"]
             else f"{signals} on {decision['date']} (no retraining: {decision['reason']})")
    message = "; ".join(str(evidence[k]) for k in ("drift_reason", "quality_reason") if evidence.get(k))
    notifier = MonitoringNotifier(kind="retrain" if decision["retrain"] else signals.split()[0],
                                  title=title, message=message.replace("{", "(").replace("}", ")"),
                                  link=evidence.get("report_uri") or "", details=evidence)
    notifier(dict(context))
    return notifier.result


def notify_gate_failure(context: Any, report: dict[str, Any]) -> dict[str, Any] | None:
    """For the training DAG: alert that a challenger failed its gates (champion unchanged)."""
    stays = report.get("champion_version") or "none"
    notifier = MonitoringNotifier(
        kind="gate_failure", severity="warning",
        title=f"gates failed for version {report.get('version')}: champion stays {stays}",
        message="; ".join(map(str, report.get("failed", []))).replace("{", "(").replace("}", ")"),
        link=report.get("report_uri") or "", details={k: report.get(k) for k in
                                                      ("version", "champion_version", "failed")})
    notifier(dict(context))
    return notifier.result
