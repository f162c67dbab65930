"""Figures of the harmful-drift study, drawn on matplotlib ``Figure`` objects.

Every function takes the ``results.json`` dictionary (``StudyResults.to_dict()``), draws on the
``ax`` (or ``fig``) it is given or on a new :class:`matplotlib.figure.Figure`, and returns the
figure. Nothing here uses pyplot or switches the matplotlib backend, so the functions work in a
notebook, a GUI or a headless process alike; saving is the caller's job (``fig.savefig``; the
study's report does it). Needs matplotlib: ``pip install 'distilldetect[study]'``.

Examples
--------
>>> fig = plot_aurocs(results)  # doctest: +SKIP
>>> fig.savefig("auroc.png", dpi=110)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DETECTOR_STYLE",
    "new_figure",
    "plot_aurocs",
    "plot_detection_rates",
    "plot_power_by_batch_size",
    "plot_pvalues",
    "plot_roc",
    "plot_roc_curves",
    "plot_scores_by_severity",
]

COLORS = {"clean": "#4c72b0", "harmless": "#55a868", "harmful": "#c44e52"}
#: Colour, line style and label of each drift test of the study.
DETECTOR_STYLE: dict[str, tuple[str, str, str]] = {
    "tail_rank": ("#c44e52", "-", "distillation, tail-rank test"),
    "one_sided": ("#dd8452", "-", "distillation, KS one-sided"),
    "two_sided": ("#937860", ":", "distillation, KS two-sided"),
    "entropy": ("#4c72b0", "-", "teacher entropy, KS"),
    "entropy_tail_rank": ("#64b5cd", "--", "teacher entropy, tail-rank"),
    "bbsd": ("#8172b3", "-.", "BBSD (teacher softmax)"),
}
BASELINE_STYLE: dict[str, tuple[str, str]] = {
    "distillation": ("#c44e52", "distillation score"),
    "entropy": ("#4c72b0", "teacher entropy"),
    "max_prob": ("#8172b3", "teacher 1 − max prob"),
}


def new_figure(width: float, height: float) -> Any:
    """A new :class:`matplotlib.figure.Figure` (no pyplot, no global state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the study's figures need matplotlib: pip install 'distilldetect[study]'"
        ) from err
    return Figure(figsize=(width, height), layout="constrained")


def _axes(ax: Any, width: float, height: float) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(width, height)
    return fig, fig.add_subplot()


def _nan(values: list[float | None]) -> list[float]:
    """JSON null (a NaN that went through results.json) back to NaN."""
    return [float("nan") if v is None else v for v in values]


def _severities(results: dict[str, Any]) -> list[str]:
    return sorted(results["severities"], key=int)


def _title(results: dict[str, Any]) -> str:
    name = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}.get(
        results["dataset"], results["dataset"]
    )
    split = str(results["config"].get("eval_split", "test")).split(" ")[0]
    return f"{name}, corrupted {split} images"


def _detectors(results: dict[str, Any], severity: str, detectors: Any) -> list[str]:
    drift = results["severities"][severity]["drift"]
    kind = "harmful" if "harmful" in drift else "harmless"
    present = [d for d in DETECTOR_STYLE if d in drift.get(kind, {})]
    return present if detectors is None else [d for d in detectors if d in present]


# ============================================================================ scores
def plot_scores_by_severity(results: dict[str, Any], ax: Any = None) -> Any:
    """Mean score ± std of clean / harmless / harmful instances per severity (bars) and the
    teacher's accuracy on the corrupted images (line, right axis)."""
    fig, ax = _axes(ax, 8, 4.6)
    sev = _severities(results)
    width = 0.26
    for i, kind in enumerate(("clean", "harmless", "harmful")):
        means = _nan([results["severities"][s]["score_mean"][kind] for s in sev])
        stds = _nan([results["severities"][s]["score_std"][kind] for s in sev])
        xs = [int(s) + (i - 1) * width for s in sev]
        ax.bar(xs, means, width, yerr=stds, capsize=3, color=COLORS[kind], label=kind, alpha=0.9)
    ax.set_xlabel("corruption severity")
    ax.set_ylabel("distillation score (mean ± std)")
    ax.set_xticks([int(s) for s in sev])
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    acc = [results["severities"][s]["accuracy"] for s in sev]
    ax2.plot([int(s) for s in sev], acc, "k-o", label="teacher accuracy")
    ax2.set_ylabel("teacher accuracy on corrupted images")
    ax2.set_ylim(0, 1.02)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", ncol=2, fontsize=9, framealpha=0.9)
    ax.set_title(f"Distillation score by severity — {_title(results)}")
    return fig


