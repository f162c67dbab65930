"""Read detectors that alibi-detect saved, without running their pickles.

Two layouts are read (checked against alibi-detect's code, versions 0.9 to 0.13):

* **legacy** (``save_detector`` of a ``ModelDistillation``, which alibi-detect always saves so)::

      detector/
        meta.dill                    dill pickle of detector.meta: {'name': 'ModelDistillation',
                                     'online': False, 'data_type': ..., 'version': '0.13.0',
                                     'detector_type': 'adversarial'}
        ModelDistillation.dill       dill pickle of {'threshold': ..., 'temperature': ...,
                                     'loss_type': ...} (the threshold a numpy float64 or None)
        model/model.h5               the classifier, Keras ``model.save(..., save_format='h5')``
        model/distilled_model.h5     the distilled model, likewise

  (``.pickle`` instead of ``.dill`` in older releases; 0.10.0-0.10.4 wrote the distilled model
  to ``distilled_model/model.h5``, which is read too). The pickles are read by
  :mod:`.pickle_reader` (plain data only, nothing called) and the models by the TensorFlow
  backend's safe ``.h5`` reader (Lambda layers and custom classes refused, naming the layer).

* **config** (``save_detector`` of a ``KSDrift``)::

      detector/
        config.toml                  the constructor's arguments (None written as "None")
        x_ref.npy                    the reference, preprocessed if preprocess_at_init
        preprocess_fn/...            the preprocess_fn: a dill pickle of a function (refused:
                                     it is code; pass the function as ``preprocess_fn=``), or
                                     alibi's registered ``preprocess_drift`` with a Keras model
                                     (``preprocess_fn/model/model.h5``, read safely)

  ``config.toml`` is parsed by :mod:`tomllib`, arrays by ``numpy.load(allow_pickle=False)``.

Either way the detector is built through this library's ``from_config`` (the constructor's
checks), from a config translated here, as :mod:`.folder` does for its own older layout. An
alibi-detect ``preprocess_fn`` that is a pickled function is refused with a message that says
which function it is; ``load_detector(path, preprocess_fn=fn)`` supplies it instead (the saved
keyword arguments are bound to it), e.g. ``preprocess_fn=ad.score`` for the harmful-drift recipe
of alibi-detect's docs (``partial(ad.score, batch_size=...)``), with ``ad`` read from its
legacy folder.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .. import files
from ..base import describe
from ..files import DetectorFormatError
from . import pickle_reader

__all__ = [
    "LEGACY_SUFFIXES",
    "CONFIG_TOML",
    "is_alibi_folder",
    "load_alibi_detector",
]

logger = logging.getLogger(__name__)

#: Suffixes of alibi-detect's legacy settings files (``meta.dill``, ``meta.pickle``).
LEGACY_SUFFIXES: tuple[str, ...] = (".dill", ".pickle")
#: The configuration file of alibi-detect's config format.
CONFIG_TOML: str = "config.toml"
#: Largest ``config.toml`` read.
MAX_TOML_BYTES: int = 1 * 2**20
#: Largest ``.npy`` array read.
MAX_NPY_BYTES: int = 4 * 2**30
#: The registry name of alibi-detect's TensorFlow ``preprocess_drift``.
PREPROCESS_DRIFT: str = "@cd.tensorflow.preprocess.preprocess_drift"

_STATE_KEYS = {"threshold", "temperature", "loss_type"}
_KS_KEYS = {
    "name",
    "meta",
    "x_ref",
    "preprocess_fn",
    "input_shape",
    "data_type",
    "x_ref_preprocessed",
    "p_val",
    "preprocess_at_init",
    "update_x_ref",
    "correction",
    "alternative",
    "n_features",
}
# Fields of alibi-detect's PreprocessConfig, with the value that means "not used".
_PREPROCESS_UNUSED: dict[str, Any] = {
    "embedding": None,
    "tokenizer": None,
    "device": None,
    "preprocess_batch_fn": None,
    "max_len": None,
    "kwargs": {},
}
_PREPROCESS_DTYPES = {"np.float32": np.float32, "np.float64": np.float64, "np.float16": np.float16}
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


# ================================================================================ recognition
def is_alibi_folder(directory: Path) -> bool:
    """Whether ``directory`` looks like a folder written by alibi-detect's ``save_detector``.

    Examples
    --------
    >>> is_alibi_folder(Path("/nonexistent"))
    False
    """
    directory = Path(directory)
    if not directory.is_dir():
        return False
    names = {f"meta{s}" for s in LEGACY_SUFFIXES} | {CONFIG_TOML}
    return any(os.path.lexists(directory / n) for n in names)


def load_alibi_detector(directory: Path, given: dict[str, Any]) -> tuple[Any, set[str]]:
    """The detector saved by alibi-detect in ``directory`` and the names of the ``given``
    keyword arguments it used (``model``, ``distilled_model``, ``preprocess_fn``)."""
    directory = Path(directory)
    for suffix in LEGACY_SUFFIXES:
        if os.path.lexists(directory / f"meta{suffix}"):
            return _load_legacy(directory, suffix, given)
    if os.path.lexists(directory / CONFIG_TOML):
        return _load_config(directory, given)
    raise DetectorFormatError(
        f"{directory} holds neither meta.dill, meta.pickle nor config.toml: not a folder "
        "written by alibi-detect's save_detector"
    )


# ============================================================================== shared checks
def _plain(value: Any, where: str) -> Any:
    """JSON-able copy of pickled or TOML data: numpy scalars to Python, tuples to lists."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise DetectorFormatError(f"{where} is {value}, which cannot be kept")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise DetectorFormatError(f"{where} has a key {k!r} that is not a string")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    raise DetectorFormatError(f"{where} holds a {type(value).__name__}, which is not plain data")


