"""Saving and loading Keras models for :mod:`distilldetect.saving`: the ``.keras`` format, safely.

A Keras 3 model is saved as one ``<name>.keras`` archive (Keras' v3 format: a zip of a JSON
architecture ``config.json``, ``metadata.json`` and the weights in ``model.weights.h5``; no
pickle). Its entry in the detector's ``config.json`` also lists every variable's path, shape and
dtype, and the zoo model's ``builder_config`` when it has one.

Loading
-------
* With ``model`` given (``model=`` / ``distilled_model=`` of
  :func:`~distilldetect.saving.load_detector`): the variables of ``model`` are checked against
  the entry (number, shapes, dtypes, in order), then the weights are read from the archive with
  ``model.load_weights``; the architecture part of the file is never deserialised. If Keras
  fails half-way, the model's previous weights are restored: never a partial load.
* Without it: ``keras.saving.load_model(path, safe_mode=True, compile=False)``. Safe mode refuses
  ``Lambda`` layers carrying Python code and other arbitrary code; only classes Keras knows
  (built-in, or registered with ``keras.saving.register_keras_serializable``) are rebuilt. The
  zoo models (:mod:`.models`) use built-in layers only, so they load anywhere. A model
  that safe mode refuses must be passed as ``model=`` / ``distilled_model=``.

Legacy ``.h5`` models (Keras 2 / ``tf_keras``, as alibi-detect saves them): :func:`load_h5`
checks the file before Keras reads it — the architecture may hold built-in Keras layers only
(``Lambda`` and other code-carrying layers, custom classes, file paths are refused, naming the
layer), every weight must be a plain numeric dataset stored in the file (no external, virtual or
linked data) — then rebuilds it with ``keras.saving.load_model(..., safe_mode=True,
compile=False)``, or reads only the weights into a model the caller built.

The bytes are verified against the SHA-256 recorded by :mod:`distilldetect.saving` just before
parsing, and parsed from a private temporary copy, so the file cannot change in between. Keras
releases before 3.14 had ``safe_mode`` bypasses (CVE-2025-1550, CVE-2025-9906, CVE-2026-1462...):
loading needs ``keras >= 3.14``. Legacy ``tf_keras`` models can be saved, but are only loaded
into a given model (their loader has not had these fixes).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import keras

from ... import files
from ...base import describe
from .runtime import is_model

__all__ = ["FORMAT", "MIN_KERAS_VERSION", "MAX_H5_BYTES", "save_model", "load_model", "load_h5"]

logger = logging.getLogger(__name__)

#: ``format`` of the entries written here.
FORMAT: str = "keras"
#: Oldest Keras whose ``safe_mode`` has the known bypasses fixed (CVE-2026-1462 in 3.14.0).
MIN_KERAS_VERSION: tuple[int, int] = (3, 14)

_ENTRY_KEYS = {
    "name",
    "framework",
    "format",
    "files",
    "package",
    "keras_version",
    "class",
    "builder_config",
    "variables",
}
# TensorFlow functions that Keras saves under names its loader cannot find back: a layer built with
# ``activation=tf.nn.softmax`` (the seed's style) is saved as the function 'softmax_v2'. They are
# loaded as the Keras activations that compute the same function (library code, no file code).
_TF_FUNCTION_ALIASES: dict[str, Any] = {
    "softmax_v2": keras.activations.softmax,  # tf.nn.softmax, last axis
    "log_softmax_v2": keras.activations.log_softmax,  # tf.nn.log_softmax, last axis
    "swish": keras.activations.silu,  # tf.nn.swish with beta = 1
}
_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,240}\.keras$")
_MAX_DIFFERENCES = 5
#: The saved detector's configuration file, named in messages.
_CONFIG = "config.json"


# ==================================================================================== saving
def _short(err: BaseException, limit: int = 400) -> str:
    """The first line of an error message, cut to ``limit`` characters (Keras dumps configs)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _package(model: Any) -> str:
    legacy = sys.modules.get("tf_keras")
    if legacy is not None and isinstance(model, getattr(legacy, "Model", ())):
        return "tf_keras"
    return "keras"


def _variables(model: Any) -> list[dict[str, Any]]:
    out = []
    for v in model.weights:
        path = getattr(v, "path", None) or getattr(v, "name", "")
        dtype = v.dtype if isinstance(v.dtype, str) else getattr(v.dtype, "name", str(v.dtype))
        out.append({"path": str(path), "shape": [int(s) for s in v.shape], "dtype": str(dtype)})
    return out


