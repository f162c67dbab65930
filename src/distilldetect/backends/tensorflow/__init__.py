"""The TensorFlow / Keras backend (:class:`distilldetect.backends.Backend` for Keras models).

* :mod:`.runtime` — batched inference to numpy (``training=False``, traced once per shape), the
  student's training step, the loss in TensorFlow, supervised training of a teacher;
* :mod:`.models` — the model zoo in Keras, twins of the torch zoo;
* :mod:`.io` — ``.keras`` files loaded with ``safe_mode=True``, legacy ``.h5`` files checked for
  code before Keras reads them (:func:`load_h5`), never pickle;
* :mod:`.attacks` — FGSM, PGD and Carlini-Wagner L2 by ``tf.GradientTape``;
* :mod:`.robust` — adversarial (TRADES-style) augmentation of a student's training batches.
"""

from __future__ import annotations

from . import attacks, robust
from .io import load_h5, load_keras_file, load_model, save_model
from .models import build as build_model
from .models import fresh_copy
from .runtime import (
    Trainer,
    distillation_loss,
    inference,
    is_model,
    manual_seed,
    model_dtype,
    n_trainable_parameters,
    preserve_modes,
    reseed_random_layers,
    seal,
    train_classifier,
)

FRAMEWORK = "tensorflow"

__all__ = [
    "FRAMEWORK",
    "attacks",
    "Trainer",
    "build_model",
    "distillation_loss",
    "fresh_copy",
    "inference",
    "is_model",
    "load_keras_file",
    "load_h5",
    "load_model",
    "manual_seed",
    "model_dtype",
    "n_trainable_parameters",
    "preserve_modes",
    "reseed_random_layers",
    "robust",
    "save_model",
    "seal",
    "train_classifier",
]
