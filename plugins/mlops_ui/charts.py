"""Inline SVG line charts (no plotting library in the API server, crisp at any zoom)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= step * m)
    first = math.ceil(lo / step) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def line_chart(x: list[str], series: list[dict[str, Any]], *, title: str, y_label: str = "",
               hlines: Sequence[dict[str, Any]] = (), vlines: Sequence[str] = (),
               y_range: tuple[float | None, float | None] = (None, None),
               width: int = 440, height: int = 250, chart_id: str = "") -> str:
    """An SVG chart of `series` over the categorical x axis `x` (ISO days).

    series: {"name", "values" (aligned with x, None = no point), "color"?, "dash"?,
    "alert"? (list of bools: point drawn red)}; hlines: {"y", "label", "color"?} thresholds;
    vlines: x values to mark (retraining requests).
    """
    left, right, top, bottom = 52, 12, 48, 34
    pw, ph = width - left - right, height - top - bottom
    values = [v for s in series for v in s["values"] if v is not None]
    values += [h["y"] for h in hlines if h.get("y") is not None]
    lo = y_range[0] if y_range[0] is not None else min(values, default=0.0)
    hi = y_range[1] if y_range[1] is not None else max(values, default=1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5 if lo else 0.0, hi + 0.5
    pad = (hi - lo) * 0.06
    lo = lo if y_range[0] is not None else lo - pad
    hi = hi if y_range[1] is not None else hi + pad
    n = max(len(x), 1)

    def px(i: int) -> float:
        return left + (pw * (i + 0.5) / n)

    def py(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    out = [(f'<svg class="chart" id="{escape(chart_id)}" role="img" aria-label="{escape(title)}" '
            f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMidYMid meet" '
            f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="11">'),
           f'<text x="{left}" y="14" font-size="13" font-weight="600">{escape(title)}</text>']
    for t in _ticks(lo, hi):
        y = py(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{_fmt(t)}</text>')
    out.append(f'<text transform="translate(11,{top + ph / 2:.0f}) rotate(-90)" text-anchor="middle" '
               f'fill="#555">{escape(y_label)}</text>')
    every = max(1, math.ceil(n / 7))
    for i, day in enumerate(x):
        if i % every == 0 or i == n - 1:
            out.append(f'<text x="{px(i):.1f}" y="{top + ph + 16}" text-anchor="middle" fill="#555">'
                       f'{escape(day[5:] if len(day) == 10 else day)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#9ca3af"/>')
    for day in vlines:
        if day in x:
            xi = px(list(x).index(day))
            out.append(f'<line x1="{xi:.1f}" x2="{xi:.1f}" y1="{top}" y2="{top + ph}" stroke="#7c3aed" '
                       f'stroke-dasharray="3 3" stroke-width="1.5"><title>retraining requested {escape(day)}'
                       f'</title></line>')
    for h in hlines:
        if h.get("y") is None or not lo <= h["y"] <= hi:
            continue
        y = py(h["y"])
        color = h.get("color", "#dc2626")
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" '
                   f'stroke-dasharray="6 3"/><text x="{left + pw - 4}" y="{y - 4:.1f}" '
                   f'text-anchor="end" fill="{color}">{escape(h.get("label", ""))}</text>')
    legend_x = left + 8
    for k, s in enumerate(series):
        color = s.get("color") or PALETTE[k % len(PALETTE)]
        dash = ' stroke-dasharray="5 4"' if s.get("dash") else ""
        segment: list[str] = []
        for i, v in enumerate(s["values"] + [None]):
            if v is None:
                if len(segment) > 1:
                    out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} '
                               f'points="{" ".join(segment)}"/>')
                segment = []
            else:
                segment.append(f"{px(i):.1f},{py(v):.1f}")
        alerts = s.get("alert") or [False] * len(s["values"])
        for i, v in enumerate(s["values"]):
            if v is None:
                continue
            fill = "#dc2626" if alerts[i] else color
            out.append(f'<circle cx="{px(i):.1f}" cy="{py(v):.1f}" r="{4 if alerts[i] else 2.5}" '
                       f'fill="{fill}"><title>{escape(s["name"])} {escape(x[i])}: {_fmt(v)}</title></circle>')
        label = escape(s["name"])
        out.append(f'<line x1="{legend_x}" x2="{legend_x + 16}" y1="30" y2="30" stroke="{color}" '
                   f'stroke-width="2"{dash}/><text x="{legend_x + 20}" y="34">{label}</text>')
        legend_x += 30 + 6 * len(s["name"])
    if not values:
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" fill="#777">'
                   f'no checks in this period</text>')
    out.append("</svg>")
    return "".join(out)
