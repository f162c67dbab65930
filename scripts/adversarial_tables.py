"""Print the adversarial study's tables (README, docs/studies/adversarial.md) from results.json files.

    .venv/bin/python scripts/adversarial_tables.py results/adv-A/results.json results/adv-B/results.json ...

For every file: the oblivious attacks (success, AUROC and TPR at 5 % FPR of the distillation
score and the baselines), the adaptive attack (undetected success by eps and lambda) and, when
present, the secret-seed ensemble (gray-box / white-box undetected success by lambda).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BASELINES = ("distillation", "entropy", "max_prob")


def oblivious(results: dict) -> list[str]:
    lines = []
    for attack, entries in results.get("attacks", {}).items():
        for e in entries:
            auroc = " | ".join(f"{e['auroc'][b]:.3f}" for b in BASELINES)
            tpr = " | ".join(f"{e['tpr_at_fpr'][b]:.3f}" for b in BASELINES)
            lines.append(
                f"| {attack} | {e['eps']:g} | {e['attack_success_rate']:.3f} | {auroc} | {tpr} |"
            )
    return lines


def adaptive(results: dict) -> list[str]:
    rows: dict[float, dict[float, float]] = {}
    for e in results.get("adaptive", []):
        rows.setdefault(e["eps"], {})[e["lambda"]] = e["undetected_success_rate"]
    return [
        f"| {eps:g} | " + " | ".join(f"λ {lam:g}: {u:.3f}" for lam, u in sorted(r.items())) + " |"
        for eps, r in sorted(rows.items())
    ]


def defence(results: dict) -> list[str]:
    d = results.get("defence")
    if not d:
        return []
    lines = [
        f"ensemble of {d['n_students']} students ({d['students']['architecture']['name']}), "
        f"eps {d['eps']:g}; oblivious PGD: success {d['pgd']['attack_success_rate']:.3f}, "
        f"undetected {d['pgd']['undetected_success_rate']:.3f}, AUROC {d['pgd']['auroc']:.3f}"
    ]
    for g, w in zip(d["gray_box"], d["white_box"], strict=True):
        lines.append(
            f"| λ {g['lambda']:g} | gray-box {g['undetected_success_rate']:.3f} | white-box "
            f"{w['undetected_success_rate']:.3f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    for path in paths:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        cfg = results.get("config", {})
        print(f"## {path}: detector {cfg.get('detector')}, teacher accuracy "
              f"{results.get('teacher_accuracy', float('nan')):.3f}")  # fmt: skip
        for block in (oblivious(results), adaptive(results), defence(results)):
            if block:
                print("\n".join(block))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
