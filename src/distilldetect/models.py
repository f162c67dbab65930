"""Model zoo, framework-neutral entry point: ``build_model(name, framework, **kwargs)``.

The architectures themselves live in the backends (``backends/pytorch_models.py`` and, with the
tensorflow extra, ``backends/tensorflow_models.py``) so that this module imports no framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import FRAMEWORKS, framework_of, get_backend, inference
from .backends.zoo_args import MODEL_NAMES, check_builder_args
from .base import (
    check_array,
    check_batch_size,
    check_bool,
    check_positive_float,
    check_positive_int,
    check_seed,
    describe,
)

__all__ = ["MODEL_NAMES", "build_model", "train_classifier"]


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
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known: {list(MODEL_NAMES)}")
    check_builder_args(name, kwargs)  # before the framework is even imported
    return get_backend(framework).build_model(name, **kwargs)


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
        A torch module or Keras model returning class probabilities (torch zoo models train on
        their logits). Every sub-module's train/eval mode is restored afterwards.
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
    if framework == "callable":
        raise TypeError(
            "train_classifier trains torch modules and Keras models, got a black-box callable "
            f"({type(model).__name__}); train it with its own library"
        )
    if len(y) and y.min() < 0:
        raise ValueError(f"y must hold class indices >= 0, got a minimum of {int(y.min())}")
    backend = get_backend(framework)
    with inference(model, framework) as forward:
        probe = forward(X[:1])
    n_classes = probe.shape[-1] if isinstance(probe, np.ndarray) and probe.ndim == 2 else None
    if n_classes is None:
        raise TypeError(f"model must return class probabilities (n, k), got {describe(probe)}")
    if y.max() >= n_classes:
        raise ValueError(
            f"y holds class index {int(y.max())}, but the model has {n_classes} outputs (classes "
            f"0 to {n_classes - 1})"
        )
    return backend.train_classifier(
        model,
        X,
        y,
        epochs=check_positive_int(epochs, "epochs"),
        batch_size=check_batch_size(batch_size),
        learning_rate=check_positive_float(learning_rate, "learning_rate"),
        seed=check_seed(seed),
        verbose=check_bool(verbose, "verbose"),
    )
