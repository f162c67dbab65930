"""Detector <-> JSON record: what a saved folder says, independent of where the bytes live.

A detector describes itself (``get_config`` / ``get_state``, see
:class:`~distilldetect.base.BaseDetector`); this module turns that description into a JSON
*record* and back. Values that are not JSON become references to files of the data folder:

* a numpy array -> ``{"$array": {"file", "key", "dtype", "shape"}}`` (safetensors);
* a model (keys ``model`` / ``distilled_model``) -> ``{"$model": {"dir", "entry"}}``, the entry
  written by the framework backend's ``save_model`` (or a black-box callable's description);
* a saved detector's ``score`` (``ad.score`` or ``functools.partial(ad.score, batch_size=n)``,
  as ``ad.drift_detector`` builds) -> ``{"$score": {"detector": <nested record>, "keywords"}}``.

Decoding rebuilds each value (models through the backends, arrays from checked bytes) and calls
``from_config`` — so the constructor's checks are the only checks — then ``set_state``.
"""

from __future__ import annotations

import functools
import numbers
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import files
from ..base import DETECTORS, check_json, describe

__all__ = ["encode", "decode", "MODEL_KEYS", "SCORE_KEYWORDS", "ARRAY_DTYPES"]

#: Config keys whose value is a model.
MODEL_KEYS: tuple[str, ...] = ("model", "distilled_model")
#: Keyword arguments of ``score`` that a saved ``preprocess_fn`` may bind.
SCORE_KEYWORDS: frozenset[str] = frozenset({"batch_size"})
#: Dtypes of arrays that safetensors stores.
ARRAY_DTYPES: frozenset[str] = frozenset(
    {
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
)
_REFS = ("$array", "$model", "$score")


def _load_registry() -> None:
    """Import the packages whose classes register in :data:`~distilldetect.base.DETECTORS`."""
    import distilldetect.ad  # noqa: F401
    import distilldetect.cd  # noqa: F401


def detector_class(detector: Any, name: str) -> str:
    """The registered class name of ``detector`` (exact class only; a subclass's code is not
    saved, so it is refused)."""
    _load_registry()
    for cls_name, cls in DETECTORS.items():
        if type(detector) is cls:
            return cls_name
    for cls_name, cls in DETECTORS.items():
        if isinstance(detector, cls):
            raise TypeError(
                f"{name} is a {type(detector).__name__}, a subclass of {cls_name}: only "
                f"{cls_name} itself can be saved (a subclass may compute other scores, and its "
                "code cannot be saved without pickle)"
            )
    raise TypeError(f"{name} must be one of {sorted(DETECTORS)}, got {describe(detector)}")


# ==================================================================================== encoding
class _Writer:
    """Collects the files a record needs; :meth:`flush` writes them into the data folder."""

    def __init__(self) -> None:
        self.arrays: list[tuple[str, str, np.ndarray]] = []  # (file, key, array)
        self.models: list[tuple[str, str, Any, dict[str, Any]]] = []  # (dir, name, model, ref)

    def flush(self, data_dir: Path) -> None:
        import safetensors.numpy

        from ..backends import framework_of, get_backend

        for file, key, array in self.arrays:
            path = data_dir / file
            path.parent.mkdir(parents=True, exist_ok=True)
            files.write_new(path, safetensors.numpy.save({key: np.ascontiguousarray(array)}))
        for sub, name, model, ref in self.models:
            directory = data_dir / sub if sub else data_dir
            directory.mkdir(parents=True, exist_ok=True)
            if _is_onnx(model):
                from ..backends import onnx

                entry = onnx.save_teacher(model, directory, name)
            else:
                entry = get_backend(framework_of(model)).save_model(model, directory, name)
            if not isinstance(entry, dict) or entry.get("name") != name:
                raise RuntimeError(f"the backend returned an invalid entry for {name}")
            check_json(entry, f"the saved entry of {name}")
            ref["entry"] = entry


def _is_onnx(model: Any) -> bool:
    """An ONNX teacher: a black box whose graph can be saved (it is data, not code)."""
    from ..backends.onnx import OnnxTeacher

    return isinstance(model, OnnxTeacher)


def _callable_description(fn: Any) -> str:
    """``module.qualname`` of a black-box teacher, for messages (never imported)."""
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType):  # a bound method
        cls = type(owner)
        return f"{cls.__module__}.{cls.__qualname__}.{getattr(fn, '__name__', '?')}"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', None) or type(fn).__qualname__}"


