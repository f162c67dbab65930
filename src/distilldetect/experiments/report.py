"""report.md and the figures of the harmful-drift study."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import plotting

if TYPE_CHECKING:  # pragma: no cover
    from .harmful_drift import StudyResults

DETECTOR_NAMES = {
    "two_sided": "distillation, KS two-sided",
    "one_sided": "distillation, KS one-sided",
    "entropy": "teacher entropy, KS one-sided",
    "bbsd": "BBSD (softmax, Bonferroni)",
}


def write_outputs(results: StudyResults, out_dir: Path) -> list[Path]:
    """Write the figures and report.md into ``out_dir``; return the files written."""
    data = results.to_dict()
    files = [
        plotting.plot_scores_by_severity(data, out_dir / "scores_by_severity.png"),
        plotting.plot_aurocs(data, out_dir / "auroc_by_severity.png"),
        plotting.plot_detection_rates(data, out_dir / "detection_rate.png"),
    ]
    for s in sorted(data["severities"], key=int):
        files.append(plotting.plot_pvalues(data, s, out_dir / f"pvalues_severity{s}.png"))
    report = out_dir / "report.md"
    report.write_text(render_report(data))
    files.append(report)
    return files


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.0f}%"


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def render_report(data: dict[str, Any]) -> str:
    """The markdown report: settings, tables per severity, the figures embedded."""
    cfg = data["config"]
    sev = sorted(data["severities"], key=int)
    lines: list[str] = []
    add = lines.append
    add(f"# Harmful drift study — {data['dataset']}")
    add("")
    add(
        "A small student is distilled from the classifier (the teacher) on clean unlabelled data; the "
        "distillation loss between the two is each instance's harmfulness score. Corrupted evaluation "
        "images are *harmful* when the teacher is right on the clean image and wrong on the corrupted "
        "one, *harmless* when it is right on both. A good harmful-drift detector flags batches "
        "contaminated with harmful instances at low contamination and stays quiet on harmless ones."
    )
    add("")
    add("## Setup")
    add("")
    add(
        f"- evaluation data: {cfg.get('eval_split', 'test')}; {cfg['n_eval']} images per corruption type"
    )
    add(f"- corruptions ({len(cfg['corruptions'])}): {', '.join(cfg['corruptions'])}")
    add(
        f"- teacher: {cfg['teacher_arch']['name']} — {cfg.get('teacher', '')}; accuracy {_f(data['teacher_accuracy'], 4)}"
    )
    add(
        f"- student: {cfg['student']} ({cfg.get('student_parameters', '?')} parameters), {cfg['student_epochs']} epochs, "
        f"loss {cfg['loss_type']}, temperature {cfg['temperature']}; top-1 agreement with the teacher "
        f"{_f(data['student_agreement'], 4)}"
    )
    add(
        f"- drift: reference = scores of {cfg['n_ref']} clean images; {cfg['n_batches']} batches of "
        f"{cfg['batch_size']} per contamination level; p_val = {cfg['p_val']}; seed {cfg['seed']}"
    )
    timings = data.get("timings", {})
    if timings:
        add("- time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    for note in data.get("notes", []):
        add(f"- note: {note}")
    add("")
    add("## Scores and AUROC by severity")
    add("")
    add("![scores](scores_by_severity.png)")
    add("")
    add(
        "| severity | teacher acc. | harmful | harmless | score clean | score harmless | score harmful | AUROC distillation | AUROC entropy | AUROC 1−max p |"
    )
    add("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in sev:
        e = data["severities"][s]
        m, a = e["score_mean"], e["auroc"]
        add(
            f"| {s} | {_f(e['accuracy'])} | {e['n_harmful']} | {e['n_harmless']} | {_f(m['clean'])} | "
            f"{_f(m['harmless'])} | {_f(m['harmful'])} | {_f(a['distillation'])} | {_f(a['entropy'])} | {_f(a['max_prob'])} |"
        )
    add("")
    add("![auroc](auroc_by_severity.png)")
    add("")
    add("## Drift detection")
    add("")
    add(
        "Fraction of batches flagged (p < p_val) at each contamination level. For harmful contamination "
        "higher is better; for harmless contamination lower is better (a harm-specific detector stays "
        "near p_val)."
    )
    add("")
    add("![detection rate](detection_rate.png)")
    add("")
    for s in sev:
        drift = data["severities"][s]["drift"]
        fr = drift["contamination"]
        add(f"### Severity {s}")
        add("")
        add("| contamination | " + " | ".join(f"{int(round(100 * f))}%" for f in fr) + " |")
        add("|---|" + "---:|" * len(fr))
        for kind in ("harmful", "harmless"):
            if kind not in drift:
                continue
            for det, name in DETECTOR_NAMES.items():
                rates = drift[kind][det]["detection_rate"]
                add(f"| {kind}: {name} | " + " | ".join(_pct(r) for r in rates) + " |")
        add("")
        add(f"![p-values severity {s}](pvalues_severity{s}.png)")
        add("")
    add("## Per corruption type")
    add("")
    add(
        "| severity | corruption | accuracy | harmful | harmless | AUROC distillation | AUROC entropy |"
    )
    add("|---:|---|---:|---:|---:|---:|---:|")
    for s in sev:
        for c, e in data["severities"][s]["per_corruption"].items():
            add(
                f"| {s} | {c} | {_f(e['accuracy'])} | {e['n_harmful']} | {e['n_harmless']} | "
                f"{_f(e['auroc']['distillation'])} | {_f(e['auroc']['entropy'])} |"
            )
    add("")
    add(f"_distilldetect {data.get('version', '')}_")
    add("")
    return "\n".join(lines)