def plot_aurocs(results: dict[str, Any], ax: Any = None) -> Any:
    """AUROC of harmful vs harmless per severity: the distillation score vs the teacher's own
    uncertainty (entropy, 1 - max probability)."""
    fig, ax = _axes(ax, 6.5, 4.2)
    sev = _severities(results)
    values = []
    for key, (color, label) in BASELINE_STYLE.items():
        ys = _nan([results["severities"][s]["auroc"][key] for s in sev])
        values += [v for v in ys if v == v]
        ax.plot([int(s) for s in sev], ys, "-o", color=color, label=label)
    low = max(0.0, min(values, default=0.5) - 0.02)
    high = min(1.0, max(values, default=1.0) + 0.01)
    if low <= 0.5:
        ax.axhline(0.5, color="k", lw=0.8, ls=":", label="chance")
    ax.set_xticks([int(s) for s in sev])
    ax.set_xlabel("corruption severity")
    ax.set_ylabel("AUROC, harmful vs harmless")
    ax.set_ylim(low, high)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(f"Telling harmful from harmless — {_title(results)}", fontsize=10)
    return fig


def plot_roc(results: dict[str, Any], severity: str, ax: Any = None) -> Any:
    """ROC curves (harmful = positive, harmless = negative) of the distillation score and the
    teacher-uncertainty baselines at one severity, with their AUROC in the legend."""
    fig, ax = _axes(ax, 4.5, 4.2)
    entry = results["severities"][severity]
    for key, (color, label) in BASELINE_STYLE.items():
        curve = entry.get("roc", {}).get(key)
        if not curve or not curve["fpr"]:
            continue
        auc = entry["auroc"].get(key)
        text = "–" if auc is None or auc != auc else f"{auc:.3f}"
        ax.plot(curve["fpr"], curve["tpr"], color=color, lw=1.6, label=f"{label} ({text})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right", title="AUROC", title_fontsize=8)
    else:
        ax.text(0.5, 0.5, "no harmful or no harmless instances", ha="center", fontsize=8)
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (harmless flagged)")
    ax.set_ylabel("true positive rate (harmful flagged)")
    ax.set_title(f"severity {severity}")
    ax.grid(alpha=0.3)
    return fig


def plot_roc_curves(results: dict[str, Any], fig: Any = None) -> Any:
    """:func:`plot_roc` for every severity, side by side."""
    sev = _severities(results)
    fig = fig if fig is not None else new_figure(3.6 * len(sev) + 0.4, 4.0)
    axes = fig.subplots(1, len(sev), sharey=True, squeeze=False)[0]
    for ax, s in zip(axes, sev, strict=True):
        plot_roc(results, s, ax=ax)
        if ax is not axes[0]:
            ax.set_ylabel("")
    fig.suptitle(f"ROC, harmful vs harmless — {_title(results)}")
    return fig


# ============================================================================ drift
def plot_detection_rates(
    results: dict[str, Any], fig: Any = None, detectors: list[str] | None = None
) -> Any:
    """Detection rate vs contamination: one column per severity, harmful contamination on top
    (higher is better), harmless below (lower is better); shaded: the 95 % binomial CI."""
    sev = _severities(results)
    p_val = results["config"]["p_val"]
    fig = fig if fig is not None else new_figure(3.1 * len(sev) + 0.6, 6.4)
    axes = fig.subplots(2, len(sev), sharex=True, sharey=True, squeeze=False)
    for j, s in enumerate(sev):
        drift = results["severities"][s]["drift"]
        fr = [100 * f for f in drift["contamination"]]
        for i, kind in enumerate(("harmful", "harmless")):
            ax = axes[i][j]
            if kind in drift:
                for det in _detectors(results, s, detectors):
                    color, ls, label = DETECTOR_STYLE[det]
                    stats = drift[kind][det]
                    ax.plot(fr, _nan(stats["detection_rate"]), ls, color=color, lw=1.6, label=label)
                    if "ci" in stats:
                        lo = _nan([c[0] for c in stats["ci"]])
                        hi = _nan([c[1] for c in stats["ci"]])
                        ax.fill_between(fr, lo, hi, color=color, alpha=0.12, lw=0)
            ax.axhline(p_val, color="k", lw=0.8, ls=":")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"severity {s}")
            else:
                ax.set_xlabel("contamination (%)")
        axes[0][0].set_ylabel("harmful: batches flagged")
        axes[1][0].set_ylabel("harmless: batches flagged")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.suptitle(f"Fraction of batches flagged (p < {p_val}; dotted: p_val) — {_title(results)}")
    return fig


