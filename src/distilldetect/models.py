"""Model zoo, framework-neutral entry point: ``build_model(name, framework, **kwargs)``.

The architectures themselves live in the backends (``backends/pytorch_models.py`` and, with the
tensorflow extra, ``backends/tensorflow_models.py``) so that this module imports no framework.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .backends import framework_of, get_backend
from .base import (
    check_array,
    check_batch_size,
    check_positive_float,
    check_positive_int,
    check_seed,
)

__all__ = ["MODEL_NAMES", "build_model", "train_classifier"]

#: Builders available in every framework.
MODEL_NAMES: tuple[str, ...] = ("resnet", "distilled_model_cifar10", "cnn_classifier", "mlp")

_ZOO = {
    "pytorch": "distilldetect.backends.pytorch_models",
    "tensorflow": "distilldetect.backends.tensorflow_models",
}


def build_model(name: str, framework: str = "pytorch", **kwargs: Any) -> Any:
    """Build a zoo model (softmax outputs, images as ``(n, h, w[, c])``) in ``framework``.

    Parameters
    ----------
    name
        One of :data:`MODEL_NAMES`.
    framework
        ``'pytorch'`` or ``'tensorflow'``.
    **kwargs
        The builder's arguments (``input_shape``, ``num_classes``, ...).

    Examples
    --------
    >>> student = build_model("distilled_model_cifar10", input_shape=(32, 32, 3))  # doctest: +SKIP
    """
    if framework not in _ZOO:
        raise ValueError(f"framework must be one of {sorted(_ZOO)}, got {framework!r}")
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known: {list(MODEL_NAMES)}")
    return importlib.import_module(_ZOO[framework]).build(name, **kwargs)


def train_classifier(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int | None = None,
    verbose: bool = True,
) -> list[float]:
    """Train a softmax classifier (e.g. a zoo teacher) on labelled data with Adam.

    A convenience for examples and the study; any trained classifier can be a teacher.

    Parameters
    ----------
    model
        A torch module returning class probabilities (zoo models train on their logits).
    X, y
        Training instances and integer labels.
    epochs, batch_size, learning_rate
        Training settings.
    seed
        Seed for shuffling and dropout.
    verbose
        Progress bars.

    Returns
    -------
    list of float
        Mean training loss per epoch.

    Examples
    --------
    >>> teacher = build_model("cnn_classifier", input_shape=(28, 28))  # doctest: +SKIP
    >>> train_classifier(teacher, X_train, y_train, epochs=2, seed=0)  # doctest: +SKIP
    """
    X = check_array(X, "X", min_ndim=2)
    y = check_array(np.asarray(y) if isinstance(y, (list, tuple)) else y, "y")
    if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != len(X):
        raise ValueError(
            f"y must be a 1-D integer array with one label per instance of X ({len(X)}), "
            f"got shape {y.shape} and dtype {y.dtype}"
        )
    framework = framework_of(model)
    if framework != "pytorch":
        raise TypeError(f"train_classifier supports torch modules, got a {framework} model")
    return get_backend(framework).train_classifier(
        model,
        X,
        y,
        epochs=check_positive_int(epochs, "epochs"),
        batch_size=check_batch_size(batch_size),
        learning_rate=check_positive_float(learning_rate, "learning_rate"),
        seed=check_seed(seed),
        verbose=verbose,
    )
