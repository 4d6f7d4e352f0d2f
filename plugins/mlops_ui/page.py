"""HTML of the model page and of the validation index (server-rendered, no JavaScript).

`href` turns a report URI into a served URL (or None: the URI is shown as text).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape
from typing import Any

from mlops_ui import charts, urls
from mlops_ui.live_page import serving_section

Href = Callable[[str | None], str | None]
ROLE_TITLES = {"champion": "Champion", "challenger": "Challenger",
               "previous_champion": "Previous champion"}
METRIC_NAMES = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "calibration_error": "calibration error",
                "brier": "Brier"}
LOWER_IS_BETTER = {"calibration_error", "brier"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{background:#017cee;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:20px;margin:0}header a{color:#fff}
main{padding:8px 24px 40px;max-width:1400px}section{margin-top:22px}
h2{font-size:17px;border-bottom:1px solid #d1d5db;padding-bottom:4px}
.cards{display:flex;gap:16px;flex-wrap:wrap}.card{background:#fff;border:1px solid #d1d5db;border-radius:8px;padding:12px 16px;min-width:300px;flex:1}
.card h3{margin:0 0 6px;font-size:16px}.muted{color:#6b7280}.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px}
table{border-collapse:collapse;font-size:13px;background:#fff}td,th{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;font-weight:600}
.pass{background:#dcfce7;color:#166534}.fail{background:#fee2e2;color:#991b1b}.info{background:#e0e7ff;color:#3730a3}
.chain{display:flex;align-items:stretch;gap:4px}.step{background:#fff;border:1px solid #d1d5db;border-radius:8px;padding:8px 10px;flex:1 1 0;min-width:120px;font-size:12px;overflow-wrap:anywhere}
.step b{display:block;font-size:13px;margin-bottom:4px}.arrow{align-self:center;font-size:20px;color:#6b7280}
.bad{border-color:#dc2626;background:#fef2f2}.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:12px;margin-bottom:8px}
.charts svg{background:#fff;border:1px solid #e5e7eb;border-radius:6px;height:auto}
form{display:inline}.alert{display:block;padding:8px 12px;border-radius:6px;overflow-wrap:anywhere}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _link(url: str | None, text: str, title: str | None = None) -> str:
    if not url:
        return _e(text)
    t = f' title="{_e(title)}"' if title else ""
    return f'<a href="{_e(url)}" target="_blank" rel="noopener"{t}>{_e(text)}</a>'


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else _e(value)


def _md(uri: str | None) -> str | None:
    """The Markdown twin of a JSON report (what a person reads)."""
    return uri[:-len(".json")] + ".md" if uri and uri.endswith(".json") else uri


def _verdict(verdict: Any) -> str:
    if verdict in ("pass", True):
        return '<span class="badge pass">gates passed</span>'
    if verdict in ("fail", False):
        return '<span class="badge fail">gates failed</span>'
    return '<span class="badge info">no gate verdict</span>'


def document(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def model_card(role: str, m: dict[str, Any] | None, champion: dict[str, Any] | None, href: Href) -> str:
    title = ROLE_TITLES.get(role, role)
    if m is None:
        return f'<div class="card" data-role="{_e(role)}"><h3>{title}</h3><p class="muted">none</p></div>'
    # deltas only from the version's gate, both models on the same rows: each version's own
    # metrics are on its own evaluation window (another window after a retraining)
    h2h, vs = m.get("head_to_head"), None
    if champion and str(champion["version"]) != str(m["version"]):
        vs = str(champion["version"])
    same = bool(vs and h2h and h2h["champion_version"] == vs)
    rows = []
    for key, label in METRIC_NAMES.items():
        value = m["metrics"].get(key)
        delta = ""
        if same and _finite(h2h["metrics"].get(key)) and _finite(h2h["champion_metrics"].get(key)):
            d = h2h["metrics"][key] - h2h["champion_metrics"][key]
            better = d < 0 if key in LOWER_IS_BETTER else d > 0
            tone = "info" if abs(d) < 5e-5 else "pass" if better else "fail"
            delta = (f' <span class="{tone} badge" title="vs champion v{_e(vs)} on the same rows '
                     f'(this version\'s evaluation set, as its gate measured)">{d:+.4f}</span>')
        rows.append(f"<tr><th>{label}</th><td>{_num(value)}{delta}</td></tr>")
    tags, params = m["tags"], m["params"]
    facts = [("training window", tags.get("training_window")), ("trigger", tags.get("trigger")),
             ("rows (train / eval)", f"{params.get('train_rows', '?')} / {params.get('eval_rows', '?')}"),
             ("feature service", tags.get("feature_service")),
             ("ONNX sha256", (tags.get("onnx_sha256") or "")[:16]), ("registered", m.get("created"))]
    rows += [f'<tr><th>{_e(k)}</th><td class="{"mono" if "sha" in k else ""}">{_e(v)}</td></tr>'
             for k, v in facts]
    report = m.get("gate_report_uri")
    links = " · ".join([_link(urls.mlflow_run(m["run_id"]), "MLflow run") if m.get("run_id") else "",
                        _link(urls.mlflow_version(m["model"], m["version"]), "model version"),
                        _link(href(_md(report)) or href(report), "gate report")
                        if report else "no gate report",
                        _link(href(m.get("card_uri")), "model card") if m.get("card_uri")
                        else "no model card"])
    return (f'<div class="card" data-role="{_e(role)}" data-version="{_e(m["version"])}">'
            f'<h3>{title} · v{_e(m["version"])}</h3><p>{_verdict(tags.get("gate_verdict"))}</p>'
            f'<table>{"".join(rows)}</table>{_compared(vs, same)}<p>{links}</p></div>')


def _compared(vs: str | None, same: bool) -> str:
    """Under a non-champion's metrics: what its deltas compare, or why it has none."""
    if vs is None:
        return ""
    if same:
        return (f'<p class="muted compared">Deltas: against champion v{_e(vs)} on the same rows '
                f"(this version's evaluation set, from its gate report).</p>")
    return (f'<p class="muted compared">Not compared with champion v{_e(vs)} on the same rows: '
            f"the numbers above are on this version's own evaluation window; only a gate "
            f"comparison on the same rows says which model is better.</p>")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _by(event: dict[str, Any]) -> str:
    """Who: the person (when known) and the run that did it."""
    user, actor = event.get("user"), event.get("actor")
    if user:
        return f'{_e(user)}<br><span class="muted">{_e(actor)}</span>'
    return _e(actor)