def _real(value: Any, where: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, np.generic) and value.dtype.kind in "iuf":
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DetectorFormatError(
            f"{where} must be {'None or ' if optional else ''}a number, got {describe(value)}"
        )
    return float(value)


def _ported_meta(alibi_meta: dict[str, Any], fmt: str, where: str) -> dict[str, Any]:
    meta = _plain(alibi_meta, where)
    version = meta.pop("version", None)
    meta.pop("version_warning", None)
    meta["ported_from"] = {"library": "alibi-detect", "version": version, "format": fmt}
    return meta


def _tensorflow(what: str) -> Any:
    from ..backends import get_backend

    try:
        return get_backend("tensorflow")
    except ImportError as err:
        raise ValueError(f"{what} holds Keras models; reading them needs {err}") from err


def _keras_model(path: Path, key: str, given: dict[str, Any], used: set[str], tf: Any) -> Any:
    """The model in ``path``: loaded safely, or its weights read into ``given[key]``."""
    from ..backends import framework_of

    model = given.get(key)
    if model is not None:
        used.add(key)
        if framework_of(model) != "tensorflow":
            if key == "model":  # a black-box teacher replaces the saved one; the file is unused
                logger.info("using the given %s instead of %s", key, path)
                return model
            raise TypeError(
                f"{key} must be a Keras model to receive the weights saved in {path}, got "
                f"{describe(model)}"
            )
    return tf.load_h5(path, key, model=model, keyword=key)


