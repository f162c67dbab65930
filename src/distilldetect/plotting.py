"""Figures of the harmful-drift study (matplotlib, Agg backend: no display needed).

Every function takes the ``results.json`` dictionary (``StudyResults.to_dict()``) and a path,
writes one PNG and returns the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = [
    "plot_scores_by_severity",
    "plot_pvalues",
    "plot_detection_rates",
    "plot_aurocs",
]

COLORS = {"clean": "#4c72b0", "harmless": "#55a868", "harmful": "#c44e52"}
DETECTOR_STYLE = {
    "one_sided": ("#c44e52", "distillation, KS one-sided"),
    "two_sided": ("#dd8452", "distillation, KS two-sided"),
    "entropy": ("#4c72b0", "teacher entropy, KS one-sided"),
    "bbsd": ("#8172b3", "BBSD (teacher softmax)"),
}


def _nan(values: list[float | None]) -> list[float]:
    """JSON null (a NaN that went through results.json) back to NaN."""
    return [float("nan") if v is None else v for v in values]


def _severities(results: dict[str, Any]) -> list[str]:
    return sorted(results["severities"], key=int)


def _title(results: dict[str, Any]) -> str:
    name = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}.get(
        results["dataset"], results["dataset"]
    )
    return f"{name}, corrupted test images"


def plot_scores_by_severity(results: dict[str, Any], path: str | Path) -> Path:
    """The seed's bar chart: mean score ± std for clean / harmless / harmful per severity, with
    the teacher's accuracy on a second axis.

    Examples
    --------
    >>> plot_scores_by_severity(results, "scores.png")  # doctest: +SKIP
    """
    sev = _severities(results)
    fig, ax = plt.subplots(figsize=(8, 4.5))
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
    ax.legend(
        h1 + h2,
        l1 + l2,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=4,
        fontsize=9,
        frameon=False,
    )
    ax.set_title(f"Distillation score by severity — {_title(results)}", pad=28)
    fig.tight_layout()
    return _save(fig, path)


def plot_pvalues(results: dict[str, Any], severity: str, path: str | Path) -> Path:
    """p-value vs contamination for one severity: mean and max over batches, harmful vs
    harmless, two-sided and one-sided KS test on the distillation score."""
    drift = results["severities"][severity]["drift"]
    p_val = results["config"]["p_val"]
    fr = [100 * f for f in drift["contamination"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, side, label in zip(
        axes, ("two_sided", "one_sided"), ("two-sided", "one-sided (greater)"), strict=True
    ):
        for kind in ("harmful", "harmless"):
            if kind not in drift:
                continue
            stats = drift[kind][side]
            ax.plot(
                fr,
                _floor(_nan(stats["mean_p"])),
                "-o",
                color=COLORS[kind],
                label=f"{kind}: mean p",
                ms=4,
            )
            ax.plot(
                fr, _floor(_nan(stats["max_p"])), "--", color=COLORS[kind], label=f"{kind}: max p"
            )
        ax.axhline(p_val, color="k", lw=1, ls=":", label=f"p_val = {p_val}")
        ax.set_yscale("log")
        ax.set_ylim(1e-12, 1.5)
        ax.set_xlabel("contaminated instances in the batch (%)")
        ax.set_title(f"KS {label}")
        ax.grid(alpha=0.3, which="major")
    axes[0].set_ylabel("p-value (log scale, floored at 1e-12)")
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Severity {severity}: harmful vs harmless contamination — {_title(results)}")
    fig.tight_layout()
    return _save(fig, path)


def plot_detection_rates(results: dict[str, Any], path: str | Path) -> Path:
    """Detection rate vs contamination, one panel per severity, every detector; solid lines for
    harmful contamination (higher is better), dashed for harmless (lower is better)."""
    sev = _severities(results)
    p_val = results["config"]["p_val"]
    fig, axes = plt.subplots(
        1, len(sev), figsize=(3.3 * len(sev) + 1, 3.8), sharey=True, squeeze=False
    )
    for ax, s in zip(axes[0], sev, strict=True):
        drift = results["severities"][s]["drift"]
        fr = [100 * f for f in drift["contamination"]]
        for det, (color, label) in DETECTOR_STYLE.items():
            for kind, ls in (("harmful", "-"), ("harmless", "--")):
                if kind in drift:
                    ax.plot(
                        fr,
                        _nan(drift[kind][det]["detection_rate"]),
                        ls,
                        color=color,
                        label=f"{label} — {kind}",
                    )
        ax.axhline(p_val, color="k", lw=0.8, ls=":")
        ax.set_title(f"severity {s}")
        ax.set_xlabel("contamination (%)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"fraction of batches flagged (p < {p_val})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Drift detection rate: solid = harmful, dashed = harmless — {_title(results)}")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return _save(fig, path)


def plot_aurocs(results: dict[str, Any], path: str | Path) -> Path:
    """AUROC of harmful vs harmless per severity: distillation score vs the teacher's own
    uncertainty (entropy, 1 - max probability)."""
    sev = _severities(results)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, color, label in (
        ("distillation", "#c44e52", "distillation score"),
        ("entropy", "#4c72b0", "teacher entropy"),
        ("max_prob", "#8172b3", "teacher 1 − max prob"),
    ):
        ax.plot(
            [int(s) for s in sev],
            _nan([results["severities"][s]["auroc"][key] for s in sev]),
            "-o",
            color=color,
            label=label,
        )
    values = [
        v
        for key in ("distillation", "entropy", "max_prob")
        for v in _nan([results["severities"][s]["auroc"][key] for s in sev])
        if v == v
    ]
    low = max(0.0, min(values, default=0.5) - 0.05)
    if low <= 0.5:
        ax.axhline(0.5, color="k", lw=0.8, ls=":", label="chance")
    ax.set_xticks([int(s) for s in sev])
    ax.set_xlabel("corruption severity")
    ax.set_ylabel("AUROC, harmful vs harmless")
    ax.set_ylim(low, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(f"Telling harmful from harmless — {_title(results)}")
    fig.tight_layout()
    return _save(fig, path)


def _floor(values: list[float], floor: float = 1e-12) -> list[float]:
    return [v if v != v else max(v, floor) for v in values]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
