"""The PyTorch backend (:class:`distilldetect.backends.Backend` for ``torch.nn.Module`` models).

* :mod:`.runtime` — batched, thread-safe inference to numpy, the student's training step, the
  loss in torch, :func:`~.runtime.preserve_modes`, supervised training of a teacher;
* :mod:`.models` — the model zoo (ResNet-20, the seed's student, a CNN, an MLP);
* :mod:`.io` — weights as safetensors, zoo architectures rebuilt by name, never pickle;
* :mod:`.attacks` — FGSM, PGD, Carlini-Wagner L2 and the adaptive PGD, by gradients;
* :mod:`.robust` — adversarial (TRADES-style) augmentation of a student's training batches;
* :mod:`.fast` — optional CPU speed-ups that keep outputs equal up to float rounding.
"""

from __future__ import annotations

from . import attacks, robust
from .io import load_model, load_weights_file, save_model
from .models import build as build_model
from .models import fresh_copy
from .runtime import (
    Trainer,
    distillation_loss,
    inference,
    is_model,
    manual_seed,
    model_device,
    model_dtype,
    n_trainable_parameters,
    preserve_modes,
    seal,
    to_tensor,
    train_classifier,
)

FRAMEWORK = "pytorch"

__all__ = [
    "FRAMEWORK",
    "attacks",
    "robust",
    "Trainer",
    "build_model",
    "distillation_loss",
    "fresh_copy",
    "inference",
    "is_model",
    "load_model",
    "load_weights_file",
    "manual_seed",
    "model_device",
    "model_dtype",
    "n_trainable_parameters",
    "preserve_modes",
    "save_model",
    "seal",
    "to_tensor",
    "train_classifier",
]
