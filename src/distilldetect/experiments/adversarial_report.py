"""report.md and the figures of the adversarial study (:mod:`.adversarial`).

Figures are drawn on :class:`matplotlib.figure.Figure` objects (``plotting.new_figure``; no
pyplot, the user's matplotlib backend is never switched) from the results.json dictionary, and
the example images from the arrays the study passes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

__all__ = [
    "plot_adversarial_roc",
    "plot_detection_vs_eps",
    "plot_adaptive",
    "plot_examples",
    "render_markdown",
    "write_outputs",
]

_LABELS = {
    "fgsm": "FGSM",
    "pgd": "PGD L-inf",
    "cw": "Carlini-Wagner L2",
    "blackbox": "SimBA (query-only)",
    "adaptive": "adaptive PGD",
}
_DPI = 110


def _style() -> dict[str, tuple[str, str]]:
    from ..plotting import BASELINE_STYLE

    return BASELINE_STYLE


def _best_eps(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The entry at the smallest eps with >= 90 % success, else the most successful one."""
    ok = [e for e in entries if (e["attack_success_rate"] or 0) >= 0.9]
    if ok:
        return min(ok, key=lambda e: e["eps"])
    return max(entries, key=lambda e: (e["attack_success_rate"] or 0, e["eps"]))


def plot_adversarial_roc(results: dict[str, Any], attack: str) -> Any:
    """ROC of successful adversarials vs the same images clean, at the attack's reported eps."""
    from ..plotting import new_figure

    entry = _best_eps(results["attacks"][attack])
    curves = results["roc"][attack][str(entry["eps"])]
    fig = new_figure(4.2, 3.8)
    ax = fig.add_subplot()
    for key, (color, label) in _style().items():
        c = curves[key]
        auc = entry["auroc"][key]
        text = "n/a" if auc is None else f"{auc:.3f}"
        ax.plot(c["fpr"], c["tpr"], color=color, label=f"{label} (AUROC {text})")
    ax.plot([0, 1], [0, 1], color="0.7", ls=":", lw=1)
    ax.axvline(results["fpr"], color="0.5", ls="--", lw=0.8)
    ax.set_xlabel("false positive rate (clean)")
    ax.set_ylabel("true positive rate (adversarial)")
    ax.set_title(
        f"{_LABELS[attack]}, eps={entry['eps']:g} ({100 * entry['attack_success_rate']:.0f}% "
        "success)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_detection_vs_eps(results: dict[str, Any]) -> Any:
    """AUROC (distillation solid, entropy dashed) and attack success against eps."""
    from ..plotting import new_figure

    fig = new_figure(8.5, 3.6)
    ax_auc, ax_succ = fig.subplots(1, 2)
    colors = ["#c44e52", "#4c72b0", "#55a868", "#8172b3", "#dd8452"]
    for color, (name, entries) in zip(colors, results["attacks"].items(), strict=False):
        eps = [e["eps"] for e in entries]
        for key, ls in (("distillation", "-"), ("entropy", "--")):
            vals = [np.nan if e["auroc"][key] is None else e["auroc"][key] for e in entries]
            label = f"{_LABELS[name]}, {key}" if key == "distillation" else None
            ax_auc.plot(eps, vals, ls=ls, marker="o", color=color, label=label)
        ax_succ.plot(
            eps, [e["attack_success_rate"] for e in entries], marker="o", color=color,
            label=_LABELS[name],
        )  # fmt: skip
    ax_auc.set_xlabel("eps (L-inf, scaled input)")
    ax_auc.set_ylabel("AUROC (solid: distillation, dashed: entropy)")
    ax_auc.set_ylim(0, 1.02)
    ax_auc.legend(fontsize=7)
    ax_succ.set_xlabel("eps (L-inf, scaled input)")
    ax_succ.set_ylabel("attack success rate")
    ax_succ.set_ylim(0, 1.02)
    ax_succ.legend(fontsize=7)
    return fig


def plot_adaptive(results: dict[str, Any]) -> Any:
    """Undetected success of the adaptive attack against lambda (one line per eps), and the
    defences' gray-box / white-box lines (ensemble of students, robust student)."""
    from ..plotting import new_figure

    fig = new_figure(5.2, 3.8)
    ax = fig.add_subplot()
    by_eps: dict[float, list[dict[str, Any]]] = {}
    for e in results["adaptive"]:
        by_eps.setdefault(e["eps"], []).append(e)
    robust_entries = (results.get("defence_robust") or {}).get("white_box", [])
    lams_all = sorted({e["lambda"] for e in [*results["adaptive"], *robust_entries]})
    positive = [lam for lam in lams_all if lam > 0]
    zero_at = min(positive) / 10 if positive else 1.0

    def xs(entries: list[dict[str, Any]]) -> list[float]:
        return [e["lambda"] if e["lambda"] > 0 else zero_at for e in entries]

    for eps, entries in sorted(by_eps.items()):
        ax.plot(
            xs(entries), [e["undetected_success_rate"] for e in entries], marker="o",
            label=f"single student, eps={eps:g}",
        )  # fmt: skip
    defence = results.get("defence")
    if defence:
        for key, ls, label in (("gray_box", "--", "gray-box"), ("white_box", ":", "white-box")):
            entries = defence[key]
            ax.plot(
                xs(entries), [e["undetected_success_rate"] for e in entries], ls=ls, marker="s",
                color="k" if key == "white_box" else "0.4",
                label=f"ensemble of {defence['n_students']}, {label}, eps={defence['eps']:g}",
            )  # fmt: skip
    robust = results.get("defence_robust")
    if robust:
        for key, ls, label in (("gray_box", "--", "gray-box"), ("white_box", "-", "white-box")):
            entries = robust[key]
            if entries:
                ax.plot(
                    xs(entries), [e["undetected_success_rate"] for e in entries], ls=ls,
                    marker="^", color="tab:red",
                    label=f"robust student, {label}, eps={robust['eps']:g}",
                )  # fmt: skip
        pair = robust.get("pair")
        if pair and pair["white_box"]:
            ax.plot(
                xs(pair["white_box"]), [e["undetected_success_rate"] for e in pair["white_box"]],
                ls="-", marker="v", color="tab:purple",
                label=f"plain + robust pair, white-box, eps={robust['eps']:g}",
            )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(f"lambda (score weight; lambda=0 drawn at {zero_at:g})")
    ax.set_ylabel("undetected success rate")
    ax.set_ylim(0, 1.02)
    ax.axhline(0.2, color="0.6", lw=0.8, ls="-.")
    ax.legend(fontsize=7)
    ax.set_title("adaptive attack: fools the teacher and stays under the 5% threshold", fontsize=9)
    return fig


def _show(img: np.ndarray) -> np.ndarray:
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def plot_examples(examples: dict[str, Any], per_attack: int = 2) -> Any:
    """Clean / adversarial / difference for a few successful adversarials of each attack."""
    from ..plotting import new_figure

    rows = [
        (name, i) for name, ex in examples.items() for i in range(min(per_attack, len(ex["clean"])))
    ]
    fig = new_figure(4.8, 1.6 * max(len(rows), 1))
    if not rows:
        return fig
    axes = np.asarray(fig.subplots(len(rows), 3, squeeze=False))
    for r, (name, i) in enumerate(rows):
        ex = examples[name]
        clean, adv = np.asarray(ex["clean"][i]), np.asarray(ex["adversarial"][i])
        diff = adv - clean
        gray = clean.ndim == 2
        for c, (img, title) in enumerate(
            ((clean, "clean"), (adv, "adversarial"), (diff, f"difference (eps={ex['eps']:g})"))
        ):
            ax = axes[r, c]
            shown = _show(img) if c < 2 else np.clip(img / (2 * ex["eps"]) + 0.5, 0, 1)
            ax.imshow(shown, cmap="gray" if gray else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(_LABELS[name], fontsize=7)
            if r == 0 or c == 2:
                ax.set_title(title, fontsize=7)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _any_lambda_line(entries: list[dict[str, Any]] | None, who: str) -> list[str]:
    """One sentence: the attacker who tries every lambda per image and keeps what works."""
    if not entries:
        return []
    rates = ", ".join(f"{_f(e['undetected_success_rate'])} at eps {e['eps']:g}" for e in entries)
    return [
        f"Any lambda ({who}; per image, the attacker keeps a lambda that works): undetected "
        f"success {rates}.",
        "",
    ]


def render_markdown(results: dict[str, Any], figures: list[str]) -> str:
    """report.md: the tables of results.json and the figures."""
    cfg = results["config"]
    lines = [
        f"# Adversarial detection: {results['dataset']}",
        "",
        f"Detector: {cfg['detector']} (loss {cfg['detector_loss_type']}, temperature "
        f"{cfg['detector_temperature']}). Teacher accuracy {results['teacher_accuracy']:.4f} "
        f"on the {cfg['eval_split']} set. {cfg['n_attacked']} correctly classified images "
        f"attacked; thresholds flag {100 * results['fpr']:.0f} % of {cfg['n_holdout']} other, "
        "held-out clean images. AUROC: successful adversarials vs the same images clean. "
        "L2 / L-inf: means over successful adversarials.",
        "",
    ]
    if results["attacks"]:
        lines += [
            "## Attacks",
            "",
            "| attack | eps | success | n adv | AUROC distillation | AUROC entropy | "
            "AUROC max-prob | TPR@5% distillation | TPR@5% entropy | TPR@5% max-prob | "
            "mean L2 | mean L-inf |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, entries in results["attacks"].items():
            for e in entries:
                a, tp = e["auroc"], e["tpr_at_fpr"]
                lines.append(
                    f"| {_LABELS[name]} | {e['eps']:g} | {_f(e['attack_success_rate'])} | "
                    f"{e['n_adversarial']} | {_f(a['distillation'])} | {_f(a['entropy'])} | "
                    f"{_f(a['max_prob'])} | {_f(tp['distillation'])} | {_f(tp['entropy'])} | "
                    f"{_f(tp['max_prob'])} | {_f(e['mean_l2'])} | {_f(e['mean_linf'])} |"
                )
        lines.append("")
    if results["adaptive"]:
        lines += [
            "## Adaptive attack (white-box, single student)",
            "",
            "PGD on min(logit margin, 2) - lambda * score; each image keeps its least suspicious "
            "fooling iterate. Undetected success: fools the teacher and scores under the "
            "threshold.",
            "",
            "| eps | lambda | success | undetected success | AUROC |",
            "|---|---|---|---|---|",
        ]
        for e in results["adaptive"]:
            lines.append(
                f"| {e['eps']:g} | {e['lambda']:g} | {_f(e['attack_success_rate'])} | "
                f"{_f(e['undetected_success_rate'])} | {_f(e['auroc'])} |"
            )
        lines.append("")
        lines += _any_lambda_line(results.get("adaptive_any_lambda"), "single student")
    defence = results.get("defence")
    if defence:
        st = defence["students"]
        pg = defence["pgd"]
        lines += [
            "## Defence: an ensemble of students with secret seeds",
            "",
            f"{defence['n_students']} students ({st['architecture']['name']}, "
            f"{st['epochs']} epochs on {st['n_train']} training images), score = "
            f"{defence['reduce']} of their scores, threshold at {100 * results['fpr']:.0f} % "
            f"FPR on the held-out clean images; eps = {defence['eps']:g}. Gray-box: the "
            f"attacker trains {defence['n_surrogates']} surrogate student(s) of the same "
            "architecture and recipe with other seeds and attacks those. White-box: the "
            "attacker attacks the real students.",
            "",
            f"Oblivious PGD against the ensemble: success {_f(pg['attack_success_rate'])}, "
            f"undetected success {_f(pg['undetected_success_rate'])}, AUROC {_f(pg['auroc'])}.",
            "",
            "| lambda | gray-box success | gray-box undetected | gray-box AUROC | "
            "white-box success | white-box undetected | white-box AUROC |",
            "|---|---|---|---|---|---|---|",
        ]
        for g, w in zip(defence["gray_box"], defence["white_box"], strict=True):
            lines.append(
                f"| {g['lambda']:g} | {_f(g['attack_success_rate'])} | "
                f"{_f(g['undetected_success_rate'])} | {_f(g['auroc'])} | "
                f"{_f(w['attack_success_rate'])} | {_f(w['undetected_success_rate'])} | "
                f"{_f(w['auroc'])} |"
            )
        lines.append("")
        lines += _any_lambda_line(defence.get("gray_box_any_lambda"), "ensemble, gray-box")
        lines += _any_lambda_line(defence.get("white_box_any_lambda"), "ensemble, white-box")
    lines += _robust_lines(results)
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def _robust_lines(results: dict[str, Any]) -> list[str]:
    """report.md's section on the robust (adversarially distilled) student, if it ran."""
    robust = results.get("defence_robust")
    if not robust:
        return []
    st = robust["student"]
    lines = [
        "## Defence: a robust (adversarially distilled) student",
        "",
        f"One student ({st['architecture']['name']}, {st['epochs']} epochs on {st['n_train']} "
        f"training images) distilled with a fraction {st['p_adv']:g} of every batch moved by "
        f"PGD-{st['steps']} within L-inf {st['train_eps']:g} to where its own output moves "
        "most, the teacher's target kept from the clean image. Thresholds at "
        f"{100 * results['fpr']:.0f} % FPR on the held-out clean images. Gray-box: the "
        "adaptive images made against the plain detector's student; white-box: the adaptive "
        "attack against the defending students themselves.",
        "",
        "### The robust student alone",
        "",
        *_defence_table(robust, "robust student"),
    ]
    pair = robust.get("pair")
    if pair:
        lines += [
            "### The pair: mean of the plain and the robust student's scores",
            "",
            *_defence_table(pair, "pair"),
        ]
    return lines


def _defence_table(d: dict[str, Any], who: str) -> list[str]:
    lines = [
        f"Threshold {_f(d['thresholds']['distillation'])}; clean mean score "
        f"{_f(d['clean_score_mean'])}.",
        "",
    ]
    if d["attacks"]:
        lines += [
            "Oblivious attacks (the same adversarial images as above, rescored):",
            "",
            "| attack | eps | success | AUROC distillation | TPR@5% distillation |",
            "|---|---|---|---|---|",
        ]
        for name, entries in d["attacks"].items():
            for e in entries:
                lines.append(
                    f"| {_LABELS[name]} | {e['eps']:g} | {_f(e['attack_success_rate'])} | "
                    f"{_f(e['auroc']['distillation'])} | {_f(e['tpr_at_fpr']['distillation'])} |"
                )
        lines.append("")
    gray = {(e["eps"], e["lambda"]): e for e in d["gray_box"]}
    lines += [
        "| eps | lambda | white-box success | white-box undetected | white-box AUROC | "
        "gray-box undetected |",
        "|---|---|---|---|---|---|",
    ]
    for w in d["white_box"]:
        g = gray.get((w["eps"], w["lambda"]))
        lines.append(
            f"| {w['eps']:g} | {w['lambda']:g} | {_f(w['attack_success_rate'])} | "
            f"{_f(w['undetected_success_rate'])} | {_f(w['auroc'])} | "
            f"{_f(None if g is None else g['undetected_success_rate'])} |"
        )
    lines.append("")
    lines += _any_lambda_line(d.get("gray_box_any_lambda"), f"{who}, gray-box")
    lines += _any_lambda_line(d.get("white_box_any_lambda"), f"{who}, white-box")
    return lines


def write_outputs(results: dict[str, Any], out: Any, examples: dict[str, Any]) -> list[str]:
    """Write the figures and report.md into ``out`` (an :class:`~.outputs.OutputDir`)."""
    figures: dict[str, Any] = {}
    for name in results["attacks"]:
        figures[f"roc_{name}.png"] = plot_adversarial_roc(results, name)
    if results["attacks"]:
        figures["detection_vs_eps.png"] = plot_detection_vs_eps(results)
    if results["adaptive"] or results.get("defence_robust"):
        figures["adaptive.png"] = plot_adaptive(results)
    if examples:
        figures["examples.png"] = plot_examples(examples)
    for name, fig in figures.items():
        out.write(name, _png(fig))
    out.write("report.md", render_markdown(results, list(figures)))
    return list(figures)