def _floor(values: list[float], floor: float = 1e-12) -> list[float]:
    return [v if v != v else max(v, floor) for v in values]


def plot_pvalues(
    results: dict[str, Any],
    severity: str,
    fig: Any = None,
    detectors: tuple[str, ...] = ("one_sided", "tail_rank"),
) -> Any:
    """p-value vs contamination at one severity, one panel per test: mean and largest p-value
    over the batches, harmful vs harmless contamination (log scale)."""
    drift = results["severities"][severity]["drift"]
    p_val = results["config"]["p_val"]
    fr = [100 * f for f in drift["contamination"]]
    shown = [d for d in detectors if d in drift.get("harmful", drift.get("harmless", {}))]
    fig = fig if fig is not None else new_figure(5.2 * len(shown) + 0.4, 4.2)
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    for ax, det in zip(axes, shown, strict=True):
        for kind in ("harmful", "harmless"):
            if kind not in drift:
                continue
            stats = drift[kind][det]
            ax.plot(
                fr,
                _floor(_nan(stats["mean_p"])),
                "-o",
                color=COLORS[kind],
                ms=4,
                label=f"{kind}: mean p",
            )
            ax.plot(
                fr,
                _floor(_nan(stats["max_p"])),
                "--",
                color=COLORS[kind],
                label=f"{kind}: largest p",
            )
        ax.axhline(p_val, color="k", lw=1, ls=":", label=f"p_val = {p_val}")
        ax.set_yscale("log")
        ax.set_ylim(1e-12, 1.5)
        ax.set_xlabel("contaminated instances in the batch (%)")
        ax.set_title(DETECTOR_STYLE[det][2])
        ax.grid(alpha=0.3, which="major")
    axes[0].set_ylabel("p-value (log scale, floored at 1e-12)")
    axes[-1].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Severity {severity}: p-values — {_title(results)}")
    return fig


def plot_power_by_batch_size(
    results: dict[str, Any], severity: str, fig: Any = None, detectors: list[str] | None = None
) -> Any:
    """Fraction of batches flagged vs batch size at one severity: clean batches (the level),
    100 % and 50 % harmful, 100 % harmless; shaded: the 95 % binomial CI."""
    power = results["severities"][severity]["power_by_batch_size"]
    sizes = power["batch_sizes"]
    p_val = results["config"]["p_val"]
    cells = [
        ("clean", "clean batches (level)"),
        ("harmful_100", "100 % harmful"),
        ("harmful_50", "50 % harmful"),
        ("harmless_100", "100 % harmless"),
    ]
    cells = [c for c in cells if any(c[0] in power[d] for d in power if isinstance(power[d], dict))]
    fig = fig if fig is not None else new_figure(3.3 * len(cells) + 0.4, 3.9)
    axes = fig.subplots(1, len(cells), sharey=True, squeeze=False)[0]
    shown = [d for d in DETECTOR_STYLE if d in power] if detectors is None else detectors
    for ax, (cell, title) in zip(axes, cells, strict=True):
        for det in shown:
            color, ls, label = DETECTOR_STYLE[det]
            rates = _nan(power[det][cell])
            if all(r != r for r in rates):
                continue
            ax.plot(sizes, rates, ls, color=color, marker="o", ms=3, lw=1.5, label=label)
            ci = power[det].get("ci", {}).get(cell)
            if ci:
                ax.fill_between(
                    sizes,
                    _nan([c[0] for c in ci]),
                    _nan([c[1] for c in ci]),
                    color=color,
                    alpha=0.12,
                    lw=0,
                )
        ax.axhline(p_val, color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlim(min(sizes) / 1.25, max(sizes) * 1.25)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(n) for n in sizes])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("batch size")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("batches flagged")
    handles, labels = max((a.get_legend_handles_labels() for a in axes), key=lambda h: len(h[0]))
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.suptitle(f"Severity {severity}: detection by batch size — {_title(results)}")
    return fig
