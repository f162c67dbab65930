"""Save and load detectors safely: a folder of JSON and safetensors files, never pickle.

:func:`save_detector` and :func:`load_detector` keep alibi-detect's names. Where alibi-detect
writes dill pickles (which run arbitrary code when loaded), a saved detector here is a folder::

    detector/
      config.json                   format version, library version, detector class, settings,
                                    meta, one entry per model, SHA-256 and size of every file
      distilled_model.safetensors   the student's weights (state dict)
      model.safetensors             the teacher's weights (absent for a black-box teacher)
      x_ref.safetensors             KSDrift: the reference data
      preprocess_fn/                KSDrift: the ModelDistillation whose score it tests

Loading never unpickles and never executes code from the folder: ``config.json`` is parsed as
JSON, every file listed in it is checked against its recorded size and SHA-256 *before* it is
parsed, arrays are read with safetensors (a JSON header and raw bytes), and architectures are
rebuilt only by this library's own model builders, by name, from JSON arguments. Any file that
is not what the config says raises :class:`DetectorFormatError` (a ``ValueError``) naming it.

Saving is atomic: everything is written into a temporary sibling folder, flushed to disk, then
renamed into place. An existing detector at the path is replaced whole or not at all.

Model IO per framework
----------------------
This module imports no deep-learning framework. Each framework has a backend IO module,
``distilldetect.backends.<framework>_io`` (``pytorch_io``, ``tensorflow_io``), found by name
with :mod:`importlib`, providing:

``save_model(model, directory: pathlib.Path, name: str) -> dict``
    Write the model's files into ``directory`` (file names start with ``name``, plain names,
    no subfolders), preferably with :func:`write_bytes`, and return a JSON-able *entry* with at
    least ``'name'`` (= ``name``), ``'framework'``, ``'format'`` (e.g. ``'safetensors'``) and
    ``'files'`` (the list of file names written), plus what the loader needs: architecture
    description, tensor names, shapes, dtypes. Raise ``ValueError``/``TypeError`` for a model
    that cannot be saved safely.
``load_model(directory: pathlib.Path, entry: dict, model=None) -> model``
    ``entry`` is what ``save_model`` returned, plus ``'checksums'``:
    ``{file: {'sha256': hex, 'bytes': int}}`` for its files (already verified once by this
    module; a backend that parses bytes it has read itself can re-check them with
    :func:`check_bytes` to close the gap between verification and parsing). With ``model``
    given, load the weights into it, checking names, shapes and dtypes against the entry and
    raising ``ValueError`` naming the file otherwise (never a partial load). Without it, rebuild
    the architecture from the entry or raise ``ValueError`` saying which keyword
    (``model=`` / ``distilled_model=``, i.e. ``entry['name']``) is required.

A black-box teacher (any callable) has no files: its entry records ``framework='callable'``
and :func:`load_detector` requires ``model=``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import math
import numbers
import os
import re
import shutil
import stat
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__
from .base import describe

if TYPE_CHECKING:  # pragma: no cover
    from .ad.model_distillation import ModelDistillation
    from .cd.ks import KSDrift

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "DetectorFormatError",
    "save_detector",
    "load_detector",
    "write_bytes",
    "check_bytes",
    "detector_parts",
]

logger = logging.getLogger(__name__)

#: Value of ``config.json``'s ``format`` key: marks a folder written by :func:`save_detector`.
FORMAT_NAME: str = "distilldetect-detector"
#: Version of the folder layout this library writes; it reads this version and older ones.
FORMAT_VERSION: int = 1
#: Name of the configuration file of a saved detector.
CONFIG_FILE: str = "config.json"
#: Folder (inside a saved KSDrift) holding the ModelDistillation of its ``preprocess_fn``.
PREPROCESS_DIR: str = "preprocess_fn"

_IO_MODULES = {
    "pytorch": "distilldetect.backends.pytorch_io",
    "tensorflow": "distilldetect.backends.tensorflow_io",
}
_DETECTORS = ("ModelDistillation", "KSDrift", "TailRankDrift")
_MAX_CONFIG_BYTES = 64 * 2**20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 2**20

_TOP_KEYS = {"format", "format_version", "library_version", "detector", "settings", "meta", "files"}
_DETECTOR_KEYS = {
    "ModelDistillation": {"models"},
    "KSDrift": {"x_ref", "preprocess_fn"},
    "TailRankDrift": {"x_ref", "preprocess_fn"},
}
_MD_SETTINGS = {
    "threshold",
    "loss_type",
    "temperature",
    "input_shape",
    "history",
    "teacher_framework",
    "student_framework",
}
_MD_ATTRIBUTES = _MD_SETTINGS | {"model", "distilled_model", "meta"}
_KS_SETTINGS = {
    "p_val",
    "x_ref_preprocessed",
    "preprocess_at_init",
    "update_x_ref",
    "correction",
    "alternative",
    "n_features",
    "input_shape",
    "n",
    "seed",
    "rng_state",
}
_KS_ATTRIBUTES = (_KS_SETTINGS - {"rng_state"}) | {"x_ref", "preprocess_fn", "rng", "meta"}
#: Keyword arguments of ``ModelDistillation.score`` that a saved ``preprocess_fn`` may bind.
_SCORE_KEYWORDS = {"batch_size"}
#: Dtypes of a KSDrift reference that safetensors stores.
_ARRAY_DTYPES = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
}


class DetectorFormatError(ValueError):
    """A saved detector's folder is not what its ``config.json`` says (or not a detector)."""


