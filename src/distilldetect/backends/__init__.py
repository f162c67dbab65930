"""Deep-learning backends: the only place that imports a framework.

Everything above this package sees numpy arrays and plain callables. A model is one of:

* ``'pytorch'`` — a ``torch.nn.Module`` (:mod:`distilldetect.backends.torch`);
* ``'tensorflow'`` — a ``tf.keras`` / Keras 3 model (:mod:`distilldetect.backends.tensorflow`);
* ``'callable'`` — any other callable mapping a numpy batch to an array of outputs
  (a scikit-learn ``predict_proba``, an ONNX session wrapper, a remote model). Such a model can
  be a teacher, never a student: a student must be trainable.

:data:`BACKENDS` is the one table from a framework name to the package that implements
:class:`Backend` for it; :func:`get_backend` imports it on first use. Frameworks are detected
without importing them: a torch module can only exist if ``torch`` was imported, a Keras model
only if ``keras``/``tensorflow`` was.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..base import describe

__all__ = [
    "BACKENDS",
    "FRAMEWORKS",
    "EXTRAS",
    "PRECISIONS",
    "Backend",
    "framework_of",
    "get_backend",
    "inference",
]

#: Framework name (as saved in detector folders) -> the package implementing :class:`Backend`.
BACKENDS: dict[str, str] = {
    "pytorch": "distilldetect.backends.torch",
    "tensorflow": "distilldetect.backends.tensorflow",
}
#: The frameworks a student (or a differentiable teacher) can come from.
FRAMEWORKS: tuple[str, ...] = tuple(BACKENDS)
#: The pip extra that installs each framework.
EXTRAS: dict[str, str] = {"pytorch": "torch", "tensorflow": "tensorflow"}

#: Arithmetic of inference forwards (``ModelDistillation(precision=...)``), the default first.
#: ``'bfloat16'``: torch models only, on the optimised path (``optimize=True``).
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")

_KERAS_PACKAGES = ("keras", "tf_keras", "tensorflow")


@runtime_checkable
class Backend(Protocol):
    """What every framework backend provides (a module satisfying this protocol).

    The contract is checked for every backend by ``tests/test_backend_conformance.py``:
    inference restores every sub-module's mode and never trains the teacher, concurrent
    inference is safe, the training loss equals :mod:`distilldetect.losses`, seeding
    reproduces, the optimizer rules hold, and saved models load back to the same outputs.
    """

    #: The framework's name, a key of :data:`BACKENDS`.
    FRAMEWORK: str

    def is_model(self, obj: Any) -> bool:
        """Whether ``obj`` is a model of this framework."""
        ...

    def inference(
        self, model: Any, optimize: bool = False, precision: str = "float32"
    ) -> contextlib.AbstractContextManager[Callable[..., Any]]:
        """A context manager yielding ``forward(x: np.ndarray) -> np.ndarray | tuple``.

        Forward passes run without gradients in inference (eval) mode, safely from many threads
        at once; the model's modes and weights are the same after each call as before. A
        ``precision`` (:data:`PRECISIONS`) the backend cannot honour raises ``ValueError``.
        """
        ...

    def seal(self, model: Any, sealed: bool = True) -> None:
        """Promise that ``model`` will not change, so inference may skip its per-call checks
        (``sealed=False`` withdraws it); training the model withdraws it too. A backend with
        nothing to skip does nothing."""
        ...

    def n_trainable_parameters(self, model: Any) -> int:
        """Number of trainable scalars."""
        ...

    def distillation_loss(self, p: Any, q: Any, loss_type: str = "kld") -> Any:
        """Per-instance loss tensor: the framework twin of :func:`distilldetect.losses.kld` /
        :func:`~distilldetect.losses.xent` (sharpening excluded)."""
        ...

    def manual_seed(self, seed: int) -> None:
        """Seed the framework's global random numbers (before building a model)."""
        ...

    def Trainer(self, student: Any, **kwargs: Any) -> Any:  # noqa: N802 - a class
        """``Trainer(student, optimizer, learning_rate, loss_type, loss_fn, seed)``: a context
        manager whose ``step(x, teacher_probs) -> (loss, student_probs)`` runs one optimisation
        step of the distillation loss."""
        ...

    def train_classifier(self, model: Any, X: np.ndarray, y: np.ndarray, **kwargs: Any) -> list:
        """Supervised training of a softmax classifier (the studies' teachers)."""
        ...

    def build_model(self, name: str, **kwargs: Any) -> Any:
        """A model of the zoo (:data:`distilldetect.models.MODEL_NAMES`)."""
        ...

    def fresh_copy(self, model: Any, seed: int) -> Any:
        """A new model of ``model``'s architecture with weights drawn afresh from ``seed``
        (``model`` untouched); ``ValueError`` if the architecture cannot be copied."""
        ...

    def save_model(self, model: Any, directory: Any, name: str) -> dict[str, Any]:
        """Write the model's files into ``directory``; return its JSON entry."""
        ...

    def load_model(self, directory: Any, entry: dict[str, Any], model: Any = None) -> Any:
        """Rebuild (or load the weights into ``model``) from the entry :meth:`save_model` gave."""
        ...


_LOADED: dict[str, ModuleType] = {}


def get_backend(framework: str) -> Backend:
    """The backend for ``framework`` ('pytorch' or 'tensorflow'), imported on first use.

    Raises
    ------
    ValueError
        For an unknown framework.
    ImportError
        If the framework is not installed; the message names the extra to install.

    Examples
    --------
    >>> get_backend("pytorch").FRAMEWORK
    'pytorch'
    """
    module = _LOADED.get(framework)
    if module is not None:
        return module  # type: ignore[return-value]
    if framework not in BACKENDS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    try:
        module = importlib.import_module(BACKENDS[framework])
    except ImportError as err:
        if getattr(err, "name", None) and str(err.name).startswith("distilldetect"):
            raise
        raise ImportError(
            f"the {framework} backend needs {framework} installed: "
            f"pip install 'distilldetect[{EXTRAS[framework]}]' ({err})"
        ) from err
    _LOADED[framework] = module
    return module  # type: ignore[return-value]


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


def inference(
    model: Any, framework: str | None = None, optimize: bool = False, precision: str = "float32"
) -> contextlib.AbstractContextManager[Callable[[np.ndarray], Any]]:
    """Context manager yielding a numpy-in, numpy-out forward function for any model.

    Parameters
    ----------
    model
        A torch module, a Keras model or any callable.
    framework
        The model's framework if already known (skips :func:`framework_of`).
    optimize
        Opt in to the backend's optimised forward for a model whose code it does not know
        (see the torch backend's ``inference``); a start-up cost, then faster calls.
    precision
        One of :data:`PRECISIONS`; a plain callable runs as it is whatever the precision.

    Examples
    --------
    >>> with inference(lambda x: x * 2) as forward:
    ...     forward(np.ones(2))
    array([2., 2.])
    """
    framework = framework_of(model) if framework is None else framework
    if framework == "callable":
        return _callable_inference(model)
    return get_backend(framework).inference(model, optimize, precision)