def history_table(events: list[dict[str, Any]], href: Href) -> str:
    if not events:
        return '<p class="muted">No promotion history yet.</p>'
    rows = []
    for e in events:
        if e.get("moves_champion") and e.get("from_version"):
            move = f"v{_e(e['from_version'])} → v{_e(e['to_version'])}"
        elif e.get("from_version"):
            move = f"v{_e(e['to_version'])} <span class='muted'>(champion v{_e(e['from_version'])})</span>"
        else:
            move = f"v{_e(e['to_version'])}"
        report = e.get("gate_report")
        label = "version's gate report" if e.get("gate_report_of_version") else "gate report"
        failed = f'<br><span class="fail badge">failed: {_e(", ".join(e["failed_gates"]))}</span>' \
            if e.get("failed_gates") else ""
        strong = ' style="font-weight:600"' if e.get("moves_champion") else ""
        card = _link(href(e.get("card")), f"v{e['to_version']} card") if e.get("card") else "—"
        rows.append(f'<tr class="event" data-action="{_e(e["action"])}"{strong}><td class="mono">'
                    f'{_e((e.get("at") or "")[:19])}</td><td>{_e(e["action"])}</td><td>{move}</td>'
                    f'<td>{_e(e.get("reason"))}{failed}</td><td class="mono">{_by(e)}</td>'
                    f'<td>{_link(href(_md(report)) or href(report), label) if report else "—"}</td>'
                    f'<td>{card}</td></tr>')
    return ("<table><tr><th>when (UTC)</th><th>action</th><th>version</th><th>reason</th>"
            f"<th>by</th><th>gate report</th><th>model card</th></tr>{''.join(rows)}</table>")