# ============================================================================ low-level file IO
def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` (never overwriting) and flush it to disk.

    Backends use it for the files of a model so that all writes of a save go through one
    place.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.bin"
    >>> write_bytes(p, b"abc")
    >>> p.read_bytes()
    b'abc'
    """
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def check_bytes(data: bytes, expected: dict[str, Any], path: Path | str) -> None:
    """Raise :class:`DetectorFormatError` unless ``data`` has the size and SHA-256 in ``expected``.

    Parameters
    ----------
    data
        The bytes of a file, as read.
    expected
        ``{'sha256': hex digest, 'bytes': size}`` as recorded in ``config.json``.
    path
        The file, for the error message.

    Examples
    --------
    >>> digest = hashlib.sha256(b"abc").hexdigest()
    >>> check_bytes(b"abc", {"sha256": digest, "bytes": 3}, "a.bin")
    """
    if len(data) != expected["bytes"]:
        raise DetectorFormatError(
            f"{path} has {len(data)} bytes but {CONFIG_FILE} records {expected['bytes']}: the "
            "file is truncated or was replaced"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected["sha256"]:
        raise DetectorFormatError(
            f"{path} does not match the SHA-256 recorded in {CONFIG_FILE} (expected "
            f"{expected['sha256']}, got {digest}): the file was modified or replaced"
        )


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry to disk (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def _hash_and_sync(path: Path) -> dict[str, Any]:
    """SHA-256 and size of a file just written; also flushes it to disk."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "r+b") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size}


def _file_table(directory: Path) -> list[dict[str, Any]]:
    """``[{file, sha256, bytes}]`` for every file under ``directory`` except its config.json."""
    table = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(directory).as_posix()
            if rel == CONFIG_FILE:
                continue
            table.append({"file": rel, **_hash_and_sync(path)})
        _fsync_dir(Path(root))
    return table


# ==================================================================================== saving
def save_detector(
    detector: ModelDistillation | KSDrift, filepath: str | os.PathLike, legacy: bool = False
) -> None:
    """Save a :class:`~distilldetect.ModelDistillation` or :class:`~distilldetect.KSDrift`.

    The detector is written as a folder of JSON and safetensors files (see the module
    documentation), atomically: into a temporary sibling folder first, then renamed into place.
    A detector already saved at ``filepath`` is replaced whole, or left untouched if saving
    fails; any other existing, non-empty folder is never replaced.

    What is saved:

    * ModelDistillation: threshold, temperature, loss_type, input_shape, training history, meta
      and the weights of both models. Models of this library's zoo
      (:mod:`distilldetect.models`) are also saved with their builder name and arguments, so
      that :func:`load_detector` rebuilds them; for other modules :func:`load_detector` needs
      ``model=`` / ``distilled_model=`` (an architecture is code, and every format storing
      code for arbitrary torch modules — pickle, ``torch.export`` — can run code on load). A
      black-box teacher (any callable) is not saved: pass it again to :func:`load_detector`.
    * KSDrift: the reference ``x_ref``, all settings, the reservoir-sampling random state and
      meta. ``preprocess_fn`` must be None or a ModelDistillation's ``score``
      (``ad.score`` or ``functools.partial(ad.score, batch_size=...)``, as made by
      ``ad.drift_detector``), which is saved with it; other callables cannot be saved.

    Parameters
    ----------
    detector
        The detector to save.
    filepath
        Folder to create or replace. Missing parent folders are created.
    legacy
        Accepted for compatibility with alibi-detect; ``True`` (its pickle format) is refused.

    Raises
    ------
    TypeError
        If ``detector`` is not a ModelDistillation or KSDrift.
    ValueError
        If part of the detector cannot be saved (a ``preprocess_fn`` that is not a detector's
        score, meta that is not JSON, a model with non-tensor state), or ``filepath`` holds
        something other than a saved detector. Nothing is written then.

    Examples
    --------
    >>> save_detector(ad, "detectors/fashion")  # doctest: +SKIP
    >>> ad2 = load_detector("detectors/fashion")  # doctest: +SKIP
    """
    if legacy is not False:
        raise ValueError(
            "legacy=True asks for alibi-detect's legacy format (dill pickles), which "
            "distilldetect never writes: loading a pickle can run arbitrary code"
        )
    target = _check_target(filepath)
    _check_savable(detector, "detector")

    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(target, "tmp", create=True)
    try:
        _write_detector(detector, tmp)
        _fsync_dir(tmp)
        _commit(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved %s to %s", type(detector).__name__, target)


def _check_target(filepath: Any) -> Path:
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(f"filepath must be a str or path, got {describe(filepath)}")
    target = Path(os.path.abspath(os.fspath(filepath)))
    if target.name in ("", ".", ".."):
        raise ValueError(f"filepath must name a folder to create, got {os.fspath(filepath)!r}")
    if os.path.islink(target):
        raise ValueError(
            f"filepath {target} is a symbolic link; save to the folder it points to instead"
        )
    if target.exists():
        if not target.is_dir():
            raise ValueError(
                f"filepath {target} exists and is not a folder; refusing to replace it"
            )
        if any(target.iterdir()) and not _is_saved_detector(target):
            raise ValueError(
                f"filepath {target} is a non-empty folder that does not hold a saved "
                "distilldetect detector; refusing to replace it (choose a new or empty folder)"
            )
    return target


def _is_saved_detector(directory: Path) -> bool:
    config = directory / CONFIG_FILE
    try:
        if not stat.S_ISREG(os.lstat(config).st_mode) or config.stat().st_size > _MAX_CONFIG_BYTES:
            return False
        data = json.loads(config.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def _new_sibling(target: Path, tag: str, *, create: bool) -> Path:
    """A unique unused name beside ``target`` (hidden); created as a folder when ``create``."""
    for _ in range(100):
        path = target.with_name(f".{target.name}.{tag}-{uuid.uuid4().hex[:12]}")
        if create:
            try:
                os.mkdir(path)
            except FileExistsError:  # pragma: no cover - astronomically unlikely
                continue
            return path
        if not os.path.lexists(path):
            return path
    raise RuntimeError(f"could not find a free temporary name beside {target}")  # pragma: no cover


def _commit(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target``, replacing an old detector whole."""
    parent = target.parent
    if not os.path.lexists(target):
        os.rename(tmp, target)
        _fsync_dir(parent)
        return
    aside = _new_sibling(target, "old", create=False)
    os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException:
        try:
            os.rename(aside, target)
        except OSError:  # pragma: no cover - only if the file system fails twice
            logger.error("could not restore the previous detector; it is at %s", aside)
        raise
    _fsync_dir(parent)
    shutil.rmtree(aside, ignore_errors=True)
    if os.path.lexists(aside):  # pragma: no cover
        logger.warning("could not remove the replaced detector at %s", aside)


# ------------------------------------------------------------------------ checks before writing
def _detector_name(detector: Any, name: str) -> str:
    from .ad.model_distillation import ModelDistillation
    from .cd.ks import KSDrift
    from .cd.tail_rank import TailRankDrift

    for cls in (ModelDistillation, KSDrift, TailRankDrift):
        if type(detector) is cls:
            return cls.__name__
        if isinstance(detector, cls):
            raise TypeError(
                f"{name} is a {type(detector).__name__}, a subclass of {cls.__name__}: only "
                f"{cls.__name__} itself can be saved (a subclass may compute other scores, and "
                "its code cannot be saved without pickle)"
            )
    raise TypeError(
        f"{name} must be a ModelDistillation or a KSDrift (or a TailRankDrift), got "
        f"{describe(detector)}"
    )


def _check_savable(detector: Any, name: str) -> None:
    """Everything that can be checked before a file is written."""
    kind = _detector_name(detector, name)
    _check_json(detector.meta, f"{name}.meta")
    if kind == "TailRankDrift":
        _check_json(detector.get_config(), f"{name}.get_config()")
        _reference_array(detector.x_ref, f"{name}.x_ref")
        preprocess = _preprocess_reference(detector.preprocess_fn, f"{name}.preprocess_fn")
        if preprocess is not None:
            _check_savable(preprocess[0], f"the ModelDistillation of {name}.preprocess_fn")
        return
    known = _MD_ATTRIBUTES if kind == "ModelDistillation" else _KS_ATTRIBUTES
    unknown = sorted(set(vars(detector)) - known)
    if unknown:
        logger.warning("%s has attributes that are not saved: %s", type(detector).__name__, unknown)
    if kind == "ModelDistillation":
        _check_json(detector.history, f"{name}.history")
        return
    _check_json(detector.update_x_ref, f"{name}.update_x_ref")
    _check_json(detector.rng_state, f"{name}.rng_state")
    _reference_array(detector.x_ref, f"{name}.x_ref")
    preprocess = _preprocess_reference(detector.preprocess_fn, f"{name}.preprocess_fn")
    if preprocess is not None:
        _check_savable(preprocess[0], f"the ModelDistillation of {name}.preprocess_fn")


def _check_json(value: Any, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is plain JSON data (tuples allowed, become lists)."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{name}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{name} has a key {key!r} that is not a string; cannot save it")
            _check_json(item, f"{name}[{key!r}]")
        return
    raise ValueError(
        f"{name} is {describe(value)}, which cannot be saved: saved detectors hold only JSON "
        "data (str, int, float, bool, None, lists and dicts)"
    )


def _reference_array(x: Any, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array to be saved, got {describe(x)}")
    if x.dtype.name not in _ARRAY_DTYPES:
        raise ValueError(
            f"{name} has dtype {x.dtype}, which cannot be saved; supported: {sorted(_ARRAY_DTYPES)}"
        )
    return x


def _preprocess_reference(fn: Any, name: str) -> tuple[Any, str, dict[str, Any]] | None:
    """``(ModelDistillation, 'method' | 'partial', keywords)`` for a savable preprocess_fn."""
    if fn is None:
        return None
    from .ad.model_distillation import ModelDistillation

    call, keywords, target = "method", {}, fn
    if isinstance(fn, functools.partial):
        call, keywords, target = "partial", dict(fn.keywords), fn.func
        if fn.args:
            keywords = None  # type: ignore[assignment]
    owner = getattr(target, "__self__", None)
    is_score = (
        type(owner) is ModelDistillation
        and getattr(target, "__func__", None) is ModelDistillation.score
    )
    bad_keywords = (
        keywords is None
        or set(keywords) - _SCORE_KEYWORDS
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in keywords.values())
    )
    if not is_score or bad_keywords:
        raise ValueError(
            f"{name} ({describe(fn)}) cannot be saved: only None, a ModelDistillation's score "
            "(ad.score) or functools.partial(ad.score, batch_size=n) can be, because saving "
            "any other function would mean saving code, which only pickle does and loading "
            "pickle can run arbitrary code. Set preprocess_fn=None before saving, or build "
            "the KSDrift with ad.drift_detector(x_ref)"
        )
    return owner, call, keywords


def detector_parts(detector: Any) -> tuple[ModelDistillation, KSDrift | None]:
    """The ModelDistillation of a detector, and its harmful-drift detector if it is one.

    A saved folder holds either a ModelDistillation, or a drift detector built by
    ``ad.drift_detector`` whose ``preprocess_fn`` is that ModelDistillation's ``score``. The
    service and batch scoring need both halves: the instance scores come from the first, the
    drift test on those scores from the second (``predict(scores, preprocessed=True)``).

    Examples
    --------
    >>> ad, cd = detector_parts(load_detector("detectors/fashion-drift"))  # doctest: +SKIP
    """
    from .ad.model_distillation import ModelDistillation
    from .cd.ks import KSDrift
    from .cd.tail_rank import TailRankDrift

    if isinstance(detector, ModelDistillation):
        return detector, None
    if isinstance(detector, (KSDrift, TailRankDrift)):
        ref = _preprocess_reference(detector.preprocess_fn, "detector.preprocess_fn")
        if ref is None:
            raise ValueError(
                f"detector is a {type(detector).__name__} without a ModelDistillation "
                "(preprocess_fn is None): "
                "there are no instance scores to compute"
            )
        return ref[0], detector
    raise TypeError(
        "detector must be a ModelDistillation or a KSDrift (or a TailRankDrift), got "
        f"{describe(detector)}"
    )


# ---------------------------------------------------------------------------------- writing
def _write_detector(detector: Any, directory: Path) -> None:
    """Write the files of ``detector`` and its config.json into the existing ``directory``."""
    kind = _detector_name(detector, "detector")
    config: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "detector": kind,
    }
    if kind == "ModelDistillation":
        config.update(_write_model_distillation(detector, directory))
    elif kind == "TailRankDrift":
        config.update(_write_tail_rank(detector, directory))
    else:
        config.update(_write_ks_drift(detector, directory))
    config["meta"] = detector.meta
    config["files"] = _file_table(directory)
    text = json.dumps(config, indent=2)
    write_bytes(directory / CONFIG_FILE, text.encode("utf-8"))


def _io_module(framework: str) -> Any:
    module = _IO_MODULES[framework]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ValueError(
            f"saving and loading {framework} models needs {module} and {framework} "
            f"(the '{framework}' extra of distilldetect): {err}"
        ) from err


def _callable_description(fn: Any) -> str:
    """``module.qualname`` of a black-box teacher, for messages (never imported)."""
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType):  # a bound method
        cls = type(owner)
        return f"{cls.__module__}.{cls.__qualname__}.{getattr(fn, '__name__', '?')}"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', None) or type(fn).__qualname__}"


def _write_model_distillation(ad: Any, directory: Path) -> dict[str, Any]:
    from .backends import framework_of

    models: dict[str, Any] = {}
    for name in ("distilled_model", "model"):
        model = getattr(ad, name)
        framework = framework_of(model)
        if framework == "callable":
            models[name] = {
                "name": name,
                "framework": "callable",
                "format": "none",
                "files": [],
                "class": _callable_description(model),
            }
            continue
        entry = _io_module(framework).save_model(model, directory, name)
        if not isinstance(entry, dict) or entry.get("name") != name:
            raise RuntimeError(f"the {framework} backend returned an invalid entry for {name}")
        models[name] = entry
    settings = {
        "threshold": ad.threshold,
        "loss_type": ad.loss_type,
        "temperature": ad.temperature,
        "input_shape": None if ad.input_shape is None else list(ad.input_shape),
        "history": ad.history,
        "teacher_framework": ad.teacher_framework,
        "student_framework": ad.student_framework,
    }
    return {"settings": settings, "models": models}


def _write_ks_drift(cd: Any, directory: Path) -> dict[str, Any]:
    import safetensors.numpy

    x_ref = _reference_array(cd.x_ref, "x_ref")
    array = np.ascontiguousarray(x_ref)
    file = "x_ref.safetensors"
    write_bytes(directory / file, safetensors.numpy.save({"x_ref": array}))
    preprocess = _preprocess_reference(cd.preprocess_fn, "preprocess_fn")
    preprocess_entry = None
    if preprocess is not None:
        ad, call, keywords = preprocess
        sub = directory / PREPROCESS_DIR
        os.mkdir(sub)
        _write_detector(ad, sub)
        preprocess_entry = {
            "type": "ModelDistillation.score",
            "directory": PREPROCESS_DIR,
            "call": call,
            "keywords": keywords,
        }
    settings = {
        "p_val": cd.p_val,
        "x_ref_preprocessed": cd.x_ref_preprocessed,
        "preprocess_at_init": cd.preprocess_at_init,
        "update_x_ref": cd.update_x_ref,
        "correction": cd.correction,
        "alternative": cd.alternative,
        "n_features": cd.n_features,
        "input_shape": None if cd.input_shape is None else list(cd.input_shape),
        "n": cd.n,
        "seed": cd.seed,
        "rng_state": cd.rng_state,
    }
    x_entry = {"file": file, "dtype": array.dtype.name, "shape": list(array.shape)}
    return {"settings": settings, "x_ref": x_entry, "preprocess_fn": preprocess_entry}


# =================================================================================== loading
def load_detector(filepath: str | os.PathLike, **kwargs: Any) -> ModelDistillation | KSDrift:
    """Load a detector saved by :func:`save_detector`, safely.

    Nothing in the folder is executed or unpickled: ``config.json`` is read as JSON, every file
    is checked against its recorded size and SHA-256 before being parsed, weights and arrays
    are read as safetensors, and only this library's own model builders are called.

    Parameters
    ----------
    filepath
        The folder written by :func:`save_detector`.
    model
        (keyword) The teacher. Required when the saved teacher was a black-box callable (any
        callable is accepted) or a torch module outside this library's model zoo (a module of
        the same architecture, into which the saved weights are loaded in place). When given
        for a saved zoo model, the weights are loaded into it instead of a rebuilt model.
    distilled_model
        (keyword) The student, likewise: required for a student outside the model zoo.
    enable_unsafe_loading
        (keyword) Accepted for compatibility with alibi-detect; ``True`` is refused.

    For a saved KSDrift whose ``preprocess_fn`` is a ModelDistillation's score, ``model`` and
    ``distilled_model`` go to that ModelDistillation.

    Returns
    -------
    ModelDistillation or KSDrift
        The detector, with the saved settings, threshold, meta and weights.

    Raises
    ------
    DetectorFormatError
        (a ``ValueError``) if a file is missing, modified, truncated, of the wrong type, or the
        config is invalid or from a newer format version; the message names the file.
    ValueError
        If a required ``model=`` / ``distilled_model=`` is missing, or a given module does not
        match the saved weights (names, shapes, dtypes).

    Examples
    --------
    >>> ad = load_detector("detectors/fashion")  # doctest: +SKIP
    >>> ad = load_detector("detectors/blackbox", model=clf.predict_proba)  # doctest: +SKIP
    """
    allowed = {"model", "distilled_model", "enable_unsafe_loading"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"load_detector got unexpected keyword arguments {unknown}; accepted: {sorted(allowed)}"
        )
    if kwargs.pop("enable_unsafe_loading", False) is not False:
        raise ValueError(
            "enable_unsafe_loading=True is refused: distilldetect never loads pickles or runs "
            "code from a saved detector"
        )
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(f"filepath must be a str or path, got {describe(filepath)}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    detector, used = _load_directory(Path(os.fspath(filepath)), given)
    unused = sorted(set(given) - used)
    if unused:
        raise ValueError(
            f"{', '.join(k + '=' for k in unused)} given, but the {type(detector).__name__} "
            f"saved at {filepath} has no such model"
        )
    return detector


def _load_directory(
    directory: Path, given: dict[str, Any], expected: str | None = None
) -> tuple[Any, set[str]]:
    _check_directory(directory)
    config = _read_config(directory)
    if expected is not None and config["detector"] != expected:
        raise DetectorFormatError(
            f"{directory / CONFIG_FILE} must hold a {expected}, got {config['detector']!r}"
        )
    files = _verify_files(directory, config["files"])
    if config["detector"] == "ModelDistillation":
        return _load_model_distillation(directory, config, files, given), set(given)
    if config["detector"] == "TailRankDrift":
        return _load_tail_rank(directory, config, files, given)
    return _load_ks_drift(directory, config, files, given)


def _check_directory(directory: Path) -> None:
    if not directory.exists():
        hint = ""
        if directory.parent.is_dir():
            aside = sorted(directory.parent.glob(f".{directory.name}.old-*"))
            if aside:
                hint = (
                    f"; a save over it was interrupted: the previous detector is at {aside[-1]} "
                    "(rename it back)"
                )
        raise FileNotFoundError(f"no saved detector at {directory}{hint}")
    if not directory.is_dir():
        raise DetectorFormatError(f"{directory} is not a folder written by save_detector")
    if not (directory / CONFIG_FILE).exists():
        legacy = [n for n in ("meta.dill", "meta.pickle") if (directory / n).exists()]
        if legacy:
            raise DetectorFormatError(
                f"{directory} holds an alibi-detect detector saved as pickles ({legacy[0]}); "
                "distilldetect never loads pickles, which can run arbitrary code. Rebuild the "
                "detector and save it with distilldetect.save_detector"
            )
        raise DetectorFormatError(f"{directory / CONFIG_FILE} is missing: not a saved detector")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _regular_file(path: Path, what: str) -> os.stat_result:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise DetectorFormatError(f"{path} is missing ({what})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DetectorFormatError(f"{path} is not a regular file (a link or folder?); {what}")
    return st


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    st = _regular_file(path, "the detector's configuration")
    if st.st_size > _MAX_CONFIG_BYTES:
        raise DetectorFormatError(
            f"{path} is {st.st_size} bytes, more than a detector config can be "
            f"({_MAX_CONFIG_BYTES}); not a saved detector"
        )
    raw = path.read_bytes()
    try:
        config = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise DetectorFormatError(f"{path} is not a valid JSON detector config: {err}") from None
    if not isinstance(config, dict):
        raise DetectorFormatError(f"{path} must hold a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT_NAME:
        raise DetectorFormatError(
            f"{path} is not a distilldetect detector config: 'format' is "
            f"{config.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DetectorFormatError(
            f"{path}: 'format_version' must be an integer >= 1, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise DetectorFormatError(
            f"{path} was saved by a newer distilldetect (format version {version}, library "
            f"version {config.get('library_version')!r}); this distilldetect {__version__} "
            f"reads format versions up to {FORMAT_VERSION}. Upgrade distilldetect to load it"
        )
    detector = config.get("detector")
    if detector not in _DETECTORS:
        raise DetectorFormatError(
            f"{path}: unknown detector {detector!r}; expected one of {list(_DETECTORS)}"
        )
    _check_keys(config, _TOP_KEYS | _DETECTOR_KEYS[detector], path, "the config")
    if not isinstance(config["library_version"], str):
        raise DetectorFormatError(f"{path}: 'library_version' must be a string")
    for key in ("settings", "meta"):
        if not isinstance(config[key], dict):
            raise DetectorFormatError(f"{path}: {key!r} must be a JSON object")
    if config["meta"].get("name") != detector:
        raise DetectorFormatError(
            f"{path}: meta['name'] is {config['meta'].get('name')!r} but the detector is "
            f"{detector!r}"
        )
    return config


def _check_keys(obj: Any, expected: set[str], path: Path, what: str) -> None:
    if not isinstance(obj, dict):
        raise DetectorFormatError(f"{path}: {what} must be a JSON object, got {describe(obj)}")
    missing = sorted(expected - set(obj))
    extra = sorted(set(obj) - expected)
    if missing or extra:
        raise DetectorFormatError(
            f"{path}: {what} has missing keys {missing} and unknown keys {extra}; expected "
            f"exactly {sorted(expected)}"
        )


def _safe_path(directory: Path, rel: Any, config_path: Path) -> Path:
    """``directory / rel`` for a plain relative name (at most one subfolder, no links)."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or len(parts) > 2 or not all(_SAFE_NAME.match(p) for p in parts):
        raise DetectorFormatError(
            f"{config_path}: {rel!r} is not an allowed file name (plain names of letters, "
            "digits, '_', '-', '.', inside the detector's folder)"
        )
    path = directory
    for part in parts[:-1]:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise DetectorFormatError(f"{path} is missing (listed in {config_path})") from None
        if not stat.S_ISDIR(mode):
            raise DetectorFormatError(f"{path} must be a plain folder (not a link)")
    return path / parts[-1]


def _verify_files(directory: Path, table: Any) -> dict[str, dict[str, Any]]:
    """Check every listed file's size and SHA-256; return ``{file: {sha256, bytes}}``."""
    config_path = directory / CONFIG_FILE
    if not isinstance(table, list):
        raise DetectorFormatError(f"{config_path}: 'files' must be a list")
    files: dict[str, dict[str, Any]] = {}
    for item in table:
        _check_keys(item, {"file", "sha256", "bytes"}, config_path, "each 'files' item")
        rel, sha, size = item["file"], item["sha256"], item["bytes"]
        path = _safe_path(directory, rel, config_path)
        if rel in files or rel == CONFIG_FILE:
            raise DetectorFormatError(f"{config_path}: {rel!r} is listed twice in 'files'")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise DetectorFormatError(f"{config_path}: the sha256 of {rel!r} is not a hex digest")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise DetectorFormatError(f"{config_path}: the size of {rel!r} is not a byte count")
        st = _regular_file(path, f"listed in {config_path}")
        expected = {"sha256": sha, "bytes": size}
        if st.st_size != size:
            raise DetectorFormatError(
                f"{path} has {st.st_size} bytes but {CONFIG_FILE} records {size}: the file is "
                "truncated or was replaced"
            )
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha:
            raise DetectorFormatError(
                f"{path} does not match the SHA-256 recorded in {CONFIG_FILE} (expected {sha}, "
                f"got {digest.hexdigest()}): the file was modified or replaced"
            )
        files[rel] = expected
    listed = set(files) | {CONFIG_FILE}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            rel = (Path(root) / name).relative_to(directory).as_posix()
            if rel not in listed:
                logger.warning("%s is not listed in %s; ignored", Path(root) / name, config_path)
    return files


def _read_verified(directory: Path, rel: str, files: dict[str, dict[str, Any]]) -> bytes:
    """The bytes of a listed file, checked again against its checksum (no race with parsing)."""
    config_path = directory / CONFIG_FILE
    if rel not in files:
        raise DetectorFormatError(f"{config_path}: {rel!r} is used but not listed in 'files'")
    path = _safe_path(directory, rel, config_path)
    _regular_file(path, f"listed in {config_path}")
    data = path.read_bytes()
    check_bytes(data, files[rel], path)
    return data


# ----------------------------------------------------------------------- ModelDistillation
def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_shape_setting(value: Any, path: Path, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value
    ):
        raise DetectorFormatError(f"{path}: settings[{name!r}] must be a list of sizes or null")
    return tuple(value)


def _load_model_distillation(
    directory: Path, config: dict[str, Any], files: dict[str, Any], given: dict[str, Any]
) -> Any:
    from .ad.model_distillation import ModelDistillation
    from .losses import LOSS_TYPES

    path = directory / CONFIG_FILE
    s = config["settings"]
    _check_keys(s, _MD_SETTINGS, path, "'settings'")
    threshold = s["threshold"]
    if threshold is not None and not (_is_real(threshold) and math.isfinite(threshold)):
        raise DetectorFormatError(f"{path}: settings['threshold'] must be a finite number or null")
    if s["loss_type"] not in LOSS_TYPES:
        raise DetectorFormatError(f"{path}: settings['loss_type'] must be one of {LOSS_TYPES}")
    temperature = s["temperature"]
    if not (_is_real(temperature) and math.isfinite(temperature) and temperature > 0):
        raise DetectorFormatError(f"{path}: settings['temperature'] must be a number > 0")
    input_shape = _check_shape_setting(s["input_shape"], path, "input_shape")
    history = s["history"]
    if not isinstance(history, list) or not all(
        isinstance(h, dict) and all(v is None or _is_real(v) for v in h.values()) for h in history
    ):
        raise DetectorFormatError(f"{path}: settings['history'] must be a list of objects")

    models = config["models"]
    _check_keys(models, {"model", "distilled_model"}, path, "'models'")
    student = _load_model(directory, models["distilled_model"], "distilled_model", files, given)
    teacher = _load_model(directory, models["model"], "model", files, given)
    meta = config["meta"]
    ad = ModelDistillation(
        threshold=threshold,
        distilled_model=student,
        model=teacher,
        loss_type=s["loss_type"],
        temperature=temperature,
        data_type=meta.get("data_type") if isinstance(meta.get("data_type"), str) else None,
    )
    ad.input_shape = input_shape
    ad.history = history
    backends = {"backend": ad.meta["backend"], "teacher_backend": ad.meta["teacher_backend"]}
    ad.meta = {**meta, **backends}
    return ad


def _load_model(
    directory: Path,
    entry: Any,
    name: str,
    files: dict[str, Any],
    given: dict[str, Any],
) -> Any:
    path = directory / CONFIG_FILE
    if not isinstance(entry, dict) or entry.get("name") != name:
        raise DetectorFormatError(f"{path}: models[{name!r}] is not a valid model entry")
    framework = entry.get("framework")
    model = given.get(name)
    if framework == "callable":
        _check_keys(entry, {"name", "framework", "format", "files", "class"}, path, name)
        if model is None:
            raise ValueError(
                f"the detector at {directory} was saved with a black-box {name} "
                f"({entry['class']}), which cannot be saved; pass it again: "
                f"load_detector(..., {name}=...)"
            )
        if not callable(model):
            raise TypeError(f"{name} must be callable, got {describe(model)}")
        return model
    if framework not in _IO_MODULES:
        raise DetectorFormatError(
            f"{path}: models[{name!r}] has unknown framework {framework!r}; expected one of "
            f"{sorted(_IO_MODULES) + ['callable']}"
        )
    entry_files = entry.get("files")
    if not isinstance(entry_files, list) or not entry_files:
        raise DetectorFormatError(f"{path}: models[{name!r}]['files'] must be a non-empty list")
    for rel in entry_files:
        if not isinstance(rel, str) or "/" in rel or rel not in files:
            raise DetectorFormatError(
                f"{path}: models[{name!r}] uses {rel!r}, which is not listed in 'files'"
            )
    checked = {**entry, "checksums": {rel: files[rel] for rel in entry_files}}
    return _io_module(framework).load_model(directory, checked, model=model)


# --------------------------------------------------------------------------------- KSDrift
def _load_array(directory: Path, entry: Any, files: dict[str, Any]) -> np.ndarray:
    import safetensors.numpy

    path = directory / CONFIG_FILE
    _check_keys(entry, {"file", "dtype", "shape"}, path, "'x_ref'")
    rel = entry["file"]
    if not isinstance(rel, str):
        raise DetectorFormatError(f"{path}: x_ref['file'] must be a file name")
    data = _read_verified(directory, rel, files)
    file_path = directory / rel
    try:
        arrays = safetensors.numpy.load(data)
    except Exception as err:  # safetensors raises its own error types
        raise DetectorFormatError(f"{file_path} is not a valid safetensors file: {err}") from None
    if set(arrays) != {"x_ref"}:
        raise DetectorFormatError(f"{file_path} must hold one array 'x_ref', got {sorted(arrays)}")
    x = arrays["x_ref"]
    if x.dtype.name != entry["dtype"] or list(x.shape) != entry["shape"]:
        raise DetectorFormatError(
            f"{file_path} holds an array of dtype {x.dtype} and shape {list(x.shape)}, but "
            f"{CONFIG_FILE} says dtype {entry['dtype']} and shape {entry['shape']}"
        )
    return np.array(x)  # writeable, owns its memory


def _load_ks_drift(
    directory: Path, config: dict[str, Any], files: dict[str, Any], given: dict[str, Any]
) -> tuple[Any, set[str]]:
    from .cd.ks import KSDrift

    path = directory / CONFIG_FILE
    s = config["settings"]
    _check_keys(s, _KS_SETTINGS, path, "'settings'")
    for key in ("x_ref_preprocessed", "preprocess_at_init"):
        if not isinstance(s[key], bool):
            raise DetectorFormatError(f"{path}: settings[{key!r}] must be true or false")
    for key, minimum in (("n_features", 1), ("n", 0)):
        value = s[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DetectorFormatError(f"{path}: settings[{key!r}] must be an integer >= {minimum}")
    if not isinstance(s["rng_state"], dict):
        raise DetectorFormatError(f"{path}: settings['rng_state'] must be a JSON object")
    input_shape = _check_shape_setting(s["input_shape"], path, "input_shape")
    x_ref = _load_array(directory, config["x_ref"], files)

    preprocess_fn: Callable | None = None
    used: set[str] = set()
    entry = config["preprocess_fn"]
    if entry is not None:
        _check_keys(entry, {"type", "directory", "call", "keywords"}, path, "'preprocess_fn'")
        if entry["type"] != "ModelDistillation.score" or entry["directory"] != PREPROCESS_DIR:
            raise DetectorFormatError(
                f"{path}: preprocess_fn must be a 'ModelDistillation.score' saved in "
                f"{PREPROCESS_DIR!r}, got {entry['type']!r} in {entry['directory']!r}"
            )
        keywords = entry["keywords"]
        if (
            entry["call"] not in ("method", "partial")
            or not isinstance(keywords, dict)
            or set(keywords) - _SCORE_KEYWORDS
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in keywords.values())
        ):
            raise DetectorFormatError(f"{path}: preprocess_fn has invalid 'call' or 'keywords'")
        sub = _safe_path(directory, PREPROCESS_DIR + "/" + CONFIG_FILE, path).parent
        if (PREPROCESS_DIR + "/" + CONFIG_FILE) not in files:
            raise DetectorFormatError(
                f"{path}: {PREPROCESS_DIR}/{CONFIG_FILE} is not listed in 'files'"
            )
        ad, used = _load_directory(sub, given, expected="ModelDistillation")
        if entry["call"] == "partial":
            preprocess_fn = functools.partial(ad.score, **keywords)
        else:
            preprocess_fn = ad.score

    meta = config["meta"]
    try:
        cd = KSDrift(
            x_ref,
            p_val=s["p_val"],
            update_x_ref=s["update_x_ref"],
            correction=s["correction"],
            alternative=s["alternative"],
            input_shape=input_shape,
            data_type=meta.get("data_type") if isinstance(meta.get("data_type"), str) else None,
            seed=s["seed"],
        )
        # The reference is stored as it was (preprocessed or not): restore it without running
        # preprocess_fn again, then the settings that the constructor would have derived.
        cd.x_ref_preprocessed = s["x_ref_preprocessed"]
        cd.preprocess_at_init = s["preprocess_at_init"]
        cd.preprocess_fn = preprocess_fn
        cd.n_features = s["n_features"]
        cd.n = s["n"]
        cd.rng_state = s["rng_state"]
    except (TypeError, ValueError, KeyError) as err:
        raise DetectorFormatError(f"{path}: invalid KSDrift settings: {err}") from err
    if cd._ref_is_preprocessed and int(np.prod(x_ref.shape[1:])) != cd.n_features:
        raise DetectorFormatError(
            f"{path}: n_features is {cd.n_features} but the saved reference has "
            f"{int(np.prod(x_ref.shape[1:]))} features per instance"
        )
    cd.meta = dict(meta)
    return cd, used


# --------------------------------------------------------------------------- TailRankDrift
def _write_tail_rank(cd: Any, directory: Path) -> dict[str, Any]:
    """The reference scores, the detector's own config (``get_config``) and its preprocess_fn."""
    import safetensors.numpy

    array = np.ascontiguousarray(_reference_array(cd.x_ref, "x_ref"))
    file = "x_ref.safetensors"
    write_bytes(directory / file, safetensors.numpy.save({"x_ref": array}))
    preprocess = _preprocess_reference(cd.preprocess_fn, "preprocess_fn")
    preprocess_entry = None
    if preprocess is not None:
        ad, call, keywords = preprocess
        sub = directory / PREPROCESS_DIR
        os.mkdir(sub)
        _write_detector(ad, sub)
        preprocess_entry = {
            "type": "ModelDistillation.score",
            "directory": PREPROCESS_DIR,
            "call": call,
            "keywords": keywords,
        }
    x_entry = {"file": file, "dtype": array.dtype.name, "shape": list(array.shape)}
    return {"settings": cd.get_config(), "x_ref": x_entry, "preprocess_fn": preprocess_entry}


def _load_tail_rank(
    directory: Path, config: dict[str, Any], files: dict[str, Any], given: dict[str, Any]
) -> tuple[Any, set[str]]:
    """Rebuild a TailRankDrift through ``from_config`` (so its constructor's checks apply)."""
    from .cd.tail_rank import TailRankDrift

    path = directory / CONFIG_FILE
    x_ref = _load_array(directory, config["x_ref"], files)
    preprocess_fn: Callable | None = None
    used: set[str] = set()
    entry = config["preprocess_fn"]
    if entry is not None:
        _check_keys(entry, {"type", "directory", "call", "keywords"}, path, "'preprocess_fn'")
        keywords = entry["keywords"]
        if (
            entry["type"] != "ModelDistillation.score"
            or entry["directory"] != PREPROCESS_DIR
            or entry["call"] not in ("method", "partial")
            or not isinstance(keywords, dict)
            or set(keywords) - _SCORE_KEYWORDS
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in keywords.values())
        ):
            raise DetectorFormatError(f"{path}: invalid 'preprocess_fn' entry")
        if (PREPROCESS_DIR + "/" + CONFIG_FILE) not in files:
            raise DetectorFormatError(
                f"{path}: {PREPROCESS_DIR}/{CONFIG_FILE} is not listed in 'files'"
            )
        sub = _safe_path(directory, PREPROCESS_DIR + "/" + CONFIG_FILE, path).parent
        ad, used = _load_directory(sub, given, expected="ModelDistillation")
        preprocess_fn = (
            functools.partial(ad.score, **keywords) if entry["call"] == "partial" else ad.score
        )
    try:
        cd = TailRankDrift.from_config(config["settings"], x_ref, preprocess_fn)
    except (TypeError, ValueError) as err:
        raise DetectorFormatError(f"{path}: invalid TailRankDrift settings: {err}") from err
    cd.meta = dict(config["meta"])
    return cd, used
