"""Tune the study's defaults on a validation split of the TRAINING data (never the test set).

Runs the harmful-drift study once per candidate setting with ``eval_split='validation'``
(10 000 training images held out; teacher and student never see them), reusing the corrupted
images across candidates, and prints one summary row per candidate:

- AUROC (harmful vs harmless) of the distillation score minus the best teacher-uncertainty
  baseline, per severity;
- one-sided KS detection rate with 20 % harmful contamination, and with 50 % harmless
  contamination (lower is better), per severity.

Usage: python scripts/tune.py [candidate ...] [--out results/tune]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from distilldetect.experiments.harmful_drift import StudyConfig, run

# Every candidate starts from alibi-detect's settings (KL, T=1, no augmentation) and changes
# only what it names, so the rows stay comparable whatever the study's current defaults are.
BASE = dict(
    eval_split="validation",
    n_eval=500,
    n_batches=50,
    verbose=False,
    seed=0,
    loss_type="kld",
    temperature=1.0,
    augment=None,
)

CANDIDATES: dict[str, dict] = {
    "base": {},
    "t05": {"temperature": 0.5},
    "t02": {"temperature": 0.2},
    "xent": {"loss_type": "xent"},
    "augmix": {"augment": "augmix"},
    "augmix_t05": {"augment": "augmix", "temperature": 0.5},
    "augmix_t02": {"augment": "augmix", "temperature": 0.2},
    "wide": {"student_kwargs": {"nb_filters1": 64, "nb_dense": 64}},
    "wide_augmix": {"student_kwargs": {"nb_filters1": 64, "nb_dense": 64}, "augment": "augmix"},
    "augmix_20ep": {"augment": "augmix", "student_epochs": 20},
    "xent_t05": {"loss_type": "xent", "temperature": 0.5},
    "defaults": {"loss_type": "xent", "temperature": 0.5, "augment": "augmix"},
    "augmix_xent": {"augment": "augmix", "loss_type": "xent"},
    "augmix_xent_t05": {"augment": "augmix", "loss_type": "xent", "temperature": 0.5},
    "xent_t2": {"loss_type": "xent", "temperature": 2.0},
    "xent_20ep": {"loss_type": "xent", "student_epochs": 20},
    "wide_xent": {"student_kwargs": {"nb_filters1": 64, "nb_dense": 64}, "loss_type": "xent"},
    "wide_augmix_xent": {
        "student_kwargs": {"nb_filters1": 64, "nb_dense": 64},
        "augment": "augmix",
        "loss_type": "xent",
    },
}


def summarize(results: dict) -> dict:
    rows = {}
    for s, e in sorted(results["severities"].items(), key=lambda kv: int(kv[0])):
        a = e["auroc"]
        d = e["drift"]
        fr = d["contamination"]
        i20, i50 = fr.index(0.2), fr.index(0.5)
        rows[s] = {
            "acc": round(e["accuracy"], 3),
            "auroc_dist": round(a["distillation"], 3),
            "auroc_best_baseline": round(max(a["entropy"], a["max_prob"]), 3),
            "harmful20_one": d["harmful"]["one_sided"]["detection_rate"][i20],
            "harmful20_two": d["harmful"]["two_sided"]["detection_rate"][i20],
            "harmless50_one": d["harmless"]["one_sided"]["detection_rate"][i50],
            "harmless50_two": d["harmless"]["two_sided"]["detection_rate"][i50],
            "harmful20_entropy": d["harmful"]["entropy"]["detection_rate"][i20],
            "harmless50_entropy": d["harmless"]["entropy"]["detection_rate"][i50],
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("candidates", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--out", default="results/tune")
    args = parser.parse_args()
    cache: dict = {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.candidates:
        t = time.perf_counter()
        cfg = StudyConfig(**{**BASE, **CANDIDATES[name], "out": str(out / name)})
        results = run(cfg, _corruption_cache=cache).to_dict()
        summary = {
            "name": name,
            "settings": CANDIDATES[name],
            "agreement": results["student_agreement"],
            "severities": summarize(results),
            "seconds": round(time.perf_counter() - t),
        }
        (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
        line = " ".join(
            f"s{s}: auc {r['auroc_dist']:.3f}/{r['auroc_best_baseline']:.3f} "
            f"h20 {r['harmful20_one']:.2f} q50 {r['harmless50_one']:.2f}"
            for s, r in summary["severities"].items()
        )
        print(
            f"{name:14s} agree {summary['agreement']:.3f} | {line} | {summary['seconds']} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