def _score_owner(fn: Any) -> tuple[Any, dict[str, Any]] | None:
    """``(detector, keywords)`` if ``fn`` is a registered detector's ``score`` (or a partial
    binding only :data:`SCORE_KEYWORDS` to integers), else None."""
    keywords: dict[str, Any] = {}
    target = fn
    if isinstance(fn, functools.partial):
        if fn.args:
            return None
        keywords, target = dict(fn.keywords), fn.func
    owner = getattr(target, "__self__", None)
    if owner is None or getattr(target, "__name__", None) != "score":
        return None
    cls = DETECTORS.get(getattr(owner, "meta_name", ""))
    if cls is None or type(owner) is not cls or target.__func__ is not cls.score:
        return None
    if set(keywords) - SCORE_KEYWORDS or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in keywords.values()
    ):
        return None
    return owner, keywords


def _encode_value(key: str, value: Any, prefix: str, writer: _Writer, name: str) -> Any:
    from ..backends import framework_of

    where = f"{name}.{key}"
    if isinstance(value, np.ndarray):
        if value.dtype.name not in ARRAY_DTYPES:
            raise ValueError(
                f"{where} has dtype {value.dtype}, which cannot be saved; supported: "
                f"{sorted(ARRAY_DTYPES)}"
            )
        file = f"{prefix}{key}.safetensors"
        writer.arrays.append((file, key, value))
        return {"$array": {"file": file, "key": key, "dtype": value.dtype.name,
                           "shape": list(value.shape)}}  # fmt: skip
    if key in MODEL_KEYS:
        framework = framework_of(value)
        if framework == "callable" and not _is_onnx(value):
            entry = {"name": key, "framework": "callable", "format": "none", "files": [],
                     "class": _callable_description(value)}  # fmt: skip
            return {"$model": {"dir": prefix.rstrip("/"), "entry": entry}}
        ref: dict[str, Any] = {"dir": prefix.rstrip("/"), "entry": None}
        writer.models.append((prefix.rstrip("/"), key, value, ref))
        return {"$model": ref}
    if callable(value):
        owner = _score_owner(value)
        if owner is None:
            raise ValueError(
                f"{where} ({describe(value)}) cannot be saved: only None, a ModelDistillation's "
                "score (ad.score) or functools.partial(ad.score, batch_size=n) can be, because "
                "saving any other function would mean saving code, which only pickle does and "
                "loading pickle can run arbitrary code. Set it to None before saving, or build "
                "the drift detector with ad.drift_detector(x_ref)"
            )
        detector, keywords = owner
        nested = _encode(detector, f"{prefix}{key}/", writer, f"the detector of {where}")
        return {"$score": {"detector": nested, "keywords": keywords}}
    if isinstance(value, dict) and any(k in _REFS for k in value):
        raise ValueError(f"{where} has a key of {_REFS}, which saving reserves")
    if isinstance(value, tuple):
        value = list(value)
    check_json(value, where)
    return value


def _encode(detector: Any, prefix: str, writer: _Writer, name: str) -> dict[str, Any]:
    cls_name = detector_class(detector, name)
    config = detector.get_config()
    state = detector.get_state()
    check_json(state, f"{name} state")
    encoded = {k: _encode_value(k, v, prefix, writer, name) for k, v in config.items()}
    return {"class": cls_name, "config": encoded, "state": state}


def encode(detector: Any) -> tuple[dict[str, Any], Callable[[Path], None]]:
    """The JSON record of ``detector`` and a function writing its files into a data folder.

    Everything that can be checked (savable values, JSON settings and state) is checked here,
    before a byte is written.

    Examples
    --------
    >>> from distilldetect import KSDrift
    >>> record, write = encode(KSDrift(np.zeros((5, 2)), p_val=0.1))
    >>> record["class"], record["config"]["x_ref"]["$array"]["shape"]
    ('KSDrift', [5, 2])
    """
    writer = _Writer()
    record = _encode(detector, "", writer, "detector")
    return record, writer.flush


