"""The dashboard at ``GET /``: server-rendered HTML and inline SVG, no CDN, works offline.

Three charts — the live score histogram against the reference scores (with the threshold),
the drift p-value over time (with the test's threshold) and the flagged rate over time — and a
row of figures. The page loads ``dashboard.js`` (served by the app), which fetches
``dashboard/panel`` every few seconds and swaps it in; without JavaScript a ``<noscript>`` meta
refresh reloads the page. Every value written into the page is escaped.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["render_page", "render_panel", "DASHBOARD_JS", "DASHBOARD_CSS", "FAVICON_SVG", "CSP"]

#: Content-Security-Policy of the dashboard: nothing but this server, no inline script.
CSP: str = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_W, _H = 560, 250  # chart size
_M = {"l": 58, "r": 16, "t": 30, "b": 40}  # margins
_BLUE, _GREY, _RED, _GREEN, _INK = "#2563eb", "#9ca3af", "#dc2626", "#16a34a", "#111827"

DASHBOARD_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f3f4f6;color:#111827}
header{background:#111827;color:#f9fafb;padding:12px 24px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:20px;margin:0}
header .sub{color:#d1d5db;font-size:13px}
#status{margin-left:auto;font-size:13px;color:#86efac}
#status.bad{color:#fca5a5}
main{padding:16px 24px}
.tiles{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.tile{background:#fff;border-radius:8px;padding:10px 16px;min-width:130px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.tile .k{font-size:12px;color:#6b7280;text-transform:uppercase;letter-spacing:.04em}
.tile .v{font-size:22px;font-weight:600;margin-top:2px}
.tile.alert{background:#fee2e2}.tile.ok{background:#dcfce7}
.charts{display:flex;gap:16px;flex-wrap:wrap}
.chart{background:#fff;border-radius:8px;padding:8px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.note{color:#6b7280;font-size:13px;margin:8px 0 0}
table{border-collapse:collapse;background:#fff;margin-top:16px;font-size:13px}
td,th{padding:4px 10px;border-bottom:1px solid #e5e7eb;text-align:right}
th{color:#6b7280;font-weight:500}
tr.drift td{color:#b91c1c;font-weight:600}
"""

DASHBOARD_JS = """(function () {
  var body = document.body;
  var every = Math.max(0.5, Number(body.getAttribute('data-refresh') || 2)) * 1000;
  var status = document.getElementById('status');
  function show(text, bad) {
    status.textContent = text;
    status.className = bad ? 'bad' : '';
  }
  function tick() {
    fetch('dashboard/panel', {cache: 'no-store', credentials: 'same-origin'})
      .then(function (r) {
        if (!r.ok) { throw new Error('HTTP ' + r.status); }
        return r.text();
      })
      .then(function (text) {
        document.getElementById('panel').innerHTML = text;
        var n = Number(body.getAttribute('data-refreshes') || 0) + 1;
        body.setAttribute('data-refreshes', String(n));
        show('live \u00b7 updated ' + new Date().toLocaleTimeString(), false);
      })
      .catch(function (e) { show('not updating: ' + e.message, true); })
      .then(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
"""

FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#111827"/>'
    '<path d="M2 12 L6 7 L9 10 L14 3" stroke="#22c55e" stroke-width="2" fill="none"/></svg>'
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


