"""Model zoo, framework-neutral entry point: ``build_model(name, framework, **kwargs)``.

The architectures themselves live in the backends (``backends/torch/models.py`` and, with the
tensorflow extra, ``backends/tensorflow_models.py``) so that this module imports no framework.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
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

__all__ = ["MODEL_NAMES", "build_model", "train_classifier", "load_classifier", "import_factory"]


def build_model(
    name: str, framework: str = "pytorch", *, seed: int | None = None, **kwargs: Any
) -> Any:
    """Build a zoo model (softmax outputs, images as ``(n, h, w[, c])``) in ``framework``.

    Parameters
    ----------
    name
        One of :data:`MODEL_NAMES`.
    framework
        ``'pytorch'`` or ``'tensorflow'``.
    seed
        Seed for the initial weights: the framework's global random numbers are seeded with it
        first (``torch.manual_seed``; ``keras.utils.set_random_seed``, which seeds NumPy's and
        Python's too), so the same seed builds the same model. None draws from the global
        state as it is.
    **kwargs
        The builder's arguments (``input_shape``, ``num_classes``, ...).

    Examples
    --------
    >>> student = build_model("distilled_model_cifar10", input_shape=(32, 32, 3))  # doctest: +SKIP
    >>> a = build_model("cnn_classifier", input_shape=(28, 28), seed=0)
    >>> b = build_model("cnn_classifier", input_shape=(28, 28), seed=0)
    >>> all((p == q).all() for p, q in zip(a.parameters(), b.parameters()))
    True
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known: {list(MODEL_NAMES)}")
    seed = check_seed(seed)
    check_builder_args(name, kwargs)  # before the framework is even imported
    backend = get_backend(framework)
    if seed is not None:
        backend.manual_seed(seed)
    return backend.build_model(name, **kwargs)


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


_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_PICKLED = {".pt", ".pth", ".pkl", ".pickle", ".joblib", ".bin", ".ckpt"}


def load_classifier(spec: str | os.PathLike, weights: str | os.PathLike | None = None) -> Any:
    """A user's trained classifier, to protect (the teacher): from a file or an import path.

    Parameters
    ----------
    spec
        One of

        * a ``.keras`` file: loaded in Keras' safe mode (no Lambda code);
        * an ``.onnx`` file: run with ONNX Runtime as a black-box teacher (``[onnx]`` extra);
        * ``module:factory``: ``factory()`` is imported and called (your own code, from your
          import path), and must return a torch module or a Keras model; ``weights`` are then
          loaded into it.
    weights
        For ``module:factory``: a ``.safetensors`` state dict (torch) or a ``.weights.h5`` file
        (Keras). Pickle-based files (``.pt``, ``.pth``, ...) are refused: they can run code.

    Returns
    -------
    object
        A torch module, a Keras model, or an :class:`~distilldetect.backends.onnx.OnnxTeacher`.

    Raises
    ------
    ValueError
        If the file is missing, of an unknown or unsafe kind, or does not match ``weights``.

    Examples
    --------
    >>> teacher = load_classifier("my_project.nets:make_resnet", weights="resnet.safetensors")  # doctest: +SKIP
    >>> teacher = load_classifier("classifier.onnx")  # doctest: +SKIP
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be a path or 'module:factory', got {describe(spec)}")
    text = os.fspath(spec)
    path = Path(text)
    if _IMPORT_PATH.match(text) and not path.exists():
        return _from_factory(text, weights)
    if weights is not None:
        raise ValueError(f"weights= applies to a module:factory teacher, not to {text!r}")
    if not path.is_file():
        raise ValueError(f"teacher {text!r} is neither a file nor a 'module:factory' import path")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return get_backend("tensorflow").load_keras_file(path)
    if suffix == ".onnx":
        from .backends.onnx import OnnxTeacher

        return OnnxTeacher(path)
    if suffix in _PICKLED or text.endswith(".h5"):
        raise ValueError(
            f"{path}: {suffix} model files are pickles or legacy archives that can run code when "
            "loaded; export the model to .keras or .onnx, or give 'module:factory' and a "
            ".safetensors weights file"
        )
    raise ValueError(
        f"{path}: unknown model file type {suffix!r}; expected .keras, .onnx or 'module:factory'"
    )


def import_factory(spec: Any, name: str = "spec") -> Any:
    """The callable named by the import path ``'module:factory'`` (not called).

    ``factory`` may be a dotted attribute path (``'module:Class.build'``). Used wherever a model
    is named on a command line (``--teacher``, ``--model``, ``--distilled-model``) or must be
    rebuilt by another process (Ray workers). ``name`` names the argument in errors.

    Examples
    --------
    >>> import_factory("collections:OrderedDict", "--model")()
    OrderedDict()
    >>> import_factory("collections", "--model")
    Traceback (most recent call last):
    ...
    ValueError: --model must be an import path 'module:factory', got 'collections'
    """
    if not isinstance(spec, str) or not _IMPORT_PATH.match(spec):
        raise ValueError(f"{name} must be an import path 'module:factory', got {spec!r}")
    module_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{name}: cannot import {module_name!r} for {spec!r}: {err}") from err
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{name}: {module_name!r} has no attribute {attr!r} ({spec!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{name}: {spec} is not callable; expected a factory returning the model")
    return target


def _from_factory(spec: str, weights: str | os.PathLike | None) -> Any:
    target = import_factory(spec, "teacher")
    model = target()
    framework = framework_of(model)
    if framework == "callable":
        if weights is not None:
            raise ValueError(f"{spec} returned a black-box callable; weights= cannot be loaded")
        return model
    if weights is None:
        return model
    weights_path = Path(os.fspath(weights))
    if framework == "pytorch":
        return get_backend("pytorch").load_weights_file(model, weights_path)
    if not weights_path.name.endswith(".weights.h5"):
        raise ValueError(f"{weights_path}: Keras weights must be a .weights.h5 file")
    model.load_weights(weights_path)
    return model