def _builder_config(model: Any) -> dict[str, Any] | None:
    config = getattr(model, "builder_config", None)
    if not isinstance(config, dict) or set(config) != {"name", "kwargs"}:
        return None
    try:
        plain = json.loads(json.dumps(config))  # tracked containers -> plain JSON data
    except (TypeError, ValueError):
        return None
    if not isinstance(plain["name"], str) or not isinstance(plain["kwargs"], dict):
        return None
    return plain


def save_model(model: Any, directory: Path, name: str) -> dict[str, Any]:
    """Write ``model`` to ``directory / f'{name}.keras'`` (Keras v3 format); return its entry.

    Parameters
    ----------
    model
        A built Keras model.
    directory
        Existing folder to write into.
    name
        ``'model'`` or ``'distilled_model'``: the file name stem and the keyword of
        :func:`~distilldetect.saving.load_detector` that can supply the model.

    Returns
    -------
    dict
        JSON-able entry: ``name``, ``framework`` (``'tensorflow'``), ``format`` (``'keras'``),
        ``files``, ``package`` (``'keras'`` or ``'tf_keras'``), ``keras_version``, ``class``
        (for messages only), ``builder_config`` (zoo models, else None) and ``variables``
        (path, shape and dtype of each of ``model.weights``).

    Examples
    --------
    >>> import tempfile
    >>> from distilldetect.backends.tensorflow.models import mlp
    >>> entry = save_model(mlp((4,), 2, (3,)), Path(tempfile.mkdtemp()), "model")
    >>> entry["format"], entry["files"]
    ('keras', ['model.keras'])
    """
    if not is_model(model):
        raise TypeError(f"{name} must be a Keras model, got {describe(model)}")
    if not model.built:
        raise ValueError(
            f"{name} is a Keras model that is not built yet (it has no weights to save); "
            "call it once on a batch or build it first"
        )
    file = f"{name}.keras"
    if not _FILE.match(file):
        raise ValueError(f"name must be a plain file name stem, got {name!r}")
    with tempfile.TemporaryDirectory(prefix="distilldetect-keras-") as tmp:
        tmp_path = Path(tmp) / file
        try:
            with warnings.catch_warnings():
                # Keras' variables predate NumPy 2's __array__(copy=...): harmless noise
                warnings.filterwarnings(
                    "ignore", message="__array__ implementation", category=DeprecationWarning
                )
                model.save(tmp_path)
        except Exception as err:  # Keras raises many types for unsavable models
            raise ValueError(f"{name} cannot be saved in the .keras format: {err}") from err
        data = tmp_path.read_bytes()
        if _package(model) == "keras":
            try:
                _safe_load(tmp_path)
            except Exception as err:  # say it now rather than when loading
                logger.warning(
                    "%s is saved, but Keras' safe mode cannot rebuild it (%s); loading it will "
                    "need the model: load_detector(..., %s=model)",
                    name,
                    _short(err),
                    name,
                )
    files.write_new(directory / file, data)
    package = _package(model)
    version = sys.modules["tf_keras"].__version__ if package == "tf_keras" else keras.__version__
    return {
        "name": name,
        "framework": "tensorflow",
        "format": FORMAT,
        "files": [file],
        "package": package,
        "keras_version": str(version),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "builder_config": _builder_config(model),
        "variables": _variables(model),
    }


# ==================================================================================== loading
def _error(msg: str) -> files.DetectorFormatError:
    return files.DetectorFormatError(msg)