def card_column(role: str, card: dict[str, Any] | None, href: Href) -> str:
    """One model card as written (Markdown shown as text, its YAML front matter folded), with
    its datasheet and SHAP plot; or the error saying it has none."""
    title = ROLE_TITLES.get(role, role)
    if card is None:
        return (f'<div class="card model-card" data-role="{_e(role)}"><h3>{title}</h3>'
                f'<p class="muted">no version holds this alias</p></div>')
    head = f'<h3>{title} · v{_e(card["version"])}</h3>'
    if card.get("error"):
        return (f'<div class="card model-card" data-role="{_e(role)}" data-version="'
                f'{_e(card["version"])}">{head}<p class="alert fail card-error">'
                f'{_e(card["error"])}</p></div>')
    text = card["text"]
    meta, body = "", text
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        meta, body = text[4:].split("\n---\n", 1)
    links = " · ".join(x for x in (
        _link(href(card["uri"]), "card (Markdown)"),
        _link(href(card.get("datasheet_uri")), "datasheet") if card.get("datasheet_uri") else "",
    ) if x)
    plot = (f'<p><img src="{_e(href(card["plot_uri"]))}" alt="SHAP global importance" '
            f'style="max-width:100%"></p>' if card.get("plot_uri") and href(card["plot_uri"]) else "")
    return (f'<div class="card model-card" data-role="{_e(role)}" data-version="'
            f'{_e(card["version"])}">{head}<p>{links}</p>{plot}'
            f'<details><summary>metadata (YAML front matter, model-index)</summary>'
            f'<pre class="mono">{_e(meta)}</pre></details>'
            f'<pre class="mono card-text" style="white-space:pre-wrap">{_e(body)}</pre></div>')


def card_section(cards: dict[str, Any] | None, registry_error: str | None, href: Href) -> str:
    """The champion's and the challenger's model cards side by side."""
    if cards is None:  # the registry could not be asked: said once, in the models section
        return f'<p class="muted">{"not known: the registry could not be asked (above)" if registry_error else "not loaded"}</p>'
    return ('<div class="cards">' + "".join(card_column(role, cards.get(role), href)
                                            for role in ("champion", "challenger")) + "</div>")


