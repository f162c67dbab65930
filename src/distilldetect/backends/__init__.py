"""Deep-learning backends: the only place that imports a framework.

Everything above this package sees numpy arrays and plain callables. A model is one of:

* ``'pytorch'`` — a ``torch.nn.Module`` (handled by :mod:`distilldetect.backends.pytorch`);
* ``'tensorflow'`` — a ``tf.keras`` / Keras 3 model (:mod:`distilldetect.backends.tensorflow`);
* ``'callable'`` — any other callable mapping a numpy batch to an array of outputs
  (a scikit-learn ``predict_proba``, an ONNX session wrapper, a remote model). Such a model can
  be a teacher, never a student: a student must be trainable.

Every backend module provides the same functions:

``is_model(obj) -> bool``
    Whether ``obj`` is a model of this framework.
``inference(model) -> context manager yielding fn(x: np.ndarray) -> np.ndarray | tuple``
    Forward passes without gradients in inference (eval) mode; the model's mode is restored
    on exit and its weights are never modified.
``n_trainable_parameters(model) -> int``
``Trainer(student, optimizer, learning_rate, loss_type, loss_fn, seed)``
    A context manager whose ``step(x, teacher_probs) -> (loss, student_probs)`` runs one
    optimisation step of the distillation loss on one minibatch.
``distillation_loss(p, q, loss_type) -> per-instance loss tensor``
    The framework version of :func:`distilldetect.losses.distillation_score` (sharpening
    excluded), tested against it.

Frameworks are detected without importing them: a torch module can only exist if ``torch``
was imported, a Keras model only if ``keras``/``tensorflow`` was.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

from ..base import describe

__all__ = ["FRAMEWORKS", "framework_of", "get_backend", "inference"]

FRAMEWORKS: tuple[str, ...] = ("pytorch", "tensorflow")

_KERAS_PACKAGES = ("keras", "tf_keras", "tensorflow")

_MODULES = {
    "pytorch": "distilldetect.backends.pytorch",
    "tensorflow": "distilldetect.backends.tensorflow",
}


def get_backend(framework: str) -> ModuleType:
    """Import and return the backend module for ``framework`` ('pytorch' or 'tensorflow').

    Examples
    --------
    >>> get_backend("pytorch").__name__
    'distilldetect.backends.pytorch'
    """
    if framework not in _MODULES:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    return importlib.import_module(_MODULES[framework])


def framework_of(model: Any) -> str:
    """Return ``'pytorch'``, ``'tensorflow'`` or ``'callable'`` for ``model``.

    Raises
    ------
    TypeError
        If ``model`` is none of these.

    Examples
    --------
    >>> framework_of(lambda x: x)
    'callable'
    """
    if "torch" in sys.modules and get_backend("pytorch").is_model(model):
        return "pytorch"
    # Only an object whose class comes from Keras / TensorFlow can be a Keras model; checking
    # the class first keeps TensorFlow unimported for everything else (and works when Keras
    # runs on another backend without TensorFlow installed).
    if any(c.__module__.partition(".")[0] in _KERAS_PACKAGES for c in type(model).__mro__):
        try:
            tensorflow_backend = get_backend("tensorflow")
        except ImportError as err:
            raise TypeError(
                f"{describe(model)} looks like a Keras model, but the TensorFlow backend cannot "
                f"be imported ({err}); install the extra: pip install 'distilldetect[tensorflow]'"
            ) from err
        if tensorflow_backend.is_model(model):
            return "tensorflow"
    if callable(model):
        return "callable"
    raise TypeError(
        "expected a torch.nn.Module, a tf.keras model or a callable mapping a numpy batch to "
        f"class probabilities, got {describe(model)}"
    )


@contextlib.contextmanager
def _callable_inference(model: Callable) -> Iterator[Callable[[np.ndarray], Any]]:
    def forward(x: np.ndarray) -> Any:
        out = model(x)
        if (
            isinstance(out, (tuple, list))
            and out
            and hasattr(out[0], "__array__")
            and np.ndim(out[0]) > 1
        ):
            return tuple(np.asarray(o) for o in out)
        return np.asarray(out)

    yield forward


def inference(model: Any) -> contextlib.AbstractContextManager[Callable[[np.ndarray], Any]]:
    """Context manager yielding a numpy-in, numpy-out forward function for any model.

    Examples
    --------
    >>> with inference(lambda x: x * 2) as forward:
    ...     forward(np.ones(2))
    array([2., 2.])
    """
    framework = framework_of(model)
    if framework == "callable":
        return _callable_inference(model)
    return get_backend(framework).inference(model)