# ==================================================================================== decoding
class Reader:
    """Reads the files of one data folder, each checked against the record's file table."""

    def __init__(self, data_dir: Path, table: dict[str, dict[str, Any]], where: Path) -> None:
        self.data_dir, self.table, self.where = data_dir, table, where

    def path(self, rel: str) -> Path:
        return safe_path(self.data_dir, rel, self.where)

    def read(self, rel: str) -> bytes:
        if rel not in self.table:
            raise files.DetectorFormatError(
                f"{self.where}: {rel!r} is used but not listed in 'files'"
            )
        return files.read_checked(self.path(rel), self.table[rel], f"listed in {self.where}")

    def checksums(self, directory: str, names: list[str]) -> dict[str, dict[str, Any]]:
        out = {}
        for name in names:
            rel = f"{directory}/{name}" if directory else name
            if not isinstance(name, str) or "/" in name or rel not in self.table:
                raise files.DetectorFormatError(
                    f"{self.where}: the model file {name!r} is not listed in 'files'"
                )
            out[name] = self.table[rel]
        return out


_SAFE_PART = __import__("re").compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


def safe_path(directory: Path, rel: Any, where: Path) -> Path:
    """``directory / rel`` for a plain relative name (at most one sub-folder, no links)."""
    import stat

    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or len(parts) > 2 or not all(_SAFE_PART.match(p) for p in parts):
        raise files.DetectorFormatError(
            f"{where}: {rel!r} is not an allowed file name (plain names of letters, digits, '_', "
            "'-', '.', inside the detector's folder)"
        )
    path = directory
    for part in parts[:-1]:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise files.DetectorFormatError(f"{path} is missing (listed in {where})") from None
        if not stat.S_ISDIR(mode):
            raise files.DetectorFormatError(f"{path} must be a plain folder (not a link)")
    return path / parts[-1]


def _decode_array(ref: Any, reader: Reader) -> np.ndarray:
    import safetensors.numpy

    if not isinstance(ref, dict) or set(ref) != {"file", "key", "dtype", "shape"}:
        raise files.DetectorFormatError(f"{reader.where}: an '$array' reference is malformed")
    data = reader.read(ref["file"])
    try:
        arrays = safetensors.numpy.load(data)
    except Exception as err:  # safetensors raises its own error types
        path = reader.path(ref["file"])
        raise files.DetectorFormatError(f"{path} is not a valid safetensors file: {err}") from None
    if set(arrays) != {ref["key"]}:
        raise files.DetectorFormatError(
            f"{reader.path(ref['file'])} must hold one array {ref['key']!r}, got {sorted(arrays)}"
        )
    x = arrays[ref["key"]]
    if x.dtype.name != ref["dtype"] or list(x.shape) != ref["shape"]:
        raise files.DetectorFormatError(
            f"{reader.path(ref['file'])} holds an array of dtype {x.dtype} and shape "
            f"{list(x.shape)}, but the record says dtype {ref['dtype']} and shape {ref['shape']}"
        )
    return np.array(x)  # writeable, owns its memory