def trend_section(t: dict[str, Any], href: Href) -> str:
    if not t["days"]:
        return '<p class="muted">No drift or quality checks yet.</p>'
    x = t["days"]
    drift = {p["date"]: p for p in t["drift"]}
    quality = {p["date"]: p for p in t["quality"]}

    def col(points: dict, key: str) -> list[float | None]:
        return [points[d].get(key) if d in points else None for d in x]

    share_t = next((p["drift_share_threshold"] for p in t["drift"] if p.get("drift_share_threshold")), None)
    psi_t = next((p["prediction_psi_threshold"] for p in t["drift"] if p.get("prediction_psi_threshold")), None)
    alerts = [bool(drift[d]["drift"]) if d in drift else False for d in x]
    share = charts.line_chart(x, [{"name": "weighted drifted share", "values": col(drift, "drift_share"),
                                   "alert": alerts}],
                              title="Feature drift (red: interval drifted)", y_label="share",
                              hlines=[{"y": share_t, "label": f"drift_share {share_t}"}],
                              vlines=t["retrain"], y_range=(0.0, None), chart_id="chart-drift")
    psi = charts.line_chart(x, [{"name": "prediction PSI", "values": col(drift, "prediction_psi"),
                                 "color": "#ff7f0e"}],
                            title="Prediction drift", y_label="PSI",
                            hlines=[{"y": psi_t, "label": f"threshold {psi_t}"}],
                            vlines=t["retrain"], y_range=(0.0, None), chart_id="chart-psi")
    base: dict[str, Any] = next((p for p in reversed(t["quality"])
                                 if p.get("baseline_roc_auc") is not None), {})
    qual = charts.line_chart(
        x, [{"name": "ROC AUC (day)", "values": col(quality, "roc_auc"),
             "alert": [bool(quality[d]["decay"]) if d in quality else False for d in x]},
            {"name": "ROC AUC (window)", "values": col(quality, "window_roc_auc"), "color": "#2ca02c"},
            {"name": "PR AUC (day)", "values": col(quality, "pr_auc"), "color": "#9467bd"}],
        title="Live quality by day of outcome (red: decay)", y_label="metric",
        hlines=[{"y": base.get("baseline_roc_auc"), "label": "ROC AUC at evaluation", "color": "#2ca02c"}],
        vlines=t["retrain"], chart_id="chart-quality")
    rows = []
    for p in reversed(t["drift"]):
        rows.append(f'<tr><td>{_e(p["date"])}</td><td>{"drift" if p["drift"] else "ok"}</td>'
                    f'<td>{_num(p.get("drift_share"), 3)}</td><td>{_num(p.get("prediction_psi"), 3)}</td>'
                    f'<td>v{_e(p.get("model_version"))}</td><td>{_e(", ".join(p["drifted"][:4]))}</td>'
                    f'<td>{_link(href(p.get("report_uri")), "Evidently") if p.get("report_uri") else "—"}</td></tr>')
    table = ("<details><summary>Drift checks</summary><table><tr><th>day</th><th>verdict</th>"
             "<th>drift share</th><th>prediction PSI</th><th>model</th><th>drifted features</th>"
             f"<th>report</th></tr>{''.join(rows)}</table></details>")
    retrain = (f'<p>Retraining requested on: {_e(", ".join(t["retrain"]))} (purple lines).</p>'
               if t["retrain"] else "")
    return f'<div class="charts">{share}{psi}{qual}</div>{retrain}{table}'


def lineage_section(lin: dict[str, Any] | None, parts: list[str], selected: str | None,
                    days: int, href: Href) -> str:
    options = "".join(f'<option value="{_e(d)}"{" selected" if d == selected else ""}>{_e(d)}</option>'
                      for d in parts)
    form = (f'<form method="get" action="{_e(urls.page("/"))}#lineage"><input type="hidden" name="days" '
            f'value="{days}"><label>partition <select name="partition" id="partition-select">{options}'
            f'</select></label> <button type="submit">show</button></form>')
    if lin is None:
        return form + '<p class="muted">No prediction partition published yet.</p>'
    boxes = []
    for s in lin["steps"]:
        target = None
        if s.get("run_id"):
            target = urls.mlflow_run(s["run_id"])
        elif s.get("version"):
            target = urls.mlflow_version(s["model"], s["version"])
        elif s.get("uri"):
            target = href(s["uri"])
        value = str(s.get("value") or "—")
        shown = value if len(value) <= 24 else value[:16] + "…"
        detail = "".join(f"<div><span class='muted'>{_e(k)}:</span> <span class='mono'>"
                         f"{_e(str(v)[:40])}</span></div>" for k, v in s["detail"].items() if v is not None)
        check = {True: " ✓", False: " ✗ mismatch"}.get(s["ok"], "")
        boxes.append(f'<div class="step{" bad" if s["ok"] is False else ""}" data-step="{_e(s["step"])}">'
                     f'<b>{_e(s["step"])}{check}</b><div class="mono" title="{_e(value)}">'
                     f'{_link(target, shown, value)}</div>{detail}</div>')
    if lin.get("registry_error"):  # nothing was compared: neither agree nor disagree
        state = f'<span class="alert fail registry-error">{_e(lin["registry_error"])}</span>'
    elif lin["consistent"]:
        state = '<span class="badge pass">manifest and registry agree</span>'
    else:
        state = '<span class="badge fail">manifest and registry disagree</span>'
    return (f'{form}<p>Partition {_e(lin["date"])} scored by {_e(lin["model"])} v{_e(lin["version"])} '
            f'{state}</p><div class="chain">{"<span class=arrow>→</span>".join(boxes)}</div>')