def _check_entry(entry: Any, where: str) -> None:
    keys = set(entry) - {"checksums"} if isinstance(entry, dict) else set()
    if keys != _ENTRY_KEYS:
        raise _error(
            f"{where}: a Keras model entry must have keys {sorted(_ENTRY_KEYS)}, got {sorted(keys)}"
        )
    files = entry["files"]
    if (
        entry["format"] != FORMAT
        or entry["framework"] != "tensorflow"
        or not (isinstance(files, list) and len(files) == 1 and isinstance(files[0], str))
        or not _FILE.match(files[0])
    ):
        raise _error(f"{where}: expected format {FORMAT!r} with one '<name>.keras' file")
    if entry["package"] not in ("keras", "tf_keras"):
        raise _error(f"{where}: 'package' must be 'keras' or 'tf_keras'")
    variables = entry["variables"]
    if not isinstance(variables, list) or not all(
        isinstance(v, dict)
        and set(v) == {"path", "shape", "dtype"}
        and isinstance(v["path"], str)
        and isinstance(v["dtype"], str)
        and isinstance(v["shape"], list)
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v["shape"])
        for v in variables
    ):
        raise _error(f"{where}: 'variables' must be a list of {{'path', 'shape', 'dtype'}}")
    config = entry["builder_config"]
    if config is not None and not (
        isinstance(config, dict)
        and set(config) == {"name", "kwargs"}
        and isinstance(config["name"], str)
        and isinstance(config["kwargs"], dict)
    ):
        raise _error(f"{where}: 'builder_config' must be null or {{'name': str, 'kwargs': {{}}}}")


def _check_keras_version() -> None:
    parts = re.findall(r"\d+", keras.__version__)[:2]
    version = tuple(int(p) for p in parts)
    if version < MIN_KERAS_VERSION:
        need = ".".join(str(p) for p in MIN_KERAS_VERSION)
        raise ValueError(
            f"loading .keras files safely needs keras >= {need} (earlier releases have known "
            f"safe_mode bypasses); this is keras {keras.__version__}: pip install 'keras>={need}'"
        )


