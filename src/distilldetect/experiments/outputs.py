"""The study's output folder: written atomically, and never at the cost of the user's files.

A study writes its files (results.json, report.md, report.html, figures, and the fitted detector
as a folder, ``detector/``) into ``--out`` and
records each in a manifest, ``.distilldetect-study.json`` (name, SHA-256, size). A folder can be
written into when it is new, empty, or holds only files of an earlier study run that are
unchanged since that run wrote them. Anything else in it — a file of the user's, a study file
edited since — makes :func:`prepare_output_dir` refuse with a message listing what is in the
way. Every file is written to a temporary sibling and renamed into place, so a reader sees the
old or the new file whole. Nothing is ever deleted except the study's own temporaries and its
own unchanged files of an earlier run that this run does not write again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "OutputDir", "default_out_dir", "lap_timer", "prepare_output_dir"]

logger = logging.getLogger(__name__)

#: The manifest of the files a study wrote into its output folder.
MANIFEST = ".distilldetect-study.json"
_TMP_PREFIX = ".distilldetect-tmp-"
_FORMAT = "distilldetect-study-outputs"


def lap_timer(timings: dict[str, float]) -> Callable[[str, float], float]:
    """``lap(name, since)``: record the seconds since ``since`` under ``timings[name]`` (rounded
    to 10 ms) and return now, for the studies' per-stage timings.

    Examples
    --------
    >>> timings = {}
    >>> lap = lap_timer(timings)
    >>> _ = lap("data", time.perf_counter())
    >>> list(timings)
    ['data']
    """

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 2)
        return now

    return lap


def default_out_dir(dataset: str) -> Path:
    """``results/<dataset>-<timestamp>``."""
    return Path("results") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    path = directory / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return {}
    files = data.get("files")
    if not isinstance(files, dict):
        return {}
    return {
        name: entry
        for name, entry in files.items()
        if isinstance(name, str)
        and isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
    }


def _in_the_way(directory: Path, manifest: dict[str, dict[str, Any]]) -> list[str]:
    """Names in ``directory`` that the study may not replace (the user's, or edited since)."""
    blocked = []
    for entry in sorted(os.listdir(directory)):
        path = directory / entry
        if entry == MANIFEST or (entry.startswith(_TMP_PREFIX) and path.is_file()):
            continue
        recorded = manifest.get(entry)
        if recorded is not None and recorded.get("kind") == "detector":
            if path.is_symlink() or not (path / "config.json").is_file():
                blocked.append(entry)
            elif _sha256(path / "config.json") != recorded["sha256"]:
                blocked.append(f"{entry} (changed since the study wrote it)")
        elif recorded is None or path.is_symlink() or not path.is_file():
            blocked.append(entry)
        elif path.stat().st_size != recorded.get("bytes") or _sha256(path) != recorded["sha256"]:
            blocked.append(f"{entry} (changed since the study wrote it)")
    return blocked


def prepare_output_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` or check that the study may write into it; ValueError if not.

    Raises
    ------
    ValueError
        If ``out`` is not a folder, cannot be written, or holds anything the study did not
        write (listed in the message).
    """
    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"output directory {str(directory)!r} exists and is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{_TMP_PREFIX}{uuid.uuid4().hex[:12]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"output directory {str(directory)!r} cannot be written: {err.strerror or err}"
        ) from err
    blocked = _in_the_way(directory, _read_manifest(directory))
    if blocked:
        shown = ", ".join(blocked[:5]) + (
            f" and {len(blocked) - 5} more" if len(blocked) > 5 else ""
        )
        raise ValueError(
            f"output directory {str(directory)!r} holds files the study did not write ({shown}); "
            "the study never replaces them: choose a new or empty folder"
        )
    return directory


class OutputDir:
    """Writes the study's files into a folder checked by :func:`prepare_output_dir`.

    Each :meth:`write` goes to a temporary sibling, is recorded in the manifest, then renamed
    into place. :meth:`finish` removes the study's own unchanged files of an earlier run that
    this run did not write again, and its stale temporaries.
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.path = prepare_output_dir(out)
        self._earlier = _read_manifest(self.path)
        self._files: dict[str, dict[str, Any]] = {}
        self.written: list[Path] = []

    def write(self, name: str, data: bytes | str) -> Path:
        """Write ``data`` to ``<out>/<name>`` atomically; return the path."""
        if not name or "/" in name or name.startswith(".") or name == MANIFEST:
            raise ValueError(f"output file name must be a plain visible name, got {name!r}")
        blob = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        target = self.path / name
        if target.exists() and (target.is_symlink() or not target.is_file()):
            raise ValueError(f"{target} exists and is not a regular file; not replacing it")
        tmp = self.path / f"{_TMP_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            self._files[name] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
            self._write_manifest()
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.written.append(target)
        return target

    def save_detector(self, detector: Any, name: str) -> Path:
        """Save ``detector`` with :func:`~distilldetect.save_detector` into ``<out>/<name>/``
        (atomic, checksummed) and record it (the SHA-256 of its self-checksummed config.json)."""
        if not name or "/" in name or name.startswith(".") or name == MANIFEST:
            raise ValueError(f"output folder name must be a plain visible name, got {name!r}")
        from ..saving import save_detector

        target = self.path / name
        save_detector(detector, target)
        config = target / "config.json"
        self._files[name] = {
            "kind": "detector",
            "sha256": _sha256(config),
            "bytes": config.stat().st_size,
        }
        self._write_manifest()
        self.written.append(target)
        return target

    def _write_manifest(self) -> None:
        files = {**self._earlier, **self._files}
        blob = json.dumps({"format": _FORMAT, "files": files}, indent=1).encode("utf-8")
        tmp = self.path / f"{_TMP_PREFIX}{uuid.uuid4().hex[:12]}"
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / MANIFEST)

    def finish(self) -> None:
        """Drop this study's stale files of an earlier run (only if unchanged) and temporaries."""
        for name, entry in list(self._earlier.items()):
            if name in self._files:
                continue
            path = self.path / name
            if entry.get("kind") == "detector":
                continue  # a folder: never removed
            if path.is_file() and not path.is_symlink() and _sha256(path) == entry["sha256"]:
                path.unlink()
            if not path.exists():
                del self._earlier[name]
        self._write_manifest()
        for entry in os.listdir(self.path):
            path = self.path / entry
            if entry.startswith(_TMP_PREFIX) and path.is_file():
                path.unlink()
