"""Print the README's tables of the harmful-drift study from a results.json.

    .venv/bin/python scripts/study_tables.py results/demo/results.json

Tables: detection rates per severity (the study's test vs the baselines, on the same batches),
and the power by batch size. Rates are pooled over every reference draw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pct(x: float) -> str:
    return "–" if x != x else f"{round(100 * x)}%"


def _rate(entry: dict, kind: str, test: str, fraction: float) -> float:
    drift = entry["drift"]
    i = [round(f, 3) for f in drift["contamination"]].index(fraction)
    return drift[kind][test]["detection_rate"][i]


def detection_table(results: dict) -> str:
    """Severity rows: clean level, harmful 10/20 %, harmless 50/90 %, AUROC."""
    main = results["config"]["drift_test"]
    tests = (
        [main, "one_sided", "entropy", "bbsd"] if main != "one_sided" else [main, "entropy", "bbsd"]
    )
    names = {
        "tail_rank": "tail-rank",
        "one_sided": "KS one-sided",
        "entropy": "entropy KS",
        "bbsd": "BBSD",
    }
    head = (
        "| severity | teacher acc. | clean flagged ("
        + names[main]
        + ") | "
        + " | ".join(f"{names[t]}: harmful 10 % / 20 %" for t in tests)
        + " | "
        + " | ".join(f"{names[t]}: harmless 50 % / 90 %" for t in tests)
        + " | AUROC distillation / best baseline |"
    )
    lines = [head, "|" + "---:|" * (3 + 2 * len(tests) + 1)]
    for s in sorted(results["severities"], key=int):
        e = results["severities"][s]
        harmful = [
            f"{_pct(_rate(e, 'harmful', t, 0.1))} / {_pct(_rate(e, 'harmful', t, 0.2))}"
            for t in tests
        ]
        harmless = [
            f"{_pct(_rate(e, 'harmless', t, 0.5))} / {_pct(_rate(e, 'harmless', t, 0.9))}"
            for t in tests
        ]
        a = e["auroc"]
        best = max(a["entropy"], a["max_prob"])
        clean = _rate(e, "harmful", main, 0.0)
        lines.append(
            f"| {s} | {e['accuracy']:.3f} | {_pct(clean)} | "
            + " | ".join(harmful)
            + " | "
            + " | ".join(harmless)
            + f" | {a['distillation']:.3f} / {best:.3f} |"
        )
    return "\n".join(lines)


def power_table(results: dict, severities: tuple[str, ...] = ("1", "3", "5")) -> str:
    """Detection by batch size: 100 % / 50 % harmful and 100 % harmless batches."""
    main = results["config"]["drift_test"]
    sizes = results["severities"][severities[0]]["power_by_batch_size"]["batch_sizes"]
    lines = [
        "| severity | test | "
        + " | ".join(f"n = {n}: harmful 100 % / 50 % / harmless 100 %" for n in sizes)
        + " |",
        "|---|---|" + "---:|" * len(sizes),
    ]
    for s in severities:
        pw = results["severities"][s]["power_by_batch_size"]
        for test in (main, "entropy", "bbsd"):
            cells = [
                f"{_pct(pw[test]['harmful_100'][j])} / {_pct(pw[test]['harmful_50'][j])} / "
                f"{_pct(pw[test]['harmless_100'][j])}"
                for j in range(len(sizes))
            ]
            lines.append(f"| {s} | {test} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    results = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    print(detection_table(results))
    print()
    print(power_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
