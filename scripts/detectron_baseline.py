"""Detectron-style baseline (Ginsberg et al., ICLR 2023) vs the study's tail-rank test, on the
same study-style batches (issue 15). Writes ``<out>/results.json`` and prints a markdown table.

    nice -n 19 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/detectron_baseline.py

Uses the shipped Fashion-MNIST teacher and student (``make demo``'s). See
``docs/studies/detectron.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from distilldetect.experiments.config import StudyConfig, jsonable
from distilldetect.experiments.detectron import CELLS, run_baseline

#: Study tests shown beside Detectron in the table.
SHOWN = ("detectron", "tail_rank", "bbsd")


def table(results: dict) -> str:
    """The markdown table: detection rate [95 % CI] per severity, size and cell."""
    lines = [
        "| severity | n | batches | " + " | ".join(SHOWN) + " |",
        "|---|---|---|" + "---|" * len(SHOWN),
    ]
    for severity, per_size in results["severities"].items():
        for size, per_cell in per_size.items():
            for name, _, _ in CELLS:
                if name not in per_cell:
                    continue
                cells = []
                for test in SHOWN:
                    e = per_cell[name][test]
                    cells.append(f"{e['rate']:.2f} [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]")
                lines.append(f"| {severity} | {size} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--severities", type=int, nargs="+", default=[5])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--n-calibration", type=int, default=30)
    parser.add_argument("--n-batches", type=int, default=25)
    parser.add_argument("--n-p", type=int, default=1000)
    parser.add_argument("--members", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lambda", dest="lambda_", type=float, default=None)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--corruptions", nargs="+", default=["all"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/detectron")
    args = parser.parse_args()
    corruptions = "all" if args.corruptions == ["all"] else args.corruptions
    cfg = StudyConfig(
        dataset="fashion_mnist",
        pretrained=True,
        corruptions=corruptions,
        severities=tuple(args.severities),
        n_eval=args.n_eval,
        power_batch_sizes=tuple(args.sizes),
        verbose=False,
        seed=args.seed,
    ).validate()
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    results = run_baseline(
        cfg,
        severities=args.severities,
        sizes=args.sizes,
        n_calibration=args.n_calibration,
        n_batches=args.n_batches,
        n_p=args.n_p,
        members=args.members,
        epochs=args.epochs,
        lr=args.lr,
        lambda_=args.lambda_,
        seed=args.seed,
        log=log,
    )
    results["config"]["corruptions"] = cfg.corruption_list()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=2) + "\n")
    print(table(results))
    t = results["timings"]
    print(
        f"\n{t['seconds_per_detectron_batch']:.2f} s per Detectron batch (one CDC ensemble); "
        f"total {t['total']:.0f} s; written {out / 'results.json'}"
    )


if __name__ == "__main__":
    main()
