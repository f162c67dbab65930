"""Train the pretrained Fashion-MNIST detector shipped with the package (seeded, reproducible).

    PYTHONPATH=src .venv/bin/python scripts/make_pretrained.py            # the study's settings
    PYTHONPATH=src .venv/bin/python scripts/make_pretrained.py --help     # what can be changed

It runs the harmful-drift study's own stages (``stages.load_data``, ``get_teacher`` — which reuses
the study's teacher cache —, ``fit_detector``) with the study's own settings, read from
:class:`distilldetect.experiments.harmful_drift.StudyConfig` (so that a change of the study's
defaults — another student, say — is picked up by running this again):

* teacher: the zoo's ``TEACHERS['fashion_mnist']`` (``cnn_classifier``, input (28, 28), filters
  (32, 64), dense (128,)), ``train_classifier`` for ``teacher_epochs`` (5) epochs, batch 128,
  Adam at 1e-3, seed 0, on all 60 000 training images as ``scale_by_instance(x / 255)``;
* student: ``StudyConfig().student_spec()`` (today ``cnn_classifier``, input (28, 28), filters
  (32, 64), dense (64,)), built after seeding torch with ``seed + 1``;
  ``ModelDistillation(loss_type='xent', temperature=0.5, data_type='image')``, ``fit`` for
  ``student_epochs`` (10) epochs with AugMix (``make_augment_fn('augmix', level=0.5)``),
  batch 128, Adam at 1e-3, seed 0;
* threshold: the 95th percentile of the scores of test images 0-4999 (clean data).

It writes the detector with ``save_detector`` to ``src/distilldetect/pretrained/fashion_mnist/``
(safetensors + JSON, no pickle) and, beside it, ``fashion_mnist.json``: how it was made and
what it scores on the test set (teacher accuracy, student top-1 agreement with the teacher,
AUROC of the score for "teacher wrong" on the clean test set), measured here.
Same seed, same machine and versions: same weights (CPU training).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "distilldetect" / "pretrained"


def parse(argv: list[str] | None) -> argparse.Namespace:
    from distilldetect.experiments.harmful_drift import StudyConfig

    study = StudyConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist"])
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of pretrained detectors")
    p.add_argument("--teacher-epochs", type=int, default=study.teacher_epochs)
    p.add_argument("--student-epochs", type=int, default=study.student_epochs)
    p.add_argument("--student", default=study.student, help="zoo name (default: the study's)")
    p.add_argument(
        "--student-kwargs", type=json.loads, default=study.student_kwargs, help="JSON object"
    )
    p.add_argument("--loss-type", default=study.loss_type, choices=["kld", "xent"])
    p.add_argument("--temperature", type=float, default=study.temperature)
    p.add_argument("--augment", default=study.augment or "none", choices=["augmix", "none"])
    p.add_argument("--augment-level", type=float, default=study.augment_level)
    p.add_argument("--threshold-perc", type=float, default=95.0)
    p.add_argument("--seed", type=int, default=study.seed)
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    import distilldetect
    from distilldetect import predict_batch, save_detector
    from distilldetect.experiments import stages
    from distilldetect.experiments.harmful_drift import TEACHERS, StudyConfig
    from distilldetect.metrics import auroc

    args = parse(argv)
    cfg = StudyConfig(
        dataset=args.dataset,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs,
        student=args.student,
        student_kwargs=args.student_kwargs,
        loss_type=args.loss_type,
        temperature=args.temperature,
        augment=None if args.augment == "none" else args.augment,
        augment_level=args.augment_level,
        seed=args.seed,
    ).validate()
    verbose = not args.quiet
    started = time.monotonic()

    # the study's own stages, so that the shipped teacher and student are exactly the study's
    # (the teacher comes from the study's cache when an earlier study trained it)
    cfg = dataclasses.replace(cfg, data_dir=args.data_dir, verbose=verbose)
    data = stages.load_data(cfg)
    X_test, y_test = data.x_eval, data.y_eval
    t0 = time.monotonic()
    teacher_stage = stages.get_teacher(cfg, data)
    teacher = teacher_stage.model
    teacher_seconds = time.monotonic() - t0
    t0 = time.monotonic()
    detector = stages.fit_detector(cfg, data, teacher_stage)
    ad, student = detector.ad, detector.ad.distilled_model
    student_name, student_kwargs = cfg.student_spec()
    teacher_name, teacher_kwargs = TEACHERS[cfg.dataset]
    student_seconds = time.monotonic() - t0

    # measurements on the test set
    teacher_probs = predict_batch(X_test, teacher, batch_size=512)
    student_probs = predict_batch(X_test, student, batch_size=512)
    scores = ad.score(X_test, batch_size=512, teacher_probs=teacher_probs)
    ad.infer_threshold(X_test[:5000], threshold_perc=args.threshold_perc, batch_size=512)
    teacher_right = teacher_probs.argmax(1) == y_test
    results = {
        "teacher_test_accuracy": round(float(teacher_right.mean()), 4),
        "student_test_accuracy": round(float((student_probs.argmax(1) == y_test).mean()), 4),
        "student_agreement": round(float((student_probs.argmax(1) == teacher_probs.argmax(1)).mean()), 4),
        "auroc_score_teacher_wrong": round(float(auroc(scores[~teacher_right], scores[teacher_right])), 4),
        "threshold": ad.threshold,
        "flagged_test_5000_9999": round(float((scores[5000:] > ad.threshold).mean()), 4),
    }  # fmt: skip

    name = args.dataset
    target = args.out / name
    if target.exists():  # ours: written by an earlier run of this script
        shutil.rmtree(target)
    save_detector(ad, target)
    lock = target / ".lock"
    if lock.exists():
        lock.unlink()
    n_params = {
        "teacher": int(sum(p.numel() for p in teacher.parameters())),
        "student": int(sum(p.numel() for p in student.parameters())),
    }
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    record = {
        "name": name,
        "detector": f"distilldetect/pretrained/{name}",
        "made_by": "scripts/make_pretrained.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "recipe": {
            "data": "Fashion-MNIST, all 60000 training images, scale_by_instance(x / 255)",
            "teacher": {
                "builder": teacher_name,
                "kwargs": teacher_kwargs,
                "epochs": cfg.teacher_epochs,
                "batch_size": cfg.batch_size_fit,
                "learning_rate": cfg.teacher_lr,
                "seed": cfg.seed,
            },
            "student": {
                "builder": student_name,
                "kwargs": student_kwargs,
                "epochs": cfg.student_epochs,
                "batch_size": cfg.batch_size_fit,
                "learning_rate": cfg.student_lr,
                "seed": cfg.seed,
                "build_seed": cfg.seed + 1,
                "loss_type": cfg.loss_type,
                "temperature": cfg.temperature,
                "augment": cfg.augment,
                "augment_level": cfg.augment_level,
            },
            "threshold": f"{args.threshold_perc:g}th percentile of the scores of test images 0-4999",
        },  # fmt: skip
        "test_set": results,
        "parameters": n_params,
        "bytes": size,
        "seconds": {
            "teacher": round(teacher_seconds, 1),
            "student": round(student_seconds, 1),
            "total": round(time.monotonic() - started, 1),
        },
        "versions": {
            "distilldetect": distilldetect.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
        },
    }
    text = json.dumps(record, indent=2) + "\n"
    tmp = args.out / f".{name}.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, args.out / f"{name}.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
