"""Detector base class and the input checks every public entry point shares.

All checks raise ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, wrong
value) with a message that names the argument, says what was expected and what was given.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from ._version import __version__

__all__ = [
    "BaseDetector",
    "DETECTORS",
    "MAX_SEED",
    "check_array",
    "check_bool",
    "check_json",
    "check_keys",
    "check_shape",
    "check_batch_size",
    "check_callable",
    "check_finite",
    "check_positive_float",
    "check_positive_int",
    "check_probabilities",
    "check_seed",
    "describe",
]

# Tolerance on row sums when deciding whether an array holds probabilities. Float32 softmax
# outputs sum to 1 within ~1e-6; 1e-3 leaves room for half precision and for renormalised
# outputs of remote models that round to a few decimals.
PROBABILITY_ATOL: float = 1e-3


def describe(value: Any) -> str:
    """A short description of ``value`` for error messages."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def check_array(
    x: Any,
    name: str = "X",
    *,
    min_ndim: int = 1,
    allow_empty: bool = False,
    finite: bool = True,
) -> np.ndarray:
    """Check that ``x`` is a numeric numpy array with at least ``min_ndim`` axes.

    Parameters
    ----------
    x
        The value to check.
    name
        Argument name used in error messages.
    min_ndim
        Minimum number of axes (the first is the batch axis).
    allow_empty
        Accept zero instances.
    finite
        Reject NaN and infinite values (checked for floating and complex dtypes).

    Returns
    -------
    numpy.ndarray
        ``x`` itself (never a converted copy).

    Examples
    --------
    >>> check_array(np.zeros((2, 3))).shape
    (2, 3)
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy masked array; its mask would be ignored. Fill the masked values "
            f"(x.filled(...)) or drop those instances, and pass a plain array"
        )
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {describe(x)}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers (bool, int or float), got dtype {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} axes (instances first), got shape {x.shape}"
        )
    if not allow_empty and (x.ndim == 0 or x.shape[0] == 0):
        raise ValueError(f"{name} is empty (shape {x.shape}); at least one instance is needed")
    if finite:
        check_finite(x, name)
    return x


def check_finite(x: np.ndarray, name: str = "X") -> None:
    """Raise ``ValueError`` if the floating array ``x`` holds NaN or infinite values."""
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        n_nan = int(np.isnan(x).sum())
        n_inf = int(np.isinf(x).sum())
        raise ValueError(
            f"{name} must be finite, got {n_nan} NaN and {n_inf} infinite values "
            f"in an array of shape {x.shape}"
        )


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Check that ``value`` is an integer ``>= minimum`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_batch_size(value: Any, name: str = "batch_size") -> int:
    """Check a batch size: an integer >= 1."""
    return check_positive_int(value, name, minimum=1)


def check_positive_float(value: Any, name: str) -> float:
    """Check that ``value`` is a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {describe(value)}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_callable(value: Any, name: str, *, allow_none: bool = True) -> Callable | None:
    """Check that ``value`` is callable (or None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise TypeError(
            f"{name} must be callable{' or None' if allow_none else ''}, got {describe(value)}"
        )
    return value


#: Largest accepted seed: every framework's generator takes seeds below 2**63.
MAX_SEED: int = 2**63 - 1


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """Check a seed: None or an integer in ``[0, 2**63 - 1]`` (what every framework accepts).

    Examples
    --------
    >>> check_seed(2**64)
    Traceback (most recent call last):
    ...
    ValueError: seed must be None or an integer in [0, 2**63 - 1], got 18446744073709551616
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be None or a non-negative integer, got {describe(seed)}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be None or an integer in [0, 2**63 - 1], got {seed}")
    return int(seed)


