"""Speed of ModelDistillation with Keras models: fit and score on CIFAR-shaped input.

Run by hand: ``python benchmarks/bench_tensorflow.py [--n-fit N] [--epochs E] [--n-score M]``
(needs the ``tensorflow`` extra). The teacher is the zoo's ResNet-20 (``resnet()``), the student
the seed study's ``distilled_model_cifar10()``, both Keras; the input is synthetic
``(n, 32, 32, 3)`` float32 data (speed does not depend on the pixel values). The same
architectures exist in PyTorch (:mod:`distilldetect.backends.torch.models`), so the figures
compare directly with the torch backend's benchmark.

Reported:

* ``fit_inst_epoch_per_s``: ``n_fit * epochs / seconds`` of one ``fit`` call (batch size 128),
  everything included: the teacher's forward pass over ``X`` (cached), tracing the training
  step once, the optimisation steps;
* ``score_inst_per_s``: ``n_score / seconds`` of ``score`` (batch size 256, both models), after
  one warm-up call that traces the cached forward functions;
* ``trace_seconds``: that warm-up call (tracing cost, paid once per model and input shape).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(n_fit: int = 1000, epochs: int = 2, n_score: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Time ``fit`` and ``score`` of the TensorFlow backend; return the figures as a dict.

    Examples
    --------
    >>> run(n_fit=64, epochs=1, n_score=64)["framework"]  # doctest: +SKIP
    'tensorflow'
    """
    import keras
    import tensorflow as tf

    from distilldetect import ModelDistillation
    from distilldetect.backends.tensorflow import n_trainable_parameters
    from distilldetect.backends.tensorflow.models import distilled_model_cifar10, resnet

    rng = np.random.default_rng(seed)
    X_fit = rng.random((n_fit, 32, 32, 3), dtype=np.float32)
    X_score = rng.random((n_score, 32, 32, 3), dtype=np.float32)
    keras.utils.set_random_seed(seed)
    teacher, student = resnet(), distilled_model_cifar10()
    ad = ModelDistillation(distilled_model=student, model=teacher)

    start = time.perf_counter()
    ad.score(X_score[:256])
    trace = time.perf_counter() - start

    start = time.perf_counter()
    ad.fit(X_fit, epochs=epochs, batch_size=128, verbose=False, seed=seed)
    fit = time.perf_counter() - start

    start = time.perf_counter()
    ad.score(X_score, batch_size=256)
    score = time.perf_counter() - start
    return {
        "framework": "tensorflow",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "teacher": "resnet (ResNet-20)",
        "teacher_parameters": n_trainable_parameters(teacher),
        "student": "distilled_model_cifar10",
        "student_parameters": n_trainable_parameters(student),
        "n_fit": n_fit,
        "epochs": epochs,
        "n_score": n_score,
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "trace_seconds": round(trace, 3),
        "fit_seconds": round(fit, 3),
        "fit_inst_epoch_per_s": round(n_fit * epochs / fit, 1),
        "score_seconds": round(score, 3),
        "score_inst_per_s": round(n_score / score, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-fit", type=int, default=1000, help="training instances")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training data")
    parser.add_argument("--n-score", type=int, default=2000, help="instances scored")
    args = parser.parse_args()
    result = run(n_fit=args.n_fit, epochs=args.epochs, n_score=args.n_score)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
