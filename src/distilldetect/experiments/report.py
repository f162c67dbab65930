"""report.md, report.html and the figures of the harmful-drift study.

The report is built once as a list of blocks (headings, paragraphs, lists, tables, figures)
and rendered twice: as Markdown beside PNG files, and as one self-contained HTML page whose
figures are embedded as base64 PNG (no network, no script), which any browser opens.
Every detection rate is shown with its 95 % binomial (Clopper-Pearson) confidence interval.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import DETECTOR_LABELS, StudyResults, _nearest
from .outputs import OutputDir

__all__ = ["DETECTOR_NAMES", "render_html", "render_markdown", "report_blocks", "write_outputs"]

DETECTOR_NAMES = {
    "tail_rank": "distillation, tail-rank test",
    "one_sided": "distillation, KS one-sided",
    "two_sided": "distillation, KS two-sided",
    "entropy": "teacher entropy, KS one-sided",
    "entropy_tail_rank": "teacher entropy, tail-rank test",
    "bbsd": "BBSD (softmax, Bonferroni)",
}
_DPI = 110


@dataclass
class Block:
    """One piece of the report: ``kind`` is heading, text, list, table or figure."""

    kind: str
    payload: Any
    level: int = 2


# ============================================================================ formatting
def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.0f}%"


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def _rate(rate: float | None, ci: Sequence[float | None] | None) -> str:
    """``83% (77–88)``: a rate with its 95 % CI in percent."""
    if rate is None or rate != rate:
        return "–"
    if not ci or ci[0] is None or ci[1] is None or ci[0] != ci[0]:
        return _pct(rate)
    return f"{100 * rate:.0f}% ({100 * ci[0]:.0f}–{100 * ci[1]:.0f})"


def _cell(stats: dict[str, Any], i: int) -> str:
    ci = stats.get("ci")
    return _rate(stats["detection_rate"][i], ci[i] if ci else None)


# ============================================================================ figures
def _figures(data: dict[str, Any]) -> dict[str, Any]:
    """File name -> matplotlib Figure, in report order."""
    from .. import plotting

    figs = {
        "scores_by_severity.png": plotting.plot_scores_by_severity(data),
        "auroc_by_severity.png": plotting.plot_aurocs(data),
        "roc_curves.png": plotting.plot_roc_curves(data),
        "detection_rate.png": plotting.plot_detection_rates(data),
    }
    for s in sorted(data["severities"], key=int):
        figs[f"pvalues_severity{s}.png"] = plotting.plot_pvalues(data, s, detectors=_compared(data))
        if "power_by_batch_size" in data["severities"][s]:
            figs[f"power_severity{s}.png"] = plotting.plot_power_by_batch_size(data, s)
    return figs


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _compared(data: dict[str, Any]) -> tuple[str, ...]:
    """The study's harmful-drift test and the old default (KS one-sided), in that order."""
    test = data["config"].get("drift_test", "one_sided")
    return (test, "one_sided") if test != "one_sided" else ("one_sided",)