def check_bool(value: Any, name: str) -> bool:
    """Check a flag: ``True`` or ``False`` (numpy bools too); a string like ``'no'`` is refused.

    Examples
    --------
    >>> check_bool(np.True_, "verbose")
    True
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def check_shape(shape: Any, name: str = "input_shape") -> tuple[int, ...]:
    """Check an instance shape: a tuple or list of non-negative integers."""
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, (tuple, list))
        or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in shape
        )
    ):
        raise TypeError(
            f"{name} must be None or a tuple of non-negative integers, got {describe(shape)}"
        )
    return tuple(int(s) for s in shape)


def check_keys(config: Any, required: set[str], optional: set[str], name: str) -> dict[str, Any]:
    """Check that ``config`` is a dict with all ``required`` keys and no key outside both sets."""
    if not isinstance(config, dict):
        raise TypeError(f"{name} must be a dict, got {describe(config)}")
    missing = sorted(required - set(config))
    unknown = sorted(set(config) - required - optional)
    if missing or unknown:
        raise ValueError(
            f"{name} has missing keys {missing} and unknown keys {unknown}; expected "
            f"{sorted(required)} and optionally {sorted(optional)}"
        )
    return config


def check_json(value: Any, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is plain, finite JSON data (tuples allowed).

    Examples
    --------
    >>> check_json({"a": [1, 2.5, None]}, "meta")
    >>> check_json({"a": float("nan")}, "meta")
    Traceback (most recent call last):
    ...
    ValueError: meta['a'] is nan, which is not valid JSON (NaN and infinity cannot be saved)
    """
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(
                f"{name} is {value}, which is not valid JSON (NaN and infinity cannot be saved)"
            )
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json(item, f"{name}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{name} has a key {key!r} that is not a string; cannot save it")
            check_json(item, f"{name}[{key!r}]")
        return
    raise ValueError(
        f"{name} is {describe(value)}, which cannot be saved: saved detectors hold only JSON "
        "data (str, int, float, bool, None, lists and dicts)"
    )


def check_probabilities(probs: Any, name: str, *, n_rows: int | None = None) -> np.ndarray:
    """Check that ``probs`` is an ``(n, k)`` array of class probabilities.

    Rows must be finite, non-negative and sum to one (within ``PROBABILITY_ATOL``). Outputs
    that look like logits get a message that suggests a softmax.

    Examples
    --------
    >>> check_probabilities(np.array([[0.2, 0.8]]), "teacher outputs").shape
    (1, 2)
    """
    if not isinstance(probs, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of probabilities, got {describe(probs)}")
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(
            f"{name} must be a 2-D array (instances, classes) with at least 2 classes, "
            f"got shape {probs.shape}"
        )
    if n_rows is not None and probs.shape[0] != n_rows:
        raise ValueError(f"{name} must have {n_rows} rows (one per instance), got {probs.shape[0]}")
    if probs.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point probabilities, got dtype {probs.dtype}")
    if not np.isfinite(probs).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    lo = float(probs.min())
    sums = probs.sum(axis=1, dtype=np.float64)
    bad_sum = np.abs(sums - 1.0) > PROBABILITY_ATOL
    if lo < 0 or bad_sum.any():
        raise ValueError(
            f"{name} are not probabilities: expected non-negative rows summing to 1, got minimum "
            f"{lo:.4g} and row sums in [{sums.min():.4g}, {sums.max():.4g}]. If the model returns "
            "logits, end it with a softmax (torch.nn.Softmax(dim=-1) / "
            "tf.keras.layers.Softmax()) or wrap it so that it returns probabilities."
        )
    return probs


#: Detector classes by ``meta_name``: every subclass of :class:`BaseDetector` that describes
#: itself (``get_config`` / ``from_config``), registered when its class is defined. Saving looks
#: a saved detector's class up here, so a new detector needs no change to saving.
DETECTORS: dict[str, type[BaseDetector]] = {}


class BaseDetector:
    """Common base of all detectors: the ``meta`` dictionary and prediction-dict helpers.

    Subclasses set ``meta_name``, ``detector_type`` and ``online``. A subclass that can be
    saved implements

    * ``get_config() -> dict``: its constructor's arguments (JSON values, numpy arrays, models,
      or a saved detector's ``score``), enough for ``from_config`` to rebuild it;
    * ``from_config(config) -> detector`` (a classmethod) that builds through ``__init__``, so
      the constructor's checks are the only checks;
    * ``get_state() / set_state(state)``: what changes after construction (fit history,
      samples seen, random state, meta), as JSON.
    """

    meta_name: str = "BaseDetector"
    detector_type: str = "unknown"
    online: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "get_config" in vars(cls) and "from_config" in vars(cls):
            DETECTORS[cls.meta_name] = cls

    def __init__(self, data_type: str | None = None) -> None:
        if data_type is not None and not isinstance(data_type, str):
            raise TypeError(f"data_type must be None or a string, got {describe(data_type)}")
        self.meta: dict[str, Any] = {
            "name": self.meta_name,
            "detector_type": self.detector_type,
            "online": self.online,
            "data_type": data_type,
            "version": __version__,
        }

    def _prediction(self, data: dict[str, Any]) -> dict[str, Any]:
        """Wrap ``data`` in the ``{'meta': ..., 'data': ...}`` dictionary of predictions."""
        return {"meta": dict(self.meta), "data": data}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(meta={self.meta!r})"