def model_cards(models: dict[str, Any] | None, registry_error: str | None, href: Href) -> str:
    """The champion, challenger and previous champion; or, plainly, why they are not known."""
    if models is None:
        return f'<p class="alert fail registry-error">{_e(registry_error or "could not ask the registry")}</p>'
    champion = models.get("champion")
    return "".join(model_card(role, models.get(role), champion, href) for role in ROLE_TITLES)


def model_page(*, model: str, models: dict[str, Any] | None, history: list[dict[str, Any]],
               trend: dict[str, Any], partitions: list[str], lineage: dict[str, Any] | None,
               selected: str | None, days: int, href: Href, registry_error: str | None = None,
               live: dict[str, Any] | None = None,
               cards: dict[str, Any] | None = None) -> str:
    """The whole model page; `models` is None when the registry could not be asked."""
    boxes = model_cards(models, registry_error, href)
    period = f"{trend['start']} .. {trend['end']}" if trend["start"] else "no checks yet"
    days_form = (f'<form method="get" action="{_e(urls.page("/"))}"><label>last <input name="days" '
                 f'type="number" min="1" max="366" value="{days}" style="width:4em"> days</label>'
                 f'{f"<input type=hidden name=partition value={_e(selected)}>" if selected else ""}'
                 f' <button type="submit">show</button></form>')
    body = (f'<header><h1>Model <span id="model-name">{_e(model)}</span></h1>'
            f'<a href="#models">models</a><a href="#cards">model cards</a>'
            f'<a href="#history">promotion history</a>'
            f'<a href="#serving">live serving</a>'
            f'<a href="#trends">drift &amp; quality</a><a href="#lineage">lineage</a></header><main>'
            f'<section id="models"><h2>Champion and challenger</h2><div class="cards">{boxes}</div></section>'
            f'<section id="cards"><h2>Model cards</h2>{card_section(cards, registry_error, href)}'
            f'</section>'
            f'<section id="serving"><h2>Live serving</h2>{serving_section(live)}</section>'
            f'<section id="history"><h2>Promotion history</h2>{history_table(history, href)}</section>'
            f'<section id="trends"><h2>Drift and live quality, last {days} days ({_e(period)}) '
            f'</h2>{days_form}{trend_section(trend, href)}</section>'
            f'<section id="lineage"><h2>Lineage of a prediction partition</h2>'
            f'{lineage_section(lineage, partitions, selected, days, href)}</section></main>')
    return document(f"Model {model}", body)


def validation_page(rows: list[dict[str, Any]], title: str, href: Href) -> str:
    if not rows:
        table = '<p class="muted">No validation reports for this interval.</p>'
    else:
        cells = []
        for r in rows:
            ok = '<span class="badge pass">passed</span>' if r["success"] else \
                '<span class="badge fail">failed</span>'
            cells.append(f'<tr><td>{_e(r["partition"])}</td><td>{_e(r["table"])}</td><td>{ok}</td>'
                         f'<td>{_e(r["rows"])}</td><td>{_e(r["checks"])} checks, {_e(r["failures"])} '
                         f'failed, {_e(r["warnings"])} warnings</td>'
                         f'<td>{_link(href(r["data_docs_uri"]), "Data Docs") if r["data_docs_uri"] else "—"}'
                         f'{" · " + _link(href(r["data_docs_site"]), "site") if r["data_docs_site"] else ""}</td>'
                         f'<td>{_link(href(r["expectations_report_uri"]), "expectations report")}</td>'
                         f'<td>{_link(href(r["report_uri"]), "JSON")}</td></tr>')
        table = ("<table><tr><th>partition</th><th>table</th><th>verdict</th><th>rows</th><th>checks</th>"
                 f"<th>GX Data Docs</th><th>report</th><th>raw</th></tr>{''.join(cells)}</table>")
    body = (f'<header><h1>{_e(title)}</h1><a href="{_e(urls.page("/"))}">model page</a></header>'
            f'<main><section>{table}</section></main>')
    return document(title, body)
