"""The study's teacher on disk: a folder with ``teacher.json`` and the weights (safetensors).

Written through :func:`distilldetect.files.replace_folder` (a new data folder, then an atomic
rename of ``teacher.json``) and the backend's model IO, so an interrupted training run never
leaves a half-written teacher that a later run would trust, and nothing else in the folder is
ever deleted. ``load_teacher`` also accepts a folder written by
:func:`distilldetect.save_detector` (its teacher is used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import files
from ..backends import BACKENDS, framework_of, get_backend

CONFIG = "teacher.json"


def exists(directory: Path) -> bool:
    """Whether ``directory`` holds a complete cached teacher."""
    return (directory / CONFIG).is_file()


def save_teacher(model: Any, directory: Path) -> None:
    """Save a zoo teacher (architecture by builder name + weights) atomically into ``directory``."""
    framework = framework_of(model)

    def write(data_dir: Path) -> dict[str, Any]:
        entry = get_backend(framework).save_model(model, data_dir, "teacher")
        checksums = {f: files.sha256_file(data_dir / f) for f in entry["files"]}
        return {"framework": framework, "model": entry, "checksums": checksums}

    files.replace_folder(
        Path(directory), write, manifest=CONFIG, owned=lambda _: set(), what="a cached teacher"
    )


def load_teacher(directory: Path) -> Any:
    """Load a teacher saved by :func:`save_teacher`, or the teacher of a saved detector.

    The weights are checked against the SHA-256 recorded at save time before they are parsed.
    """
    directory = Path(directory)
    if (directory / CONFIG).is_file():

        def read(data_dir: Path, spec: dict[str, Any]) -> Any:
            framework = spec.get("framework")
            if framework not in BACKENDS or not isinstance(spec.get("model"), dict):
                raise files.DetectorFormatError(
                    f"{directory / CONFIG} names an unknown framework {framework!r}; expected one "
                    f"of {sorted(BACKENDS)}"
                )
            entry = {**spec["model"], "checksums": spec.get("checksums") or {}}
            return get_backend(framework).load_model(data_dir, entry)

        return files.read_folder(directory, read, manifest=CONFIG)
    if (directory / "config.json").is_file():
        from ..saving import load_detector

        return load_detector(directory).model
    raise ValueError(
        f"{str(directory)!r} holds neither a cached teacher ({CONFIG}) nor a saved detector (config.json)"
    )