class _Axes:
    """Linear maps from data to SVG pixels inside the chart margins."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float) -> None:
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 + 1)
        self.y0, self.y1 = y0, (y1 if y1 > y0 else y0 + 1)
        self.left, self.right = _M["l"], _W - _M["r"]
        self.top, self.bottom = _M["t"], _H - _M["b"]

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, v: float) -> float:
        return self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def _frame(title: str, ax: _Axes, xticks: Sequence[tuple[float, str]], yticks, xlabel, ylabel):
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{_e(title)}">',
        f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="#ffffff"/>',
        f'<text x="{_M["l"]}" y="18" font-size="14" font-weight="600" fill="{_INK}">'
        f"{_e(title)}</text>",
    ]
    for v, label in yticks:
        y = ax.y(v)
        out.append(
            f'<line x1="{ax.left}" x2="{ax.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{ax.left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#4b5563">{_e(label)}</text>'
        )
    for v, label in xticks:
        x = ax.x(v)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ax.bottom}" y2="{ax.bottom + 4}" '
            f'stroke="#6b7280"/><text x="{x:.1f}" y="{ax.bottom + 16}" font-size="11" '
            f'text-anchor="middle" fill="#4b5563">{_e(label)}</text>'
        )
    out.append(
        f'<line x1="{ax.left}" x2="{ax.right}" y1="{ax.bottom}" y2="{ax.bottom}" stroke="#6b7280"/>'
        f'<line x1="{ax.left}" x2="{ax.left}" y1="{ax.top}" y2="{ax.bottom}" stroke="#6b7280"/>'
        f'<text x="{(ax.left + ax.right) / 2:.0f}" y="{_H - 6}" font-size="12" '
        f'text-anchor="middle" fill="#374151">{_e(xlabel)}</text>'
        f'<text x="14" y="{(ax.top + ax.bottom) / 2:.0f}" font-size="12" text-anchor="middle" '
        f'fill="#374151" transform="rotate(-90 14 {(ax.top + ax.bottom) / 2:.0f})">'
        f"{_e(ylabel)}</text>"
    )
    return out


def _legend(items: Sequence[tuple[str, str, bool]]) -> str:
    x = _W - _M["r"]
    parts = []
    for label, color, dashed in reversed(items):
        width = 7 * len(label) + 26
        x -= width
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(
            f'<line x1="{x}" x2="{x + 16}" y1="14" y2="14" stroke="{color}" stroke-width="3"{dash}/>'
            f'<text x="{x + 20}" y="18" font-size="11" fill="#374151">{_e(label)}</text>'
        )
    return "".join(parts)


def _empty(title: str, message: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{_e(title)}">'
        f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="#ffffff"/>'
        f'<text x="{_M["l"]}" y="18" font-size="14" font-weight="600" fill="{_INK}">{_e(title)}'
        f'</text><text x="{_W / 2}" y="{_H / 2}" font-size="13" text-anchor="middle" '
        f'fill="#6b7280">{_e(message)}</text></svg>'
    )


def histogram_svg(
    window: np.ndarray, reference: np.ndarray | None, threshold: float, bins: int = 30
) -> str:
    """Densities of log10(score) of the window against the reference, threshold marked."""
    title = "Score distribution (log scale)"
    if len(window) == 0 and (reference is None or len(reference) == 0):
        return _empty(title, "no scores yet")
    eps = 1e-8
    sets = [a for a in (window, reference) if a is not None and len(a)]
    allv = np.log10(np.maximum(np.concatenate(sets), eps))
    lo, hi = np.percentile(allv, [0.5, 99.5])
    t = math.log10(max(threshold, eps))
    lo, hi = min(lo, t), max(hi, t)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    edges = np.linspace(lo - pad, hi + pad, bins + 1)

    def density(a: np.ndarray) -> np.ndarray:
        v = np.clip(np.log10(np.maximum(a, eps)), edges[0], edges[-1])
        counts = np.histogram(v, bins=edges)[0].astype(float)
        return counts / max(counts.sum(), 1) / (edges[1] - edges[0])

    dens = {
        "ref": density(reference) if reference is not None and len(reference) else None,
        "win": density(window) if len(window) else None,
    }
    top = max(float(d.max()) for d in dens.values() if d is not None) * 1.1 or 1.0
    ax = _Axes(float(edges[0]), float(edges[-1]), 0.0, top)
    decades = range(math.ceil(edges[0]), math.floor(edges[-1]) + 1)
    xt = [(float(d), f"1e{d}") for d in decades]
    if len(xt) < 2:
        xt = [(float(v), _fmt(10**v, 2)) for v in np.linspace(edges[0], edges[-1], 4)]
    yt = [(v, _fmt(v, 2)) for v in np.linspace(0, top, 5)[1:]]
    out = _frame(title, ax, xt, yt, "instance score", "density")
    for key, color, opacity in (("ref", _GREY, "0.55"), ("win", _BLUE, "0.55")):
        d = dens[key]
        if d is None:
            continue
        for i, h in enumerate(d):
            if h <= 0:
                continue
            x0, x1 = ax.x(edges[i]), ax.x(edges[i + 1])
            y = ax.y(h)
            out.append(
                f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                f'height="{ax.bottom - y:.1f}" fill="{color}" fill-opacity="{opacity}"/>'
            )
    xt_ = ax.x(t)
    out.append(
        f'<line x1="{xt_:.1f}" x2="{xt_:.1f}" y1="{ax.top}" y2="{ax.bottom}" stroke="{_RED}" '
        'stroke-width="2" stroke-dasharray="5 3"/>'
    )
    legend = [("window", _BLUE, False)]
    if dens["ref"] is not None:
        legend.insert(0, ("reference", _GREY, False))
    legend.append(("threshold", _RED, True))
    out.append(_legend(legend))
    out.append("</svg>")
    return "".join(out)


def _series_svg(
    title: str,
    xs: Sequence[float],
    ys: Sequence[float],
    flags: Sequence[bool],
    *,
    ylabel: str,
    hline: float | None,
    hlabel: str,
    log: bool,
    ymax: float | None = None,
) -> str:
    if not xs:
        return _empty(title, "no drift test yet")
    if log:
        floor = 1e-12
        vals = [math.log10(max(v, floor)) for v in ys]
        lo = min(min(vals), math.log10(hline) if hline else 0.0) - 0.3
        lo = min(lo, -2.0)
        ax = _Axes(float(xs[0]), float(xs[-1]), lo, 0.05)
        yt = [(float(d), f"1e{d}" if d else "1") for d in range(math.ceil(lo), 1)]
        if len(yt) > 7:
            step = math.ceil(len(yt) / 6)
            yt = yt[::-1][::step][::-1]
        h = math.log10(hline) if hline else None
    else:
        vals = list(ys)
        top = max(max(vals), hline or 0.0, 1e-3) * 1.15
        if ymax is not None:
            top = min(top, ymax)
        ax = _Axes(float(xs[0]), float(xs[-1]), 0.0, top)
        yt = [
            (v, f"{100 * v:.0f}%" if top > 0.05 else f"{100 * v:.1f}%")
            for v in np.linspace(0, top, 5)[1:]
        ]
        h = hline
    n_ticks = min(5, len(xs))
    xt = [(float(v), f"{int(v):,}") for v in np.linspace(xs[0], xs[-1], n_ticks)]
    if xs[0] == xs[-1]:
        xt = [(float(xs[0]), f"{int(xs[0]):,}")]
    out = _frame(title, ax, xt, yt, "instances seen", ylabel)
    if h is not None:
        y = ax.y(h)
        out.append(
            f'<line x1="{ax.left}" x2="{ax.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{_RED}" '
            'stroke-width="2" stroke-dasharray="5 3"/>'
        )
    pts = " ".join(f"{ax.x(x):.1f},{ax.y(v):.1f}" for x, v in zip(xs, vals, strict=True))
    out.append(f'<polyline points="{pts}" fill="none" stroke="{_BLUE}" stroke-width="2"/>')
    for x, v, f in zip(xs, vals, flags, strict=True):
        color = _RED if f else _GREEN
        out.append(f'<circle cx="{ax.x(x):.1f}" cy="{ax.y(v):.1f}" r="3.5" fill="{color}"/>')
    legend = [(ylabel.split(" (")[0], _BLUE, False)]
    if h is not None:
        legend.append((hlabel, _RED, True))
    out.append(_legend(legend))
    out.append("</svg>")
    return "".join(out)


def _tile(key: str, value: str, cls: str = "") -> str:
    c = f"tile {cls}".strip()
    return f'<div class="{c}"><div class="k">{_e(key)}</div><div class="v">{_e(value)}</div></div>'


def render_panel(state: dict[str, Any]) -> str:
    """The refreshable part of the dashboard (tiles, charts, recent tests) as an HTML fragment.

    ``state`` holds ``drift`` (the ``/drift`` snapshot), ``window`` and ``reference`` (score
    arrays), ``threshold``, ``n_scored``, ``n_flagged``, ``requests``, ``started``.
    """
    drift = state["drift"]
    history = drift["history"]
    n_seen, n_flag = state["n_scored"], state["n_flagged"]
    ref = state["reference"]
    threshold = state["threshold"]
    tiles = [
        _tile("instances scored", f"{n_seen:,}"),
        _tile("flagged", f"{n_flag:,} ({100 * n_flag / n_seen:.1f}%)" if n_seen else "0"),
        _tile("requests", f"{state['requests']:,}"),
        _tile("threshold", _fmt(threshold)),
        _tile("version", str(state.get("version", ""))),
    ]
    if drift["enabled"]:
        p = drift["p_val"]
        if p is None:
            tiles.append(_tile("harmful drift", "no test yet"))
        else:
            flag = bool(drift["is_drift"])
            tiles.append(
                _tile("harmful drift", "DRIFT" if flag else "none", "alert" if flag else "ok")
            )
            tiles.append(_tile("latest p-value", _fmt(p)))
        tiles.append(_tile("window", f"{drift['n_window']:,} / {drift['window']:,}"))
    else:
        tiles.append(_tile("harmful drift", "monitor off"))
    window = state["window"]
    charts = [histogram_svg(window, ref, threshold)]
    if drift["enabled"]:
        xs = [h["n_seen"] for h in history]
        flags = [h["is_drift"] for h in history]
        thr = history[-1]["threshold"] if history else None
        charts.append(
            _series_svg(
                "Drift p-value over time",
                xs,
                [h["p_val"] for h in history],
                flags,
                ylabel="p-value (log scale)",
                hline=thr,
                hlabel="threshold",
                log=True,
            )
        )
        expected = float((ref > threshold).mean()) if ref is not None and len(ref) else None
        charts.append(
            _series_svg(
                "Flagged rate in the window",
                xs,
                [h["flagged_rate"] for h in history],
                flags,
                ylabel="flagged rate",
                hline=expected,
                hlabel="on reference",
                log=False,
                ymax=1.0,
            )
        )
    parts = [f'<div class="tiles">{"".join(tiles)}</div>']
    parts.append('<div class="charts">')
    parts.extend(f'<div class="chart">{c}</div>' for c in charts)
    parts.append("</div>")
    if not drift["enabled"]:
        parts.append(f'<p class="note">{_e(drift["reason"])}</p>')
    if history:
        rows = []
        for h in reversed(history[-10:]):
            cls = ' class="drift"' if h["is_drift"] else ""
            rows.append(
                f"<tr{cls}><td>{_e(h['updated_at'])}</td><td>{h['n_seen']:,}</td>"
                f"<td>{_e(_fmt(h['p_val']))}</td><td>{'yes' if h['is_drift'] else 'no'}</td>"
                f"<td>{100 * h['flagged_rate']:.1f}%</td><td>{_e(h['model_version'])}</td></tr>"
            )
        parts.append(
            "<table><thead><tr><th>time (UTC)</th><th>instances seen</th><th>p-value</th>"
            "<th>drift</th><th>flagged</th><th>version</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
        )
    return "".join(parts)


def render_page(state: dict[str, Any], *, name: str, version: str, refresh: float) -> str:
    """The whole dashboard page."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(state["started"]))
    auth = "token required" if state.get("authenticated") else "unauthenticated"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(name)} · distilldetect</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<noscript><meta http-equiv="refresh" content="{max(int(refresh), 1)}"></noscript>'
        '<link rel="icon" href="dashboard/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="dashboard/style.css"></head>'
        f'<body data-refresh="{refresh:g}" data-refreshes="0">'
        f"<header><h1>{_e(name)}</h1>"
        f'<span class="sub">detector version {_e(version)} · started {_e(started)} UTC · '
        f"{_e(auth)}</span>"
        '<span id="status">live</span></header>'
        f'<main id="panel">{render_panel(state)}</main>'
        '<script src="dashboard/script.js"></script></body></html>'
    )