def _decode_model(key: str, ref: Any, reader: Reader, given: dict[str, Any]) -> Any:
    from ..backends import BACKENDS, get_backend

    where = reader.where
    if not isinstance(ref, dict) or set(ref) != {"dir", "entry"} or not isinstance(ref["dir"], str):
        raise files.DetectorFormatError(f"{where}: the '$model' reference of {key!r} is malformed")
    entry = ref["entry"]
    if not isinstance(entry, dict) or entry.get("name") != key:
        raise files.DetectorFormatError(f"{where}: models[{key!r}] is not a valid model entry")
    framework = entry.get("framework")
    model = given.get(key)
    if framework == "callable":
        if set(entry) != {"name", "framework", "format", "files", "class"}:
            raise files.DetectorFormatError(f"{where}: the black-box {key} entry is malformed")
        if model is None:
            raise ValueError(
                f"the detector at {where.parent} was saved with a black-box {key} "
                f"({entry['class']}), which cannot be saved; pass it again: "
                f"load_detector(..., {key}=...)"
            )
        if not callable(model):
            raise TypeError(f"{key} must be callable, got {describe(model)}")
        return model
    if framework == "onnx":
        names = entry.get("files")
        if set(entry) != {"name", "framework", "format", "files"} or not (
            isinstance(names, list) and len(names) == 1 and isinstance(names[0], str)
        ):
            raise files.DetectorFormatError(f"{where}: the ONNX {key} entry is malformed")
        from ..backends import onnx

        directory = (
            safe_path(reader.data_dir, f"{ref['dir']}/x", where).parent
            if ref["dir"]
            else reader.data_dir
        )
        checked = {**entry, "checksums": reader.checksums(ref["dir"], names)}
        try:
            return onnx.load_teacher(directory, checked)
        except ImportError as err:
            raise ValueError(f"loading the saved {key} needs {err}") from err
    if framework not in BACKENDS:
        raise files.DetectorFormatError(
            f"{where}: models[{key!r}] has unknown framework {framework!r}; expected one of "
            f"{sorted(BACKENDS) + ['callable']}"
        )
    names = entry.get("files")
    if not isinstance(names, list) or not names:
        raise files.DetectorFormatError(
            f"{where}: models[{key!r}]['files'] must be a non-empty list"
        )
    checked = {**entry, "checksums": reader.checksums(ref["dir"], names)}
    directory = (
        safe_path(reader.data_dir, f"{ref['dir']}/x", where).parent
        if ref["dir"]
        else reader.data_dir
    )
    try:
        backend = get_backend(framework)
    except ImportError as err:
        raise ValueError(f"loading the saved {key} needs {err}") from err
    return backend.load_model(directory, checked, model=model)


def _decode(record: Any, reader: Reader, given: dict[str, Any], used: set[str], name: str) -> Any:
    from ..base import check_keys

    _load_registry()
    try:
        check_keys(record, {"class", "config", "state"}, set(), name)
    except (TypeError, ValueError) as err:
        raise files.DetectorFormatError(f"{reader.where}: {err}") from None
    cls = DETECTORS.get(record["class"]) if isinstance(record["class"], str) else None
    if cls is None:
        raise files.DetectorFormatError(
            f"{reader.where}: unknown detector {record['class']!r}; expected one of {sorted(DETECTORS)}"
        )
    if not isinstance(record["config"], dict):
        raise files.DetectorFormatError(f"{reader.where}: {name}['config'] must be an object")
    config: dict[str, Any] = {}
    for key, value in record["config"].items():
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _REFS:
            kind, ref = next(iter(value.items()))
            if kind == "$array":
                config[key] = _decode_array(ref, reader)
            elif kind == "$model":
                config[key] = _decode_model(key, ref, reader, given)
                used.add(key)
            else:
                config[key] = _decode_score(ref, reader, given, used, f"{name}.{key}")
        else:
            config[key] = value
    try:
        detector = cls.from_config(config)
        detector.set_state(record["state"])
    except (TypeError, ValueError, KeyError) as err:
        raise files.DetectorFormatError(
            f"{reader.where}: the saved {record['class']} settings are invalid: {err}"
        ) from err
    return detector


def _decode_score(
    ref: Any, reader: Reader, given: dict[str, Any], used: set[str], name: str
) -> Any:
    if not isinstance(ref, dict) or set(ref) != {"detector", "keywords"}:
        raise files.DetectorFormatError(
            f"{reader.where}: the '$score' reference of {name} is malformed"
        )
    keywords = ref["keywords"]
    if (
        not isinstance(keywords, dict)
        or set(keywords) - SCORE_KEYWORDS
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in keywords.values()
        )
    ):
        raise files.DetectorFormatError(f"{reader.where}: {name} has invalid score keywords")
    detector = _decode(ref["detector"], reader, given, used, name)
    return functools.partial(detector.score, **keywords) if keywords else detector.score


def decode(record: Any, reader: Reader, given: dict[str, Any]) -> tuple[Any, set[str]]:
    """The detector of ``record`` and the names of the ``given`` models it used."""
    used: set[str] = set()
    detector = _decode(record, reader, given, used, "detector")
    return detector, used


def is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