# ============================================================================ content
def report_blocks(data: dict[str, Any], figures: Sequence[str]) -> list[Block]:
    """The report's content; ``figures`` are the file names of the figures available."""
    cfg = data["config"]
    sev = sorted(data["severities"], key=int)
    test = cfg.get("drift_test", "one_sided")
    compared = _compared(data)
    blocks: list[Block] = []
    add = blocks.append

    def figure(name: str, alt: str) -> None:
        if name in figures:
            add(Block("figure", (name, alt)))

    add(Block("heading", f"Harmful drift study — {data['dataset']}", 1))
    add(
        Block(
            "text",
            "A small student is distilled from the classifier (the teacher) on clean unlabelled data; "
            "the distillation loss between the two is each instance's harmfulness score. Corrupted "
            "evaluation images are *harmful* when the teacher is right on the clean image and wrong "
            "on the corrupted one, *harmless* when it is right on both. A good harmful-drift "
            "detector flags batches contaminated with harmful instances at low contamination and "
            "stays at its level p_val on harmless ones.",
        )
    )
    add(Block("heading", "Setup"))
    n_draws = cfg.get("n_draws", 1)
    items = [
        f"evaluation data: {cfg.get('eval_split', 'test')}; {cfg['n_eval']} images per "
        "corruption type",
        f"corruptions ({len(cfg['corruptions'])}): {', '.join(cfg['corruptions'])} — "
        f"{cfg.get('corruption_source', '')}",
        f"teacher: {cfg['teacher_arch']['name']} — {cfg.get('teacher', '')}; accuracy "
        f"{_f(data['teacher_accuracy'], 4)}",
        f"student: {cfg['student']} ({cfg.get('student_parameters', '?')} parameters), "
        f"{cfg['student_epochs']} epochs, loss {cfg['loss_type']}, temperature "
        f"{cfg['temperature']}, augmentation {cfg.get('augment')}; top-1 agreement with the "
        f"teacher {_f(data['student_agreement'], 4)}",
        f"drift: {n_draws} reference draws of {cfg['n_ref']} clean scores; per draw "
        f"{cfg['n_batches']} batches of {cfg['batch_size']} per contamination level (every "
        f"test on the same batches); p_val = {cfg['p_val']}; seed {cfg['seed']}",
        f"the study's harmful-drift test: {DETECTOR_LABELS.get(test, test)}"
        + (f", weight exponent {cfg.get('tail_power')}" if test == "tail_rank" else ""),
        "rates are pooled over all batches of all draws; brackets: 95 % binomial "
        "(Clopper-Pearson) confidence interval of that pooled rate (batches of one draw share "
        "its reference, so the spread over draws is given separately)",
    ]
    timings = data.get("timings", {})
    if timings:
        items.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    items += [f"note: {n}" for n in data.get("notes", [])]
    add(Block("list", items))

    # ---- summary: the new test against the old one and the baselines, same batches
    add(Block("heading", "Summary"))
    drift0 = data["severities"][sev[0]]["drift"]
    fr = drift0["contamination"]
    i0, i10, i20 = _nearest(fr, 0.0), _nearest(fr, 0.1), _nearest(fr, 0.2)
    i50, i90 = _nearest(fr, 0.5), _nearest(fr, 0.9)
    add(
        Block(
            "text",
            f"Batches flagged, per severity and test (same batches for every test): clean batches "
            f"({_pct(fr[i0])} contamination; should be p_val), {_pct(fr[i10])} / {_pct(fr[i20])} "
            f"harmful (higher is better), {_pct(fr[i50])} / {_pct(fr[i90])} harmless (should stay at "
            "p_val). Spread: standard deviation of the rate over reference draws.",
        )
    )
    rows = []
    for s in sev:
        drift = data["severities"][s]["drift"]
        for det in (*compared, "entropy", "entropy_tail_rank", "bbsd"):
            if det not in drift.get("harmful", {}):
                continue
            h, q = drift["harmful"][det], drift["harmless"][det]
            spread = h.get("draw_std", [float("nan")] * len(fr))[i10]
            rows.append(
                [
                    s,
                    DETECTOR_NAMES.get(det, det),
                    _cell(h, i0),
                    _cell(h, i10),
                    _cell(h, i20),
                    _f(spread, 2),
                    _cell(q, i50),
                    _cell(q, i90),
                ]
            )
    add(
        Block(
            "table",
            (
                [
                    "severity",
                    "test",
                    "clean",
                    f"harmful {_pct(fr[i10])}",
                    f"harmful {_pct(fr[i20])}",
                    f"spread at {_pct(fr[i10])}",
                    f"harmless {_pct(fr[i50])}",
                    f"harmless {_pct(fr[i90])}",
                ],
                rows,
                "llrrrrrr",
            ),
        )
    )

    # ---- scores and AUROC
    add(Block("heading", "Scores and AUROC by severity"))
    figure("scores_by_severity.png", "scores by severity")
    rows = []
    for s in sev:
        e = data["severities"][s]
        m, a = e["score_mean"], e["auroc"]
        rows.append(
            [
                s,
                _f(e["accuracy"]),
                e["n_harmful"],
                e["n_harmless"],
                _f(m["clean"]),
                _f(m["harmless"]),
                _f(m["harmful"]),
                _f(a["distillation"]),
                _f(a["entropy"]),
                _f(a["max_prob"]),
            ]
        )
    add(
        Block(
            "table",
            (
                [
                    "severity",
                    "teacher acc.",
                    "harmful",
                    "harmless",
                    "score clean",
                    "score harmless",
                    "score harmful",
                    "AUROC distillation",
                    "AUROC entropy",
                    "AUROC 1−max p",
                ],
                rows,
                "r" * 10,
            ),
        )
    )
    figure("auroc_by_severity.png", "AUROC by severity")
    figure("roc_curves.png", "ROC curves")

    # ---- drift detection
    add(Block("heading", "Drift detection"))
    add(
        Block(
            "text",
            "Fraction of batches flagged (p < p_val) at each contamination level, with its 95 % "
            "confidence interval. For harmful contamination higher is better; for harmless "
            "contamination lower is better (a harm-specific detector stays near p_val).",
        )
    )
    figure("detection_rate.png", "detection rate")
    for s in sev:
        drift = data["severities"][s]["drift"]
        fr = drift["contamination"]
        add(Block("heading", f"Severity {s}", 3))
        rows = []
        for kind in ("harmful", "harmless"):
            for det, name in DETECTOR_NAMES.items():
                if kind in drift and det in drift[kind]:
                    stats = drift[kind][det]
                    rows.append([f"{kind}: {name}", *(_cell(stats, i) for i in range(len(fr)))])
        add(Block("table", (["contamination", *(_pct(f) for f in fr)], rows, "l" + "r" * len(fr))))
        figure(f"pvalues_severity{s}.png", f"p-values severity {s}")

    # ---- power by batch size
    if any("power_by_batch_size" in data["severities"][s] for s in sev):
        add(Block("heading", "Detection by batch size"))
        add(
            Block(
                "text",
                "How small a monitoring window can be: batches of each size made entirely of clean "
                "images (the level), of harmful instances (100 %), half harmful, or entirely "
                "harmless corrupted images, against the same references.",
            )
        )
        for s in sev:
            power = data["severities"][s].get("power_by_batch_size")
            if not power:
                continue
            sizes = power["batch_sizes"]
            add(Block("heading", f"Severity {s}", 3))
            rows = []
            for det, name in DETECTOR_NAMES.items():
                if det not in power:
                    continue
                for cell in ("clean", "harmful_100", "harmful_50", "harmless_100"):
                    if cell in power[det]:
                        ci = power[det].get("ci", {}).get(cell)
                        rows.append(
                            [
                                name,
                                cell,
                                *(
                                    _rate(r, ci[j] if ci else None)
                                    for j, r in enumerate(power[det][cell])
                                ),
                            ]
                        )
            add(
                Block(
                    "table",
                    (
                        ["test", "batches", *(f"n = {n}" for n in sizes)],
                        rows,
                        "ll" + "r" * len(sizes),
                    ),
                )
            )
            figure(f"power_severity{s}.png", f"power by batch size, severity {s}")

    # ---- per corruption
    add(Block("heading", "Per corruption type"))
    rows = []
    for s in sev:
        for c, e in data["severities"][s]["per_corruption"].items():
            rows.append(
                [
                    s,
                    c,
                    _f(e["accuracy"]),
                    e["n_harmful"],
                    e["n_harmless"],
                    _f(e["auroc"]["distillation"]),
                    _f(e["auroc"]["entropy"]),
                ]
            )
    add(
        Block(
            "table",
            (
                [
                    "severity",
                    "corruption",
                    "accuracy",
                    "harmful",
                    "harmless",
                    "AUROC distillation",
                    "AUROC entropy",
                ],
                rows,
                "rlrrrrr",
            ),
        )
    )
    add(Block("text", f"*distilldetect {data.get('version', '')}*"))
    return blocks


