"""The saved detector's folder: its layout, its ``config.json``, and the reader of older layouts.

Format version 2 (written since distilldetect 0.2)::

    detector/
      config.json          the record (see :mod:`.codec`), the SHA-256 and size of every data
                           file, the name of the data folder, and the checksum of config.json
                           itself; replaced by an atomic rename
      v-<time>-<id>/       the data folder of this save, never modified once written:
        model.safetensors, distilled_model.safetensors, x_ref.safetensors,
        preprocess_fn/...  (the ModelDistillation whose score a drift detector tests)
      .lock                held by writers

A save writes a new data folder, then replaces ``config.json``, then removes the old data
folder (:func:`distilldetect.files.replace_folder`): a reader sees the old detector or the new
one, whole, and a kill leaves the old one in place. Format version 1 (distilldetect 0.1: the
files and ``config.json`` flat in the folder, config not self-checked) is still read: its
record is translated here into the version-2 record, and loading takes the same path.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .. import files
from .._version import __version__
from ..base import describe

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "MAX_CONFIG_BYTES",
    "read_config",
    "file_table",
    "owned_entries",
    "translate_v1",
]

#: Value of ``config.json``'s ``format`` key: marks a folder written by ``save_detector``.
FORMAT_NAME: str = "distilldetect-detector"
#: Version of the folder layout written; this version and older ones are read.
FORMAT_VERSION: int = 2
#: Name of the configuration file of a saved detector.
CONFIG_FILE: str = "config.json"
#: Largest ``config.json`` read.
MAX_CONFIG_BYTES: int = 64 * 2**20
#: Folder (inside a format-1 drift detector) holding the ModelDistillation of its preprocess_fn.
V1_PREPROCESS_DIR: str = "preprocess_fn"

_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
_TOP_KEYS = {"format", "format_version", "library_version", "detector", "files", "data", "checksum"}


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_config(directory: Path) -> tuple[dict[str, Any], bytes]:
    """Parse and check the top of ``directory/config.json``: ``(config, raw bytes)``."""
    path = directory / CONFIG_FILE
    raw = files.read_limited(path, MAX_CONFIG_BYTES, "a detector config")
    try:
        config = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise files.DetectorFormatError(
            f"{path} is not a valid JSON detector config: {err}"
        ) from None
    if not isinstance(config, dict):
        raise files.DetectorFormatError(
            f"{path} must hold a JSON object, got {type(config).__name__}"
        )
    if config.get("format") != FORMAT_NAME:
        raise files.DetectorFormatError(
            f"{path} is not a distilldetect detector config: 'format' is {config.get('format')!r}, "
            f"expected {FORMAT_NAME!r}"
        )
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise files.DetectorFormatError(
            f"{path}: 'format_version' must be an integer >= 1, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise files.DetectorFormatError(
            f"{path} was saved by a newer distilldetect (format version {version}, library version "
            f"{config.get('library_version')!r}); this distilldetect {__version__} reads format "
            f"versions up to {FORMAT_VERSION}. Upgrade distilldetect to load it"
        )
    if version == FORMAT_VERSION:
        missing = sorted(_TOP_KEYS - set(config))
        extra = sorted(set(config) - _TOP_KEYS)
        if missing or extra:
            raise files.DetectorFormatError(
                f"{path} has missing keys {missing} and unknown keys {extra}; expected exactly "
                f"{sorted(_TOP_KEYS)}"
            )
    return config, raw


def file_table(table: Any, where: Path) -> dict[str, dict[str, Any]]:
    """``{file: {'sha256', 'bytes'}}`` from a config's ``files`` list, every item checked."""
    sha = re.compile(r"^[0-9a-f]{64}$")
    if not isinstance(table, list):
        raise files.DetectorFormatError(f"{where}: 'files' must be a list")
    out: dict[str, dict[str, Any]] = {}
    for item in table:
        if not isinstance(item, dict) or set(item) != {"file", "sha256", "bytes"}:
            raise files.DetectorFormatError(
                f"{where}: each 'files' item must be {{'file', 'sha256', 'bytes'}}, got {describe(item)}"
            )
        rel, digest, size = item["file"], item["sha256"], item["bytes"]
        if not isinstance(rel, str) or rel in out or rel == CONFIG_FILE:
            raise files.DetectorFormatError(f"{where}: {rel!r} is listed twice or is not a name")
        parts = rel.split("/")
        if len(parts) > 2 or not all(_SAFE_PART.match(part) for part in parts):
            raise files.DetectorFormatError(
                f"{where}: {rel!r} is not an allowed file name (plain names of letters, digits, "
                "'_', '-', '.', inside the detector's folder)"
            )
        if not isinstance(digest, str) or not sha.match(digest):
            raise files.DetectorFormatError(f"{where}: the sha256 of {rel!r} is not a hex digest")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise files.DetectorFormatError(f"{where}: the size of {rel!r} is not a byte count")
        out[rel] = {"sha256": digest, "bytes": size}
    return out


def table_of(data_dir: Path) -> list[dict[str, Any]]:
    """``[{file, sha256, bytes}]`` of every file under a freshly written data folder."""
    table = []
    for root, dirs, names in os.walk(data_dir):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            table.append({"file": path.relative_to(data_dir).as_posix(), **files.sha256_file(path)})
    return table


