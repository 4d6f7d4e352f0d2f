"""The model page's live serving section (HTML of `live.live_serving`): the split in force,
per-variant request rate, latency, shadow failures and disagreement, the latest rollout."""

from __future__ import annotations

from html import escape
from typing import Any


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _n(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "—"


def serving_section(live: dict[str, Any] | None) -> str:
    if live is None:
        return '<p class="muted">Live serving is not shown.</p>'
    r = live["routing"]
    if r.get("error"):
        split = f'<p class="alert fail routing-error">routing document: {_e(r["error"])}</p>'
    else:
        shares = ", ".join(f'<b>{_e(a)}</b> {s:.0%}' for a, s in r["shares"].items())
        mirror = (f'; mirror {_e(r["mirror"]["alias"])} {r["mirror"]["percent"]:g}%'
                  if r.get("mirror") else "")
        since = (f' <span class="muted">(set {_e((r.get("at") or "")[:19])} by '
                 f'{_e(r.get("actor"))}: {_e(r.get("reason"))})</span>'
                 if r["source"] == "document" else ' <span class="muted">(params.yaml)</span>')
        split = f'<p id="live-split">Split: {shares}{mirror}{since}</p>'
    rows = "".join(
        f'<tr data-variant="{_e(v)}"><td>{_e(v)}</td><td>{m["requests"]}</td>'
        f'<td>{_n(m["rate_per_s"], ".2f")}</td><td>{_n(m["p50_ms"], ".1f")}</td>'
        f'<td>{_n(m["p99_ms"], ".1f")}</td><td>{m["shadow_requests"]}</td>'
        f'<td>{_n(m["shadow_failure_rate"], ".1%")}</td><td>{_n(m["mean_abs_diff"], ".4f")}</td>'
        f'<td>{_n(m["label_disagreement"], ".1%")}</td></tr>'
        for v, m in sorted(live["variants"].items()))
    table = (f'<table id="live-variants"><tr><th>variant</th><th>requests</th><th>per s</th>'
             f'<th>p50 ms</th><th>p99 ms</th><th>as shadow</th><th>shadow failures</th>'
             f'<th>mean |Δp|</th><th>label disagreement</th></tr>{rows}</table>'
             if rows else f'<p class="muted">No request logged in the last {live["minutes"]} '
                          f'minutes.</p>')
    steps = "".join(
        f'<tr class="rollout-event" data-action="{_e(e["action"])}"><td class="mono">'
        f'{_e((e["at"] or "")[:19])}</td><td>{_e(e["action"])}</td><td>v{_e(e["version"])}</td>'
        f'<td>{_e(e["step"] or "")}</td><td>{"pass" if e["passed"] else "breach" if e["passed"] is False else ""}'
        f'</td><td>{_n(e["error_rate"], ".2%")}</td><td>{_e("; ".join(e["breached"]) or e["reason"])}'
        f'</td></tr>' for e in live["rollout"])
    rollout = (f'<h3>Latest rollout</h3><table id="rollout-steps"><tr><th>when</th><th>event</th>'
               f'<th>version</th><th>step</th><th>verdict</th><th>error rate</th><th>why</th></tr>'
               f'{steps}</table>' if steps else '<p class="muted">No rollout yet.</p>')
    return (f'{split}<h3>Last {live["minutes"]} minutes of the prediction log</h3>{table}'
            f'<p class="muted">Error rates are the rollout steps\' (from the server\'s /metrics); '
            f'the prediction log holds answered requests only.</p>{rollout}')
