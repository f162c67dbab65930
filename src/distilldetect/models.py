"""Model zoo, framework-neutral entry point: ``build_model(name, framework, **kwargs)``.

The architectures themselves live in the backends (``backends/pytorch_models.py`` and, with the
tensorflow extra, ``backends/tensorflow_models.py``) so that this module imports no framework.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MODEL_NAMES", "build_model"]

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