def owned_entries(directory: Path) -> set[str]:
    """The entries of ``directory`` that an earlier ``save_detector`` wrote (to be replaced).

    For a format-2 folder: its ``config.json``, the lock and the data folders (any
    ``v-<time>-<id>`` folder, current or left by a killed save). For a format-1 folder: its
    ``config.json`` and the files its table lists. Anything else belongs to the user.
    """
    owned: set[str] = set()
    if not (directory / CONFIG_FILE).exists():
        return owned
    try:
        config, _ = read_config(directory)
    except (files.DetectorFormatError, OSError):
        return owned  # not a detector: nothing in it is ours
    owned.add(CONFIG_FILE)
    if config["format_version"] == 1:
        try:
            listed = file_table(config.get("files"), directory / CONFIG_FILE)
        except files.DetectorFormatError:
            return {CONFIG_FILE}
        owned |= {rel.split("/")[0] for rel in listed}
    return owned


# ------------------------------------------------------------------------ format 1 (0.1.x)
def _v1_model(entry: Any, sub: str) -> dict[str, Any]:
    return {"$model": {"dir": sub, "entry": entry}}


def _v1_record(directory: Path, config: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The version-2 record of a format-1 config (``prefix``: its folder inside the root)."""
    where = directory / CONFIG_FILE
    detector = config.get("detector")
    settings, meta = config.get("settings"), config.get("meta")
    if not isinstance(settings, dict) or not isinstance(meta, dict):
        raise files.DetectorFormatError(f"{where}: 'settings' and 'meta' must be JSON objects")
    sub = prefix.rstrip("/")

    def get(key: str) -> Any:
        if key not in settings:
            raise files.DetectorFormatError(f"{where}: settings[{key!r}] is missing")
        return settings[key]

    data_type = meta.get("data_type") if isinstance(meta.get("data_type"), str) else None
    if detector == "ModelDistillation":
        models = config.get("models")
        if not isinstance(models, dict) or set(models) != {"model", "distilled_model"}:
            raise files.DetectorFormatError(
                f"{where}: 'models' must hold model and distilled_model"
            )
        return {
            "class": "ModelDistillation",
            "config": {
                "threshold": get("threshold"),
                "loss_type": get("loss_type"),
                "temperature": get("temperature"),
                "data_type": data_type,
                "input_shape": get("input_shape"),
                "model": _v1_model(models["model"], sub),
                "distilled_model": _v1_model(models["distilled_model"], sub),
            },
            "state": {"history": get("history"), "meta": meta},
        }
    if detector == "KSDrift":
        x_ref = config.get("x_ref")
        if not isinstance(x_ref, dict) or set(x_ref) != {"file", "dtype", "shape"}:
            raise files.DetectorFormatError(
                f"{where}: 'x_ref' must be {{'file', 'dtype', 'shape'}}"
            )
        entry = config.get("preprocess_fn")
        preprocess: Any = None
        if entry is not None:
            if (
                not isinstance(entry, dict)
                or set(entry) != {"type", "directory", "call", "keywords"}
                or entry["type"] != "ModelDistillation.score"
                or entry["directory"] != V1_PREPROCESS_DIR
                or entry["call"] not in ("method", "partial")
            ):
                raise files.DetectorFormatError(f"{where}: 'preprocess_fn' is not a saved score")
            nested_dir = directory / V1_PREPROCESS_DIR
            nested, _ = read_config(nested_dir)
            if nested.get("format_version") != 1:
                raise files.DetectorFormatError(f"{nested_dir / CONFIG_FILE}: expected format 1")
            preprocess = {
                "$score": {
                    "detector": _v1_record(nested_dir, nested, f"{prefix}{V1_PREPROCESS_DIR}/"),
                    "keywords": entry["keywords"] if entry["call"] == "partial" else {},
                }
            }
        stored_preprocessed = bool(get("x_ref_preprocessed")) or (
            preprocess is not None and bool(get("preprocess_at_init"))
        )
        return {
            "class": "KSDrift",
            "config": {
                "x_ref": {"$array": {**x_ref, "file": f"{prefix}{x_ref['file']}", "key": "x_ref"}},
                "p_val": get("p_val"),
                "x_ref_preprocessed": stored_preprocessed,
                "preprocess_at_init": get("preprocess_at_init"),
                "update_x_ref": get("update_x_ref"),
                "preprocess_fn": preprocess,
                "correction": get("correction"),
                "alternative": get("alternative"),
                "n_features": get("n_features"),
                "input_shape": get("input_shape"),
                "data_type": data_type,
                "seed": get("seed"),
            },
            "state": {"n": get("n"), "rng_state": get("rng_state"), "meta": meta},
        }
    raise files.DetectorFormatError(
        f"{where}: unknown detector {detector!r}; expected 'ModelDistillation' or 'KSDrift'"
    )


def translate_v1(directory: Path, config: dict[str, Any]) -> dict[str, Any]:
    """A format-1 folder's config as a version-2 record plus its file table (paths from the root)."""
    return {"detector": _v1_record(directory, config, ""), "files": config.get("files")}
