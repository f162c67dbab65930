"""What moves adversarial detection? Student settings compared on a VALIDATION split (never the
test set): 10 000 Fashion-MNIST training images held out (the study's split), students distilled
on the other 50 000, FGSM (eps 0.5) and PGD-20 (eps 0.3) on 500 held-out images the teacher gets
right, thresholds from 1000 other held-out images.

Caveat: the teacher is the shipped pretrained one, trained on all 60 000 training images, so it
has seen the validation images (its accuracy there is its training accuracy); the students have
not.

    PYTHONPATH=src .venv/bin/python scripts/tune_adversarial.py [candidate ...]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from distilldetect import ModelDistillation, attacks
from distilldetect.augment import make_augment_fn
from distilldetect.backends import get_backend
from distilldetect.experiments.config import StudyConfig
from distilldetect.experiments.stages import load_data
from distilldetect.fetching import pretrained
from distilldetect.metrics import auroc
from distilldetect.models import build_model
from distilldetect.utils import predict_batch

SEED_STUDENT = (
    "distilled_model_cifar10",
    {"input_shape": [28, 28], "nb_filters1": 32, "nb_dense": 40},
)
CNN_STUDENT = ("cnn_classifier", {"input_shape": [28, 28], "filters": [32, 64], "dense": [64]})


def noise_fn(sigma: float):
    def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (x + rng.normal(0.0, sigma, size=x.shape)).astype(x.dtype)

    return augment


CANDIDATES = {
    "shipped": (SEED_STUDENT, "xent", 0.5, "augmix"),
    "kld_t1": (SEED_STUDENT, "kld", 1.0, None),
    "xent_t05_plain": (SEED_STUDENT, "xent", 0.5, None),
    "noise03": (SEED_STUDENT, "xent", 0.5, "noise"),
    "cnn_student": (CNN_STUDENT, "xent", 0.5, "augmix"),
}


def main(names: list[str]) -> None:
    data = load_data(StudyConfig(eval_split="validation", verbose=False))
    teacher = pretrained("fashion_mnist").model
    probs = predict_batch(data.x_eval, teacher, batch_size=512)
    right = np.flatnonzero(probs.argmax(1) == data.y_eval)
    held, attacked = right[:1000], right[1000:1500]
    x, y = data.x_eval[attacked], data.y_eval[attacked].astype(np.int64)
    x_fgsm = attacks.fgsm(teacher, x, y, 0.5, verbose=False)
    x_pgd = attacks.pgd(teacher, x, y, 0.3, steps=20, seed=0, verbose=False)
    teacher_fit = predict_batch(data.x_train, teacher, batch_size=512)
    print(f"validation: teacher accuracy {np.mean(probs.argmax(1) == data.y_eval):.4f}")
    for name in names:
        (arch, kwargs), loss, temperature, aug = CANDIDATES[name]
        t0 = time.perf_counter()
        get_backend("pytorch").manual_seed(1)
        student = build_model(arch, **kwargs)
        ad = ModelDistillation(
            distilled_model=student, model=teacher, loss_type=loss, temperature=temperature
        )
        augment_fn = {"augmix": make_augment_fn("augmix", level=0.5), "noise": noise_fn(0.3)}.get(
            aug
        )
        ad.fit(
            data.x_train, epochs=3, verbose=False, seed=0, teacher_probs=teacher_fit,
            augment_fn=augment_fn,
        )  # fmt: skip
        clean = ad.score(x)
        thr = np.quantile(ad.score(data.x_eval[held]), 0.95)
        row = [name]
        for label, xa in (("fgsm0.5", x_fgsm), ("pgd0.3", x_pgd)):
            ok = predict_batch(xa, teacher).argmax(1) != y
            s = ad.score(xa)
            row.append(
                f"{label}: success {ok.mean():.3f} AUROC {auroc(s[ok], clean[ok]):.3f} "
                f"TPR@5% {(s[ok] > thr).mean():.3f}"
            )
        row.append(f"({time.perf_counter() - t0:.0f} s)")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(CANDIDATES))
