"""Score pools for the drift-test investigation (issue 15), VALIDATION split only.

Trains (or loads from the cache) the study's validation teacher, fits several students with
the study's recipe (different seeds and architectures), corrupts ``n_eval`` held-out images
per corruption type and severity, and saves every model output the investigation needs into
one ``.npz``: teacher probabilities and each student's probabilities for the clean held-out
images and for every corrupted image. Scores of any kind (xent / kld, ensembles, calibrated)
are then computed from these arrays without running a model again
(``scripts/tune_drift.py``).

Usage: python scripts/tune_drift_pools.py [--out results/tune-drift/pools.npz] [--n-eval 1000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distilldetect import ModelDistillation, predict_batch
from distilldetect.augment import make_augment_fn
from distilldetect.backends import get_backend
from distilldetect.experiments import harmful_drift as hd
from distilldetect.experiments import stages
from distilldetect.models import build_model

# (name, zoo builder, kwargs, model seed, fit seed)
STUDENTS = [
    ("s0", "distilled_model_cifar10", {"nb_filters1": 32, "nb_dense": 40}, 1, 0),
    ("s1", "distilled_model_cifar10", {"nb_filters1": 32, "nb_dense": 40}, 11, 10),
    ("s2", "distilled_model_cifar10", {"nb_filters1": 32, "nb_dense": 40}, 21, 20),
    ("wide", "distilled_model_cifar10", {"nb_filters1": 64, "nb_dense": 64}, 31, 30),
    ("cnn", "cnn_classifier", {"filters": [16, 32], "dense": [64]}, 41, 40),
    ("cnn32", "cnn_classifier", {"filters": [32, 64], "dense": [64]}, 51, 50),
    ("cnn_d128", "cnn_classifier", {"filters": [16, 32], "dense": [128]}, 61, 60),
    # the study's student with other seeds: ensembles of the student in use
    ("cnn32b", "cnn_classifier", {"filters": [32, 64], "dense": [64]}, 71, 70),
    ("cnn32c", "cnn_classifier", {"filters": [32, 64], "dense": [64]}, 81, 80),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/tune-drift/pools.npz")
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--students", default=",".join(s[0] for s in STUDENTS[:5]))
    args = parser.parse_args()
    wanted = args.students.split(",")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = hd.StudyConfig(eval_split="validation", n_eval=args.n_eval, verbose=False, seed=0)
    t0 = time.perf_counter()
    data = stages.load_data(cfg)
    x_train, x_eval, x_eval_u8, y_eval = data.x_train, data.x_eval, data.x_eval_u8, data.y_eval
    split = data.split
    teacher_stage = stages.get_teacher(cfg, data)
    teacher, how = teacher_stage.model, teacher_stage.how
    p_eval = teacher_stage.probs_eval
    print(f"teacher {how}: accuracy {np.mean(p_eval.argmax(1) == y_eval):.4f}", flush=True)
    corruptions = cfg.corruption_list()
    rows = np.stack(
        [
            np.sort(np.random.default_rng([cfg.seed, i]).choice(len(x_eval), args.n_eval, False))
            for i in range(len(corruptions))
        ]
    )
    arrays: dict[str, np.ndarray] = {"y_eval": y_eval, "p_eval": p_eval, "rows": rows}
    corrupted: dict[int, np.ndarray] = {}
    for severity in cfg.severities:
        xs = [
            stages.to_model_input(stages._corrupted(cfg, x_eval_u8, rows[i], c, severity, False))
            for i, c in enumerate(corruptions)
        ]
        corrupted[severity] = np.concatenate(xs)
        arrays[f"p_c{severity}"] = predict_batch(corrupted[severity], teacher, batch_size=512)
        print(f"severity {severity} corrupted, {time.perf_counter() - t0:.0f} s", flush=True)
    info = {"split": split, "corruptions": corruptions, "teacher": how, "students": {}}
    for name, builder, kwargs, model_seed, fit_seed in STUDENTS:
        if name not in wanted:
            continue
        t = time.perf_counter()
        get_backend("pytorch").manual_seed(model_seed)
        student = build_model(builder, input_shape=(28, 28), **kwargs)
        ad = ModelDistillation(
            distilled_model=student, model=teacher, loss_type="xent", temperature=0.5
        )
        ad.fit(
            x_train,
            epochs=10,
            batch_size=128,
            seed=fit_seed,
            verbose=False,
            augment_fn=make_augment_fn("augmix", level=0.5),
        )
        arrays[f"q_eval_{name}"] = predict_batch(x_eval, student, batch_size=512)
        for severity in cfg.severities:
            arrays[f"q_c{severity}_{name}"] = predict_batch(
                corrupted[severity], student, batch_size=512
            )
        info["students"][name] = {
            "builder": builder,
            "kwargs": kwargs,
            "seconds": round(time.perf_counter() - t),
        }
        print(f"student {name}: {time.perf_counter() - t:.0f} s", flush=True)
        np.savez_compressed(out, **arrays)
        out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    print(f"done in {time.perf_counter() - t0:.0f} s -> {out}", flush=True)


if __name__ == "__main__":
    main()