def _differences(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> str:
    if len(expected) != len(got):
        return f"the file has {len(expected)} variables, the model {len(got)}"
    lines = []
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        if (e["shape"], e["dtype"]) != (g["shape"], g["dtype"]):
            lines.append(
                f"variable {i} ({e['path']!r} in the file, {g['path']!r} in the model): file "
                f"has shape {e['shape']} dtype {e['dtype']}, model has shape {g['shape']} "
                f"dtype {g['dtype']}"
            )
        if len(lines) == _MAX_DIFFERENCES:
            break
    return "; ".join(lines)


def _same_variables(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> bool:
    return [(v["shape"], v["dtype"]) for v in expected] == [(v["shape"], v["dtype"]) for v in got]


def _safe_load(file: Path) -> Any:
    """``keras.saving.load_model`` in safe mode, not compiled, with the TF-function aliases."""
    return keras.saving.load_model(
        file, custom_objects=dict(_TF_FUNCTION_ALIASES), safe_mode=True, compile=False
    )


def _verified_bytes(directory: Path, entry: dict[str, Any]) -> bytes:
    file = entry["files"][0]
    path = directory / file
    checksums = entry.get("checksums") or {}
    try:
        if file in checksums:
            return files.read_checked(path, checksums[file], "a model file")
        return path.read_bytes()
    except OSError as err:
        raise _error(f"{path} cannot be read: {err}") from err


def _load_weights_into(model: Any, file: Path, entry: dict[str, Any], path: Path) -> None:
    name = entry["name"]
    if not model.built:
        raise ValueError(
            f"{name}= is a Keras model that is not built yet; build it (call it once on a "
            f"batch) before loading the weights saved in {path}"
        )
    got = _variables(model)
    if not _same_variables(entry["variables"], got):
        raise ValueError(
            f"the Keras model given as {name}= does not match the weights in {path}: "
            + _differences(entry["variables"], got)
        )
    before = [v.numpy() for v in model.weights]
    try:
        model.load_weights(file)
    except Exception as err:  # Keras raises ValueError, KeyError... on structure mismatches
        for variable, value in zip(model.weights, before, strict=True):
            variable.assign(value)
        raise ValueError(
            f"could not load the weights in {path} into the model given as {name}= (its "
            f"layers differ from the saved model's; its weights are unchanged): {_short(err)}"
        ) from err


def load_model(directory: Path, entry: dict[str, Any], model: Any = None) -> Any:
    """Load a Keras model saved by :func:`save_model`, into ``model`` if given.

    Parameters
    ----------
    directory
        The saved detector's folder.
    entry
        The entry :func:`save_model` returned (as read from ``config.json``), optionally with
        ``'checksums'`` ``{file: {'sha256', 'bytes'}}``: the bytes are then checked again just
        before they are parsed.
    model
        A built Keras model of the same architecture; its weights are replaced in place (all
        or none). Required for models that safe mode refuses (``Lambda`` layers, unregistered
        custom classes) and for legacy ``tf_keras`` models.

    Returns
    -------
    keras.Model
        ``model`` with the saved weights, or the model loaded in safe mode (not compiled; zoo
        models get their ``builder_config`` back).

    Raises
    ------
    ValueError
        If the file does not match the entry or ``model``, or cannot be loaded in safe mode
        (the message names the ``model=`` / ``distilled_model=`` keyword to use).

    Examples
    --------
    >>> import tempfile
    >>> from distilldetect.backends.tensorflow.models import mlp
    >>> d = Path(tempfile.mkdtemp())
    >>> load_model(d, save_model(mlp((4,), 2, (3,)), d, "model")).builder_config["name"]
    'mlp'
    """
    name = entry.get("name") if isinstance(entry, dict) else None
    where = f"{Path(directory) / _CONFIG} (models[{name!r}])"
    _check_entry(entry, where)
    name = entry["name"]
    directory = Path(directory)
    path = directory / entry["files"][0]
    if model is not None and not is_model(model):
        raise TypeError(
            f"{name} must be a Keras model to receive the weights saved in {path}, got "
            f"{describe(model)}"
        )
    if model is None and entry["package"] == "tf_keras":
        raise ValueError(
            f"{path} holds a legacy tf_keras model, which is only loaded into a model you "
            f"build: load_detector(..., {name}=model)"
        )
    _check_keras_version()
    data = _verified_bytes(directory, entry)
    with tempfile.TemporaryDirectory(prefix="distilldetect-keras-") as tmp:
        copy = Path(tmp) / entry["files"][0]
        copy.write_bytes(data)
        if model is not None:
            _load_weights_into(model, copy, entry, path)
            return model
        try:
            loaded = _safe_load(copy)
        except Exception as err:  # safe-mode refusals and unknown classes: ValueError, TypeError
            raise ValueError(
                f"{path} cannot be loaded in Keras' safe mode ({_short(err)}). If it holds a Lambda "
                "layer or a custom class, build the model and pass it: "
                f"load_detector(..., {name}=model)"
            ) from err
    got = _variables(loaded)
    if not _same_variables(entry["variables"], got):
        raise _error(
            f"{path} does not hold the variables {_CONFIG} lists: "
            + _differences(entry["variables"], got)
        )
    if entry["builder_config"] is not None:
        loaded.builder_config = entry["builder_config"]
    logger.debug("loaded %s from %s", name, path)
    return loaded


# =============================================================================== legacy .h5
#: Largest ``.h5`` model file read.
MAX_H5_BYTES: int = 2 * 2**30
#: ``.h5`` attributes that hold the model's architecture (JSON).
_H5_CONFIG_ATTR = "model_config"
#: Keras layers whose saved config carries code or reaches outside the file: refused.
_CODE_LAYERS: dict[str, str] = {
    "Lambda": "a Lambda layer holds Python code (marshalled bytecode or a function name)",
    "TFSMLayer": "a TFSMLayer loads a TensorFlow SavedModel (a graph of code) from a path",
    "TorchModuleWrapper": "a TorchModuleWrapper holds a pickled torch module",
    "JaxLayer": "a JaxLayer wraps a Python function",
    "FlaxLayer": "a FlaxLayer wraps a Python module",
    "Layer": "a bare Layer is a custom layer's base class",
    "Wrapper": "a bare Wrapper is a custom layer's base class",
}
_MODEL_CLASSES = {"Sequential", "Functional", "Model"}
#: Config keys whose value is code in some Keras layer (a marshalled function).
_CODE_KEYS = {"function", "function_type", "output_shape_type", "module_name_fn"}


def _builtin_layer_names() -> set[str]:
    names = set()
    for attr in dir(keras.layers):
        obj = getattr(keras.layers, attr)
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer):
            names.add(attr)
    return (names - set(_CODE_LAYERS)) | _MODEL_CLASSES


def _h5_refusal(path: Path, what: str, keyword: str) -> ValueError:
    return ValueError(
        f"{path} cannot be loaded safely: {what}. Nothing from it was run. If you trust the "
        f"model's code, build the same architecture yourself and pass it ({keyword}=model): only "
        "the weights are then read from the file"
    )


def _check_h5_layers(config: Any, path: Path, keyword: str) -> None:
    """Refuse an ``.h5`` model config holding code: Lambda and similar layers, custom classes,
    marshalled functions, file paths (``vocabulary``)."""
    allowed = _builtin_layer_names()
    # (value, where, is_layer_position)
    todo: list[tuple[Any, str, bool]] = [(config, "the model", True)]
    visited = 0
    while todo:
        value, where, is_layer = todo.pop()
        visited += 1
        if visited > 1_000_000:
            raise _h5_refusal(path, "its model config is too large to check", keyword)
        if isinstance(value, list):
            todo.extend((v, where, False) for v in value)
            continue
        if not isinstance(value, dict):
            continue
        cls = value.get("class_name")
        cfg = value.get("config") if isinstance(value.get("config"), dict) else {}
        name = cfg.get("name", value.get("name"))
        label = f"layer {name!r} ({cls})" if name is not None else f"a {cls}"
        if isinstance(cls, str) and cls in _CODE_LAYERS:
            raise _h5_refusal(path, f"its {label} is refused: {_CODE_LAYERS[cls]}", keyword)
        if is_layer:
            if not isinstance(cls, str) or cls not in allowed:
                raise _h5_refusal(
                    path,
                    f"its {label} is not a built-in Keras layer (a custom layer is code, which "
                    "the file does not hold and safe loading never imports)",
                    keyword,
                )
        module = value.get("module")
        if module is not None and not (
            isinstance(module, str) and module.split(".")[0] in ("keras", "tf_keras")
        ):
            raise _h5_refusal(path, f"its {label} comes from the module {module!r}", keyword)
        for key, item in value.items():
            if key in _CODE_KEYS and item is not None and not isinstance(item, (int, float, bool)):
                raise _h5_refusal(path, f"its {label} holds code under {key!r}", keyword)
            if key == "vocabulary" and isinstance(item, str):
                raise _h5_refusal(
                    path, f"its {label} reads a vocabulary from the file path {item!r}", keyword
                )
            child_is_layer = key in ("layer", "forward_layer", "backward_layer", "cell")
            if key == "layers" and isinstance(item, list):
                todo.extend((v, where, True) for v in item)
            elif key == "cells" and isinstance(item, list):
                todo.extend((v, where, True) for v in item)
            else:
                todo.append((item, where, child_is_layer and isinstance(item, dict)))


def _check_h5_storage(h5: Any, path: Path) -> None:
    """Every object must live inside the file: no external or soft links, no external or
    virtual datasets, and weights must be plain numbers."""
    import h5py

    problems: list[str] = []

    def visit(group: Any, prefix: str) -> None:
        for key in group:
            link = group.get(key, getlink=True)
            name = f"{prefix}/{key}"
            if not isinstance(link, h5py.HardLink):
                problems.append(f"{name} is a {type(link).__name__} (it points outside the object)")
                continue
            obj = group[key]
            if isinstance(obj, h5py.Group):
                visit(obj, name)
            elif isinstance(obj, h5py.Dataset):
                if obj.external:
                    problems.append(f"{name} keeps its data in an external file")
                elif obj.is_virtual:
                    problems.append(f"{name} is a virtual dataset (data from other files)")
                elif obj.dtype.kind not in "biuf":
                    problems.append(f"{name} has dtype {obj.dtype}, not plain numbers")
            if len(problems) >= _MAX_DIFFERENCES:
                return

    if "model_weights" in h5:
        visit(h5["model_weights"], "model_weights")
    else:
        visit(h5, "")
    if problems:
        raise files.DetectorFormatError(f"{path} is refused: " + "; ".join(problems))


def _h5_config(h5: Any, path: Path) -> Any:
    raw = h5.attrs.get(_H5_CONFIG_ATTR)
    if raw is None:
        raise files.DetectorFormatError(
            f"{path} holds no model architecture ('{_H5_CONFIG_ATTR}'): it is a weights-only "
            "file; build the model and pass it"
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(str(raw))
    except ValueError as err:
        raise files.DetectorFormatError(f"{path}: its model config is not JSON ({err})") from None


def load_h5(
    path: Path,
    name: str = "model",
    *,
    checksum: dict[str, Any] | None = None,
    model: Any = None,
    keyword: str | None = None,
) -> Any:
    """Load a Keras model saved in the legacy HDF5 format (``model.save('m.h5')``), safely.

    alibi-detect saves its models so (``model/model.h5``), with Keras 2 (``tf_keras``). Before
    Keras reads anything, the file is checked here: the architecture (the JSON attribute
    ``model_config``) may hold built-in Keras layers only — a ``Lambda`` layer (marshalled
    Python code), ``TFSMLayer``, ``TorchModuleWrapper``, ``JaxLayer``/``FlaxLayer``, a custom
    class or a vocabulary file path is refused, naming the layer — and every weight is a plain
    numeric dataset stored inside the file (no external, virtual or linked data). Only then is
    the model rebuilt by ``keras.saving.load_model(..., safe_mode=True, compile=False)``; the
    optimizer state is never read.

    Parameters
    ----------
    path
        The ``.h5`` file.
    name
        What the model is (``'model'``, ``'distilled_model'``), for messages.
    checksum
        Optional ``{'sha256', 'bytes'}``: the bytes are refused unless they match (checked on
        a private copy, which is what is parsed).
    model
        Optional built Keras model of the same architecture: only the weights are read from the
        file (by layer order), into ``model``, all or none; the file's architecture is ignored,
        so this also works for models whose architecture is refused.
    keyword
        The argument through which the caller accepts ``model`` (named in refusals).

    Returns
    -------
    keras.Model
        Not compiled.

    Raises
    ------
    ValueError
        If the architecture holds code (the message names the layer) or the weights do not fit
        ``model``; :class:`~distilldetect.files.DetectorFormatError` (a ValueError) for a
        file that is not an HDF5 model, is modified, or keeps data outside itself.

    Examples
    --------
    >>> load_h5(Path("alibi/model/model.h5"))  # doctest: +SKIP
    """
    import h5py

    path = Path(path)
    keyword = keyword or f"{name}="
    keyword = keyword.rstrip("=")
    if model is not None and not is_model(model):
        raise TypeError(
            f"{keyword} must be a Keras model to receive the weights in {path}, got "
            f"{describe(model)}"
        )
    if checksum is not None:
        data = files.read_checked(path, checksum, "a Keras .h5 model")
    else:
        data = files.read_limited(path, MAX_H5_BYTES, "a Keras .h5 model")
    if not data.startswith(b"\x89HDF\r\n\x1a\n"):
        raise files.DetectorFormatError(f"{path} is not an HDF5 file (bad signature)")
    _check_keras_version()
    with tempfile.TemporaryDirectory(prefix="distilldetect-h5-") as tmp:
        copy = Path(tmp) / "model.h5"
        copy.write_bytes(data)
        try:
            h5 = h5py.File(copy, "r")
        except OSError as err:
            raise files.DetectorFormatError(
                f"{path} is not a readable HDF5 file: {_short(err)}"
            ) from None
        with h5:
            _check_h5_storage(h5, path)
            if model is None:
                _check_h5_layers(_h5_config(h5, path), path, keyword)
        if model is not None:
            if not model.built:
                raise ValueError(
                    f"{keyword}= is a Keras model that is not built yet; build it (call it once "
                    f"on a batch) before loading the weights in {path}"
                )
            before = [v.numpy() for v in model.weights]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.load_weights(copy)
            except Exception as err:  # Keras raises ValueError, KeyError... on mismatches
                for variable, value in zip(model.weights, before, strict=True):
                    variable.assign(value)
                raise ValueError(
                    f"could not load the weights in {path} into the model given as {keyword}= "
                    f"(its layers differ from the saved model's; its weights are unchanged): "
                    f"{_short(err)}"
                ) from err
            return model
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = keras.saving.load_model(
                    copy, custom_objects=dict(_TF_FUNCTION_ALIASES), safe_mode=True, compile=False
                )
        except Exception as err:  # unknown classes, malformed configs
            raise ValueError(
                f"{path} cannot be loaded in Keras' safe mode ({_short(err)}). Build the model "
                f"and pass it as {keyword}= to load only its weights"
            ) from err
    logger.debug("loaded %s from %s", name, path)
    return loaded


#: Largest width a layer of a user's ``.keras`` model may ask for (units, filters, ...): a
#: larger one would have Keras allocate its weights before a byte of them is read.
MAX_KERAS_WIDTH: int = 2**20
#: Largest number of parameters a ``.keras`` model's layers may declare, per byte of weights
#: the archive holds (float16 weights hold 0.5 parameters per byte; 1 leaves room).
_PARAMS_PER_WEIGHT_BYTE = 1.0
_WIDTH_KEYS = ("units", "filters", "output_dim", "input_dim", "num_heads", "key_dim", "value_dim")
_MAX_KERAS_CONFIG_BYTES = 64 * 2**20


def _check_keras_archive(data: bytes, path: Path) -> None:
    """Bound a ``.keras`` archive before Keras builds anything from it: a zip whose members
    unpack to a bounded size, a ``config.json`` without code layers, no layer wider than
    :data:`MAX_KERAS_WIDTH`, and no Dense / Conv / Embedding layer declaring more weights than
    the archive's weights file can hold."""
    import io
    import json
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {info.filename: info for info in archive.infolist()}
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a .keras archive (not a zip file)") from None
    unpacked = sum(info.file_size for info in members.values())
    if unpacked > 2**34:
        raise ValueError(f"{path} unpacks to {unpacked} bytes (more than 16 GiB): refused")
    config_info = members.get("config.json")
    if config_info is None:
        raise ValueError(f"{path} is not a .keras archive: it has no config.json")
    if config_info.file_size > _MAX_KERAS_CONFIG_BYTES:
        raise ValueError(f"{path}: its config.json is {config_info.file_size} bytes: refused")
    try:
        config = json.loads(archive.read("config.json"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: its config.json is not valid JSON ({err})") from None
    _check_h5_layers(config, path, "model")
    weight_bytes = sum(info.file_size for name, info in members.items() if name.endswith(".h5"))
    declared = 0
    todo: list[Any] = [config]
    while todo:
        value = todo.pop()
        if isinstance(value, list):
            todo.extend(value)
            continue
        if not isinstance(value, dict):
            continue
        cfg = value.get("config")
        if isinstance(cfg, dict) and isinstance(value.get("class_name"), str):
            declared += _declared_params(value["class_name"], cfg, path)
        todo.extend(value.values())
    if declared > max(weight_bytes * _PARAMS_PER_WEIGHT_BYTE, 2**16):
        raise ValueError(
            f"{path} declares at least {declared} parameters but holds {weight_bytes} bytes of "
            "weights: refused (building it would allocate what the file cannot fill)"
        )


def _declared_params(cls: str, cfg: dict[str, Any], path: Path) -> int:
    """A lower bound of a layer's parameters from its own config (widths checked on the way)."""
    for key in _WIDTH_KEYS:
        width = cfg.get(key)
        if isinstance(width, int) and not isinstance(width, bool) and width > MAX_KERAS_WIDTH:
            raise ValueError(
                f"{path}: layer {cfg.get('name')!r} ({cls}) asks for {key}={width}, more than "
                f"{MAX_KERAS_WIDTH}: refused"
            )
    kernel = cfg.get("kernel_size")
    taps = 1
    if isinstance(kernel, int):
        taps = kernel
    elif isinstance(kernel, list) and all(isinstance(k, int) for k in kernel):
        for k in kernel:
            taps *= k
    if cls == "Embedding":
        dims = [cfg.get("input_dim"), cfg.get("output_dim")]
        if all(isinstance(d, int) for d in dims):
            return dims[0] * dims[1]
    for key in ("units", "filters"):
        width = cfg.get(key)
        if isinstance(width, int) and width > 0:
            return width * max(taps, 1)  # at least one input channel per output unit
    return 0


def load_keras_file(path: str | Path) -> Any:
    """A user's ``.keras`` model file, loaded in Keras' safe mode (no Lambda code), not compiled.

    The bytes are read once and parsed from a private temporary copy.

    Raises
    ------
    ValueError
        If the file is not a ``.keras`` archive, declares layers wider than
        :data:`MAX_KERAS_WIDTH` or more weights than it holds, holds code layers, or safe mode
        refuses it (the message says why).

    Examples
    --------
    >>> teacher = load_keras_file("classifier.keras")  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path} is not a .keras file (Keras 3's archive format)")
    _check_keras_version()
    data = files.read_limited(path, 2**34, "a Keras model")
    _check_keras_archive(data, path)
    with tempfile.TemporaryDirectory(prefix="distilldetect-keras-") as tmp:
        copy = Path(tmp) / "model.keras"
        copy.write_bytes(data)
        try:
            return _safe_load(copy)
        except Exception as err:  # safe-mode refusals and unknown classes
            raise ValueError(
                f"{path} cannot be loaded in Keras' safe mode ({_short(err)}); a model with a "
                "Lambda layer or a custom class must be built in code (module:factory)"
            ) from err
