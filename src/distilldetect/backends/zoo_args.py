"""The zoo's builder arguments, checked once for both frameworks (no framework imported here).

Every zoo builder (``resnet``, ``distilled_model_cifar10``, ``cnn_classifier``, ``mlp``, in
:mod:`distilldetect.backends.torch.models` and :mod:`distilldetect.backends.tensorflow.models`)
checks its arguments with :func:`check_builder_args` before building anything, so that a bad
argument is one clear error naming it. Loading a saved zoo model also bounds the arguments by
the weight file (:func:`check_against_weights`): no argument may ask for more layers or units
than the file holds, so a tiny ``config.json`` cannot make the loader build a giant model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from ..base import describe

__all__ = ["MODEL_NAMES", "check_builder_args", "check_against_weights"]

#: Builders available in every framework.
MODEL_NAMES: tuple[str, ...] = ("resnet", "distilled_model_cifar10", "cnn_classifier", "mlp")

# Per builder: argument -> kind. Kinds: 'shape' (input shape), 'classes', 'count' (a number of
# layers/blocks), 'width' (units/filters), 'widths' (a list of widths: its length is a count),
# 'kernel', 'rate' ([0, 1)), 'penalty' (>= 0), 'flag' (bool), 'conv_layers' (1-3).
_SPECS: dict[str, dict[str, str]] = {
    "resnet": {
        "input_shape": "shape",
        "num_classes": "classes",
        "num_blocks": "count",
        "widths": "widths",
    },
    "distilled_model_cifar10": {
        "input_shape": "shape",
        "num_classes": "classes",
        "nb_conv_layers": "conv_layers",
        "nb_filters1": "width",
        "nb_dense": "width",
        "kernel1": "kernel",
        "kernel2": "kernel",
        "kernel3": "kernel",
        "l1": "penalty",
    },
    "cnn_classifier": {
        "input_shape": "shape",
        "num_classes": "classes",
        "filters": "widths",
        "kernel_size": "kernel",
        "dense": "widths",
        "dropout": "rate",
        "batch_norm": "flag",
    },
    "mlp": {
        "input_shape": "shape",
        "num_classes": "classes",
        "hidden": "widths",
        "dropout": "rate",
    },
}


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _ints(value: Any, name: str, minimum: int, *, empty: bool) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list of integers >= {minimum}, got {describe(value)}")
    if not empty and len(value) == 0:
        raise ValueError(f"{name} must hold at least one integer, got an empty list")
    return [_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(value)]


def _real(value: Any, name: str, lo: float, hi: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {describe(value)}")
    if value < lo or (hi is not None and value >= hi):
        bound = f"in [{lo}, {hi})" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return float(value)


def check_builder_args(builder: str, args: dict[str, Any]) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming the first bad argument of a zoo builder.

    Only the arguments given are checked (the others take the builder's defaults). A torch
    module given as ``input_shape`` (``distilled_model_cifar10(clf)``, as the seed calls it)
    is accepted here and resolved by the builder.

    Examples
    --------
    >>> check_builder_args("mlp", {"hidden": [16], "num_classes": 10})
    >>> check_builder_args("mlp", {"hidden": [-3]})
    Traceback (most recent call last):
    ...
    ValueError: mlp: hidden[0] must be an integer >= 1, got -3
    """
    if builder not in _SPECS:
        raise ValueError(f"unknown model {builder!r}; known: {list(MODEL_NAMES)}")
    spec = _SPECS[builder]
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise TypeError(f"{builder}: unexpected arguments {unknown}; accepted: {sorted(spec)}")
    try:
        for name, value in args.items():
            kind = spec[name]
            if kind == "shape":
                if hasattr(value, "parameters") or hasattr(value, "layers"):
                    continue  # a classifier whose input shape the builder reads
                shape = _ints(value, name, 1, empty=False)
                if len(shape) > 3:
                    raise ValueError(f"{name} must have 1 to 3 sizes, got {shape}")
            elif kind == "classes":
                _int(value, name, 2)
            elif kind in ("count", "width", "kernel"):
                _int(value, name, 1)
            elif kind == "widths":
                _ints(value, name, 1, empty=name == "dense" or name == "hidden")
            elif kind == "conv_layers":
                if _int(value, name, 1) > 3:
                    raise ValueError(f"{name} must be 1, 2 or 3, got {value}")
            elif kind == "rate":
                _real(value, name, 0.0, 1.0)
            elif kind == "penalty":
                _real(value, name, 0.0, None)
            elif kind == "flag" and not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {describe(value)}")
        if builder == "distilled_model_cifar10" and "nb_filters1" in args:
            layers = int(args.get("nb_conv_layers", 3))
            if int(args["nb_filters1"]) < 2 ** (layers - 1):
                raise ValueError(
                    f"nb_filters1 must be >= {2 ** (layers - 1)} for {layers} convolutions (they "
                    f"have nb_filters1, /2 and /4 filters), got {args['nb_filters1']}"
                )
    except (TypeError, ValueError) as err:
        raise type(err)(f"{builder}: {err}") from None


def check_against_weights(
    builder: str, args: dict[str, Any], n_tensors: int, n_scalars: int, where: str
) -> None:
    """Refuse builder arguments that ask for more layers or units than a weight file holds.

    Every layer counted by an argument owns at least one tensor, and every unit at least one
    scalar, of the saved weights; arguments beyond that cannot describe the file, and building
    them could take unbounded time and memory. Checked before anything is built.

    Examples
    --------
    >>> check_against_weights("resnet", {"num_blocks": 10**9}, 64, 270_000, "config.json")
    Traceback (most recent call last):
    ...
    ValueError: config.json: resnet argument num_blocks=1000000000 asks for more layers than the weight file's 64 tensors
    """
    check_builder_args(builder, args)
    spec = _SPECS[builder]
    for name, value in args.items():
        kind = spec[name]
        if kind == "count" and value > n_tensors:
            raise ValueError(
                f"{where}: {builder} argument {name}={value} asks for more layers than the weight "
                f"file's {n_tensors} tensors"
            )
        if kind == "widths" and len(value) > n_tensors:
            raise ValueError(
                f"{where}: {builder} argument {name} lists {len(value)} layers, more than the "
                f"weight file's {n_tensors} tensors"
            )
        widths = value if kind == "widths" else [value] if kind in ("width", "kernel") else []
        if any(w > n_scalars for w in widths):
            raise ValueError(
                f"{where}: {builder} argument {name}={value} asks for more units than the weight "
                f"file's {n_scalars} values"
            )
        if kind == "shape" and math.prod(int(s) for s in value) > max(n_scalars, 1) * 4096:
            raise ValueError(
                f"{where}: {builder} argument {name}={value} is far larger than any input the "
                f"weight file's {n_scalars} values could have been trained on"
            )