# ============================================================================ legacy: pickles
def _load_legacy(directory: Path, suffix: str, given: dict[str, Any]) -> tuple[Any, set[str]]:
    from ..ad.model_distillation import ModelDistillation

    meta_path = directory / f"meta{suffix}"
    meta = pickle_reader.read_pickle_file(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise DetectorFormatError(
            f"{meta_path} must hold alibi-detect's meta dict with a 'name', got {describe(meta)}"
        )
    name = meta["name"]
    if name != "ModelDistillation":
        raise DetectorFormatError(
            f"{meta_path}: the folder holds an alibi-detect {name!r} detector; distilldetect reads "
            "alibi-detect's ModelDistillation (saved as meta.dill + ModelDistillation.dill + "
            "model/*.h5) and KSDrift saved in its config format (config.toml)"
        )
    if "preprocess_fn" in given:
        raise ValueError(
            f"preprocess_fn= given, but {directory} holds a ModelDistillation, which has none"
        )
    state_path = directory / f"{name}{suffix}"
    state = pickle_reader.read_pickle_file(state_path)
    if not isinstance(state, dict):
        raise DetectorFormatError(f"{state_path} must hold a dict, got {describe(state)}")
    missing, extra = sorted(_STATE_KEYS - set(state)), sorted(set(state) - _STATE_KEYS, key=str)
    if missing or extra:
        raise DetectorFormatError(
            f"{state_path} must hold exactly {sorted(_STATE_KEYS)}; missing {missing}, "
            f"unknown {extra}"
        )
    threshold = _real(state["threshold"], f"{state_path}: 'threshold'", optional=True)
    temperature = _real(state["temperature"], f"{state_path}: 'temperature'")
    loss_type = state["loss_type"]

    teacher_path = directory / "model" / "model.h5"
    student_path = directory / "model" / "distilled_model.h5"
    if not os.path.lexists(student_path) and os.path.lexists(
        directory / "distilled_model" / "model.h5"
    ):
        student_path = directory / "distilled_model" / "model.h5"  # alibi-detect 0.10.0-0.10.4
    for path in (teacher_path, student_path):
        if not os.path.lexists(path) and not (path == teacher_path and "model" in given):
            raise DetectorFormatError(f"{path} is missing (alibi-detect's ModelDistillation)")
    tf = _tensorflow(str(directory))
    used: set[str] = set()
    if "model" in given and not os.path.lexists(teacher_path):
        teacher = given["model"]
        used.add("model")
    else:
        teacher = _keras_model(teacher_path, "model", given, used, tf)
    student = _keras_model(student_path, "distilled_model", given, used, tf)

    data_type = meta.get("data_type")
    config = {
        "threshold": threshold,
        "distilled_model": student,
        "model": teacher,
        "loss_type": loss_type,
        "temperature": temperature,
        "data_type": data_type if isinstance(data_type, str) else None,
        "input_shape": None,
    }
    try:
        detector = ModelDistillation.from_config(config)
        state_now = detector.get_state()
        detector.set_state(
            {
                **state_now,
                "meta": {
                    **state_now["meta"],
                    **_ported_meta(meta, f"legacy ({meta_path.name})", str(meta_path)),
                },
            }
        )
    except (TypeError, ValueError) as err:
        if isinstance(err, DetectorFormatError):
            raise
        raise DetectorFormatError(
            f"{state_path}: the saved ModelDistillation settings are invalid: {err}"
        ) from err
    logger.info("read alibi-detect's ModelDistillation from %s", directory)
    return detector, used


# ============================================================================ config: TOML
def _toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as err:
            raise ValueError(
                f"reading {path} needs a TOML parser: Python >= 3.11, or pip install tomli"
            ) from err
    raw = files.read_limited(path, MAX_TOML_BYTES, "alibi-detect's config.toml")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise DetectorFormatError(f"{path} is not valid TOML: {err}") from None


def _nones(value: Any) -> Any:
    """alibi-detect writes None as the string "None" (TOML has no null)."""
    if isinstance(value, str) and value == "None":
        return None
    if isinstance(value, dict):
        return {k: _nones(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nones(v) for v in value]
    return value


def _inside(directory: Path, rel: Any, where: Path, what: str) -> Path:
    """``directory / rel`` for a relative path of plain names inside the folder (no links)."""
    if not isinstance(rel, str):
        raise DetectorFormatError(f"{where}: {what} must be a file name, got {describe(rel)}")
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if rel.startswith(("/", "\\")) or not parts or not all(_SAFE_PART.match(p) for p in parts):
        raise DetectorFormatError(
            f"{where}: {what} is {rel!r}; only paths inside the detector's folder (plain names, "
            "no '..', not absolute) are read"
        )
    path = directory
    for part in parts:
        path = path / part
        if os.path.islink(path):
            raise DetectorFormatError(f"{path} is a symbolic link; refusing to follow it")
    return path


def _npy(path: Path) -> np.ndarray:
    data = files.read_limited(path, MAX_NPY_BYTES, "a .npy array")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:  # object arrays need pickle: refused
        raise DetectorFormatError(f"{path} cannot be read without pickle: {err}") from None
    except (OSError, EOFError) as err:
        raise DetectorFormatError(f"{path} is not a valid .npy file: {err}") from None
    if not isinstance(array, np.ndarray):
        raise DetectorFormatError(f"{path} must hold one array (.npy), not an archive")
    return array


def _load_config(directory: Path, given: dict[str, Any]) -> tuple[Any, set[str]]:
    from ..cd.ks import KSDrift

    where = directory / CONFIG_TOML
    cfg = _nones(_toml(where))
    name = cfg.get("name")
    if name != "KSDrift":
        raise DetectorFormatError(
            f"{where}: the folder holds an alibi-detect {name!r} detector; of alibi-detect's "
            "config format, distilldetect reads KSDrift"
        )
    unknown = sorted(set(cfg) - _KS_KEYS)
    if unknown:
        raise DetectorFormatError(
            f"{where} has settings {unknown} that alibi-detect's KSDrift does not have"
        )
    if "x_ref" not in cfg:
        raise DetectorFormatError(f"{where}: 'x_ref' (the reference data file) is missing")
    used: set[str] = set()
    x_ref = _npy(_inside(directory, cfg["x_ref"], where, "x_ref"))
    preprocess_fn = _preprocess_fn(directory, where, cfg.get("preprocess_fn"), given, used)
    meta = cfg.get("meta") or {}
    if not isinstance(meta, dict):
        raise DetectorFormatError(f"{where}: 'meta' must be a table")
    input_shape = cfg.get("input_shape")
    config = {
        "x_ref": x_ref,
        "p_val": cfg.get("p_val", 0.05),
        "x_ref_preprocessed": cfg.get("x_ref_preprocessed", False),
        "preprocess_at_init": cfg.get("preprocess_at_init", True),
        "update_x_ref": cfg.get("update_x_ref"),
        "preprocess_fn": preprocess_fn,
        "correction": cfg.get("correction", "bonferroni"),
        "alternative": cfg.get("alternative", "two-sided"),
        "n_features": cfg.get("n_features"),
        "input_shape": None if input_shape is None else tuple(input_shape),
        "data_type": cfg.get("data_type"),
        "seed": None,
    }
    try:
        detector = KSDrift.from_config(config)
        state = detector.get_state()
        detector.set_state(
            {
                **state,
                "meta": {**state["meta"], **_ported_meta(meta, "config (config.toml)", str(where))},
            }
        )
    except (TypeError, ValueError) as err:
        if isinstance(err, DetectorFormatError):
            raise
        raise DetectorFormatError(
            f"{where}: the saved KSDrift settings are invalid: {err}"
        ) from err
    logger.info("read alibi-detect's KSDrift from %s", directory)
    return detector, used


def _preprocess_fn(
    directory: Path, where: Path, entry: Any, given: dict[str, Any], used: set[str]
) -> Any:
    fn = given.get("preprocess_fn")
    if fn is not None and not callable(fn):
        raise TypeError(f"preprocess_fn must be callable, got {describe(fn)}")
    if entry is None:
        if fn is not None:
            raise ValueError(f"preprocess_fn= given, but the KSDrift in {where} has none")
        return None
    if isinstance(entry, str):
        entry = {"src": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("src"), str):
        raise DetectorFormatError(f"{where}: 'preprocess_fn' must be a table with a 'src'")
    src = entry["src"]
    if src == PREPROCESS_DRIFT:
        if fn is not None:
            raise ValueError(
                f"preprocess_fn= given, but the KSDrift in {where} has its own "
                f"({PREPROCESS_DRIFT} with a saved model), which is read safely"
            )
        return _preprocess_drift(directory, where, entry, given, used)
    kwargs = entry.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise DetectorFormatError(f"{where}: preprocess_fn.kwargs must be a table")
    extra = sorted(set(entry) - {"src", "kwargs"})
    if src.startswith("@"):
        what = f"alibi-detect's registered function {src[1:]!r}"
    else:
        path = _inside(directory, src, where, "preprocess_fn.src")
        what = f"the function pickled in {path}{_pickled_description(path)}"
    if fn is None:
        hint = ""
        if "ModelDistillation.score" in what:
            hint = (
                " It is alibi-detect's ModelDistillation.score (the harmful-drift recipe): read "
                "that ModelDistillation from its own folder (ad = load_detector(...) or "
                "fetch_detector(...)) and pass preprocess_fn=ad.score."
            )
        bound = f" Its saved keyword arguments {kwargs} will be bound to it." if kwargs else ""
        raise ValueError(
            f"{where}: preprocess_fn is {what}. A function is code, and distilldetect never runs "
            "code from a saved detector; pass the function yourself: "
            f"load_detector({str(directory)!r}, preprocess_fn=fn).{bound}{hint}"
        )
    if extra:
        raise DetectorFormatError(
            f"{where}: preprocess_fn has fields {extra}, which a plain function does not take"
        )
    for key, value in kwargs.items():
        if isinstance(value, dict) or (isinstance(value, str) and value.startswith("@")):
            raise ValueError(
                f"{where}: preprocess_fn.kwargs[{key!r}] is {describe(value)}, a saved object "
                "(a model or function), which is not read; bind it to the function you pass"
            )
    used.add("preprocess_fn")
    return functools.partial(fn, **kwargs) if kwargs else fn


def _pickled_description(path: Path) -> str:
    """`` (a pickled ModelDistillation.score ...)`` for a message, read without running it."""
    try:
        data = files.read_limited(path, pickle_reader.MAX_PICKLE_BYTES, "a pickled function")
        names = pickle_reader.pickle_globals(data, path)
    except (DetectorFormatError, OSError) as err:
        return f" (unreadable: {err})"
    if not names:
        return ""
    return f" (it names {pickle_reader.describe_globals(names, limit=6)})"


def _preprocess_drift(
    directory: Path, where: Path, entry: dict[str, Any], given: dict[str, Any], used: set[str]
) -> Any:
    """alibi-detect's ``preprocess_drift(x, model, batch_size)``: the model's outputs, in
    batches — :func:`distilldetect.utils.predict_batch` with the model read safely."""
    from ..utils import predict_batch

    allowed = {"src", "model", "batch_size", "dtype", *_PREPROCESS_UNUSED}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise DetectorFormatError(f"{where}: preprocess_fn has unknown fields {unknown}")
    for key, unused in _PREPROCESS_UNUSED.items():
        if entry.get(key, unused) not in (unused, None):
            raise ValueError(
                f"{where}: preprocess_fn.{key} is set ({describe(entry[key])}); distilldetect "
                f"reads {PREPROCESS_DRIFT} with a Keras model only (no {key})"
            )
    dtype = entry.get("dtype", "np.float32")
    if dtype not in _PREPROCESS_DTYPES:
        raise DetectorFormatError(
            f"{where}: preprocess_fn.dtype must be one of {sorted(_PREPROCESS_DTYPES)}, got "
            f"{dtype!r}"
        )
    batch_size = entry.get("batch_size", int(1e10))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DetectorFormatError(f"{where}: preprocess_fn.batch_size must be an integer >= 1")
    model_cfg = entry.get("model")
    if isinstance(model_cfg, str):
        raise ValueError(
            f"{where}: preprocess_fn.model is {model_cfg!r}, a registered object (code); only a "
            "model saved in the folder is read"
        )
    if not isinstance(model_cfg, dict) or "src" not in model_cfg:
        raise DetectorFormatError(f"{where}: preprocess_fn.model must be a table with a 'src'")
    bad = sorted(set(model_cfg) - {"src", "flavour", "custom_objects", "layer"})
    if bad:
        raise DetectorFormatError(f"{where}: preprocess_fn.model has unknown fields {bad}")
    if model_cfg.get("flavour", "tensorflow") != "tensorflow":
        raise ValueError(
            f"{where}: preprocess_fn.model is a {model_cfg.get('flavour')!r} model; only "
            "TensorFlow (Keras .h5) models saved by alibi-detect are read"
        )
    for key in ("custom_objects", "layer"):
        if model_cfg.get(key) is not None:
            raise ValueError(
                f"{where}: preprocess_fn.model.{key} is set ({describe(model_cfg[key])}); "
                "custom objects are code and hidden-layer extraction is not supported"
            )
    model_dir = _inside(directory, model_cfg["src"], where, "preprocess_fn.model.src")
    tf = _tensorflow(str(where))
    model = _keras_model(model_dir / "model.h5", "model", given, used, tf)
    return functools.partial(predict_batch, model=model, batch_size=batch_size)
