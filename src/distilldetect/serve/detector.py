"""Loading a saved detector folder for serving, and the immutable record of what is served.

A :class:`LoadedDetector` is built once per (re)load, fully, off the request path, and then
swapped in by reference: requests that were batched on the previous one finish on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LoadedDetector", "import_factory", "load_folder", "load_reference", "finish_loading"]

logger = logging.getLogger(__name__)

#: Bytes of config.json read to fingerprint a folder (the loader refuses larger ones anyway).
_MAX_CONFIG = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class LoadedDetector:
    """Everything the service needs about one loaded detector (never mutated once served).

    Attributes
    ----------
    ad
        The ModelDistillation scoring instances.
    cd
        The harmful-drift KSDrift on scores, or None (drift monitoring off).
    version
        First 12 hex digits of the SHA-256 of the folder's ``config.json`` (which records the
        SHA-256 of every other file): the same folder content gives the same version.
    input_shape
        Shape of one instance.
    n_classes
        Classes of the models (from a warm-up forward pass).
    threshold
        The ModelDistillation's threshold.
    reference_scores
        The drift detector's reference scores (1-D), or None.
    drift_source
        'folder', 'reference file' or None.
    """

    ad: Any
    cd: Any
    path: str
    version: str
    input_shape: tuple[int, ...]
    n_classes: int
    threshold: float
    reference_scores: np.ndarray | None
    drift_source: str | None
    loaded_at: float
    meta: dict[str, Any]

    @property
    def drift_enabled(self) -> bool:
        return self.cd is not None


def import_factory(spec: str, option: str) -> Callable[[], Any]:
    """The callable named by ``'module:attribute'`` (``option`` names the CLI flag in errors)."""
    from ..models import import_factory as _import_factory

    return _import_factory(spec, option)


def _fingerprint(path: Path) -> str:
    config = path / "config.json"
    try:
        with open(config, "rb") as f:
            data = f.read(_MAX_CONFIG + 1)
    except OSError as err:
        raise ValueError(f"cannot read {config}: {err.strerror or err}") from err
    return hashlib.sha256(data).hexdigest()[:12]


def load_reference(path: str | os.PathLike) -> np.ndarray:
    """Clean reference instances from a ``.npy`` file (never unpickled)."""
    try:
        x = np.load(os.fspath(path), allow_pickle=False, mmap_mode=None)
    except (OSError, ValueError) as err:
        raise ValueError(f"--reference {path}: cannot read a numpy array: {err}") from err
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf" or x.ndim < 2 or len(x) < 2:
        raise ValueError(
            f"--reference {path} must hold a numeric array of at least 2 instances, got "
            f"{getattr(x, 'shape', None)} of dtype {getattr(x, 'dtype', None)}"
        )
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"--reference {path} holds NaN or infinite values")
    return x


def load_folder(
    path: str | os.PathLike,
    *,
    model_factory: Callable[[], Any] | None = None,
    distilled_model_factory: Callable[[], Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    reference: np.ndarray | None = None,
    in_use: tuple[Any, ...] = (),
) -> dict[str, Any]:
    """Load and check a detector folder (no forward pass: that runs on the scoring worker).

    Returns the pieces for :func:`finish_loading`. Raises ``ValueError`` / ``TypeError`` (or
    the loader's :class:`~distilldetect.saving.DetectorFormatError`) naming what is wrong.
    """
    from .. import load_detector
    from ..backends import framework_of
    from ..saving import detector_parts

    folder = Path(os.fspath(path))
    before = _fingerprint(folder)
    kwargs: dict[str, Any] = {}
    for key, factory in (("model", model_factory), ("distilled_model", distilled_model_factory)):
        if factory is None:
            continue
        module = factory()
        # weights are loaded into a module in place: never into the one being served (a
        # black-box callable gets no weights, so the same function may be returned again)
        if framework_of(module) != "callable" and any(module is used for used in in_use):
            raise ValueError(
                f"the --{key.replace('_', '-')} factory returned the module already being "
                "served; it must build a new module on each call (weights are loaded into it)"
            )
        kwargs[key] = module
    detector = load_detector(folder, **kwargs)
    ad, cd = detector_parts(detector)
    after = _fingerprint(folder)
    if after != before:
        raise ValueError(f"{folder} changed while it was being loaded; reload again")
    if ad.threshold is None:
        raise ValueError(
            f"the detector at {folder} has no threshold: call ad.infer_threshold(X_clean) "
            "(or set ad.threshold) before save_detector"
        )
    shape = ad.input_shape
    if input_shape is not None:
        if shape is not None and tuple(shape) != tuple(input_shape):
            raise ValueError(
                f"--input-shape {list(input_shape)} does not match the shape the detector at "
                f"{folder} was fitted on, {list(shape)}"
            )
        shape = tuple(input_shape)
    if shape is None:
        raise ValueError(
            f"the detector at {folder} does not record its input shape (it was not fitted "
            "on raw instances); pass --input-shape, e.g. --input-shape 28,28"
        )
    if cd is not None and reference is not None:
        raise ValueError(
            f"the folder {folder} already holds a drift detector; --reference is for a folder "
            "holding a ModelDistillation only"
        )
    if cd is not None and getattr(cd, "n_features", 1) != 1:
        raise ValueError(
            f"the drift detector at {folder} tests {cd.n_features} features; the monitor "
            "needs one built by ad.drift_detector(x_ref) (a test on scores)"
        )
    if reference is not None and tuple(reference.shape[1:]) != tuple(shape):
        raise ValueError(
            f"--reference instances have shape {list(reference.shape[1:])}, but the detector "
            f"takes instances of shape {list(shape)}"
        )
    return {"ad": ad, "cd": cd, "path": str(folder), "version": after, "input_shape": shape}


def finish_loading(
    parts: dict[str, Any], *, reference: np.ndarray | None = None, p_val: float = 0.05
) -> LoadedDetector:
    """The forward passes of a load (run on the scoring worker): warm-up, drift reference."""
    ad, cd = parts["ad"], parts["cd"]
    # the service owns these models and never changes them: skip the per-call weight checks
    ad.seal()
    shape = tuple(parts["input_shape"])
    x0 = np.zeros((2, *shape), dtype=np.float32)
    _, _, q = ad.score(x0, batch_size=2, return_predictions=True)
    n_classes = int(q.shape[1])
    source = "folder" if cd is not None else None
    if cd is None and reference is not None:
        cd = ad.drift_detector(reference, p_val=p_val)
        source = "reference file"
    ref_scores = None
    if cd is not None:
        ref_scores = np.asarray(cd.x_ref, dtype=np.float64).reshape(-1)
    meta = {k: v for k, v in ad.meta.items() if isinstance(v, (str, int, float, bool))}
    return LoadedDetector(
        ad=ad,
        cd=cd,
        path=parts["path"],
        version=parts["version"],
        input_shape=shape,
        n_classes=n_classes,
        threshold=float(ad.threshold),
        reference_scores=ref_scores,
        drift_source=source,
        loaded_at=time.time(),
        meta=meta,
    )
