"""The study's teacher on disk: a folder with ``teacher.json`` and the weights (safetensors).

Written atomically (temporary sibling folder, then rename) through the backend's model IO, so
an interrupted training run never leaves a half-written teacher that a later run would trust.
``load_teacher`` also accepts a folder written by :func:`distilldetect.save_detector` (its
teacher is used).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..backends import framework_of

CONFIG = "teacher.json"


def exists(directory: Path) -> bool:
    """Whether ``directory`` holds a complete cached teacher."""
    return (directory / CONFIG).is_file()


def save_teacher(model: Any, directory: Path) -> None:
    """Save a zoo teacher (architecture by builder name + weights) atomically into ``directory``."""
    from importlib import import_module

    framework = framework_of(model)
    io = import_module(f"distilldetect.backends.{framework}_io")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        entry = io.save_model(model, tmp, "teacher")
        entry["checksums"] = {
            f: {
                "sha256": hashlib.sha256((tmp / f).read_bytes()).hexdigest(),
                "bytes": (tmp / f).stat().st_size,
            }
            for f in entry["files"]
        }
        (tmp / CONFIG).write_text(json.dumps({"framework": framework, "model": entry}, indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_teacher(directory: Path) -> Any:
    """Load a teacher saved by :func:`save_teacher`, or the teacher of a saved detector.

    The weights are checked against the SHA-256 recorded at save time before they are parsed.
    """
    from importlib import import_module

    config = directory / CONFIG
    if config.is_file():
        spec = json.loads(config.read_text())
        io = import_module(f"distilldetect.backends.{spec['framework']}_io")
        return io.load_model(directory, spec["model"])
    if (directory / "config.json").is_file():
        from ..saving import load_detector

        return load_detector(directory).model
    raise ValueError(
        f"{str(directory)!r} holds neither a cached teacher ({CONFIG}) nor a saved detector (config.json)"
    )