# ============================================================================ rendering
def render_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as Markdown (figures as links to the PNG files beside it)."""
    lines: list[str] = []
    for b in blocks:
        if b.kind == "heading":
            lines += ["#" * b.level + " " + b.payload, ""]
        elif b.kind == "text":
            lines += [b.payload, ""]
        elif b.kind == "list":
            lines += [f"- {item}" for item in b.payload] + [""]
        elif b.kind == "table":
            header, rows, align = b.payload
            lines.append("| " + " | ".join(map(str, header)) + " |")
            lines.append("|" + "".join("---:|" if a == "r" else "---|" for a in align))
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
            lines.append("")
        elif b.kind == "figure":
            name, alt = b.payload
            lines += [f"![{alt}]({name})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape ``text`` for HTML, then the little Markdown the report uses: *em*, `code`."""
    out = html.escape(str(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em}th{background:#f3f3f3}
td.r,th.r{text-align:right}tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8em;color:#666}.scroll{overflow-x:auto}
"""


def render_html(blocks: Sequence[Block], images: dict[str, bytes], title: str) -> str:
    """The blocks as one self-contained HTML page: figures embedded as base64 PNG."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        if b.kind == "heading":
            parts.append(f"<h{b.level}>{_inline(b.payload)}</h{b.level}>")
        elif b.kind == "text":
            parts.append(f"<p>{_inline(b.payload)}</p>")
        elif b.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.payload) + "</ul>")
        elif b.kind == "table":
            header, rows, align = b.payload
            cls = [' class="r"' if a == "r" else "" for a in align]
            head = "".join(f"<th{c}>{_inline(h)}</th>" for c, h in zip(cls, header, strict=True))
            body = "".join(
                "<tr>"
                + "".join(f"<td{c}>{_inline(v)}</td>" for c, v in zip(cls, row, strict=True))
                + "</tr>"
                for row in rows
            )
            parts.append(
                f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>"
            )
        elif b.kind == "figure":
            name, alt = b.payload
            if name in images:
                data = base64.b64encode(images[name]).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(name)}</figcaption></figure>"
                )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_report(data: dict[str, Any]) -> str:
    """The Markdown report of a results.json dictionary (figures referenced by file name)."""
    names = [
        "scores_by_severity.png",
        "auroc_by_severity.png",
        "roc_curves.png",
        "detection_rate.png",
        *(f"{k}_severity{s}.png" for s in data["severities"] for k in ("pvalues", "power")),
    ]
    return render_markdown(report_blocks(data, names))


def write_outputs(results: StudyResults, out: OutputDir) -> list:
    """Write the figures, report.md and report.html into the output folder; return the paths."""
    from .config import jsonable

    data = jsonable(results.to_dict())
    images = {name: _png(fig) for name, fig in _figures(data).items()}
    files = [out.write(name, blob) for name, blob in images.items()]
    blocks = report_blocks(data, list(images))
    files.append(out.write("report.md", render_markdown(blocks)))
    title = f"Harmful drift study — {data['dataset']}"
    files.append(out.write("report.html", render_html(blocks, images, title)))
    return files
