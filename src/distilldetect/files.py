"""The byte layer under saving, the backends' model IO and every writer of the library.

Everything that touches bytes on disk goes through here, so that each rule is written once:

* **checked reads** — a file is read only if it is a regular file (not a link) of the recorded
  size, and its SHA-256 is compared with the recorded one before anything parses it
  (:func:`read_checked`, :func:`check_bytes`);
* **new files are flushed** — :func:`write_new` creates a file exclusively and ``fsync``\\ s it;
  :func:`atomic_write` replaces a file by writing a temporary sibling and renaming it;
* **folders replaced whole** — :func:`replace_folder` writes a folder's content into a fresh,
  immutable sub-folder ``v-<id>`` and then atomically replaces one small manifest file that
  names it. A reader (:func:`read_folder`) sees the old content or the new one, never a mix; a
  kill at any point leaves the old content in place; the next writer removes what a killed
  writer left. Writers of the same folder take a lock (``.lock``), and a writer deletes only what
  an earlier write listed as its own: a folder holding anything else is refused, naming it.

Nothing here imports a deep-learning framework, :mod:`distilldetect.saving` or the backends.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "DetectorFormatError",
    "FolderInUseError",
    "CHUNK",
    "check_bytes",
    "sha256_file",
    "regular_file",
    "read_checked",
    "read_limited",
    "write_new",
    "atomic_write",
    "fsync_dir",
    "folder_lock",
    "replace_folder",
    "read_folder",
    "data_folder_name",
    "manifest_checksum",
    "is_data_folder_name",
]

logger = logging.getLogger(__name__)

#: Bytes per read when hashing.
CHUNK: int = 2**20
#: Name of the lock file that writers of a folder hold (``fcntl.flock``).
LOCK_FILE: str = ".lock"
_DATA_NAME = re.compile(r"^v-[0-9]{8}T[0-9]{6}-[0-9a-f]{12}$")
_TMP_NAME = re.compile(r"^\.[^/]+\.tmp-[0-9a-f]{12}$")

T = TypeVar("T")


class DetectorFormatError(ValueError):
    """A saved file or folder is not what its record says (missing, changed, truncated, invalid)."""


class FolderInUseError(RuntimeError):
    """A folder changed while it was being read (a save is in progress); try again."""


# ----------------------------------------------------------------------------- checking bytes
def check_bytes(data: bytes, expected: dict[str, Any], path: Path | str) -> None:
    """Raise :class:`DetectorFormatError` unless ``data`` has the size and SHA-256 of ``expected``.

    Parameters
    ----------
    data
        The bytes of a file, as read.
    expected
        ``{'sha256': hex digest, 'bytes': size}``.
    path
        The file, for the error message.

    Examples
    --------
    >>> digest = hashlib.sha256(b"abc").hexdigest()
    >>> check_bytes(b"abc", {"sha256": digest, "bytes": 3}, "a.bin")
    >>> check_bytes(b"abd", {"sha256": digest, "bytes": 3}, "a.bin")
    Traceback (most recent call last):
    ...
    distilldetect.files.DetectorFormatError: a.bin does not match its recorded SHA-256 ...
    """
    if len(data) != expected["bytes"]:
        raise DetectorFormatError(
            f"{path} has {len(data)} bytes but {expected['bytes']} are recorded: the file is "
            "truncated or was replaced"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected["sha256"]:
        raise DetectorFormatError(
            f"{path} does not match its recorded SHA-256 (expected {expected['sha256']}, got "
            f"{digest}): the file was modified or replaced"
        )


def sha256_file(path: Path, *, sync: bool = False) -> dict[str, Any]:
    """``{'sha256', 'bytes'}`` of a file, read in chunks; ``sync`` also flushes it to disk.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a"
    >>> _ = p.write_bytes(b"abc")
    >>> sha256_file(p)["bytes"]
    3
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "r+b" if sync else "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size}


def regular_file(path: Path, what: str) -> os.stat_result:
    """``lstat`` of ``path``, which must be a regular file (not a link, not a folder)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise DetectorFormatError(f"{path} is missing ({what})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DetectorFormatError(f"{path} is not a regular file (a link or folder?); {what}")
    return st


def read_checked(path: Path, expected: dict[str, Any], what: str = "a recorded file") -> bytes:
    """The bytes of ``path``, refused unless they have the recorded size and SHA-256.

    At most ``expected['bytes'] + 1`` bytes are read, so a file that grew cannot exhaust memory.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a"
    >>> _ = p.write_bytes(b"abc")
    >>> read_checked(p, sha256_file(p))
    b'abc'
    """
    st = regular_file(path, what)
    if st.st_size != expected["bytes"]:  # before reading: a forged size allocates nothing
        raise DetectorFormatError(
            f"{path} has {st.st_size} bytes but {expected['bytes']} are recorded: the file is "
            "truncated or was replaced"
        )
    with open(path, "rb") as f:
        data = f.read(st.st_size + 1)
    check_bytes(data, expected, path)
    return data


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (else :class:`DetectorFormatError`)."""
    st = regular_file(path, what)
    if st.st_size > limit:
        raise DetectorFormatError(
            f"{path} is {st.st_size} bytes, more than {what} can be ({limit} bytes)"
        )
    with open(path, "rb") as f:
        data = f.read(min(limit, st.st_size) + 1)
    if len(data) > limit:
        raise DetectorFormatError(f"{path} grew beyond {limit} bytes while being read ({what})")
    return data


# ------------------------------------------------------------------------------------ writing
def fsync_dir(path: Path) -> None:
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


def write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` (never overwriting) and flush it to disk.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.bin"
    >>> write_new(p, b"abc")
    >>> p.read_bytes()
    b'abc'
    """
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


def atomic_write(path: Path | str, data: bytes | Callable[[Path], None]) -> None:
    """Replace (or create) the file ``path`` atomically: readers see the old or the new file.

    ``data`` is the bytes to write, or a function ``write(tmp_path)`` that writes the file
    itself (e.g. a Parquet writer). The temporary sibling is flushed, renamed over ``path``,
    and the folder entry flushed; on any error it is removed and ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "out.txt"
    >>> atomic_write(p, b"one")
    >>> atomic_write(p, lambda tmp: tmp.write_bytes(b"two") and None)
    >>> p.read_bytes()
    b'two'
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file to replace", str(path))
    tmp = _tmp_sibling(path)
    try:
        if callable(data):
            data(tmp)
            sha256_file(tmp, sync=True)
        else:
            write_new(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the writers' lock of ``folder`` (an exclusive ``flock`` on ``folder/.lock``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: single-writer assumption
        yield
        return
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ------------------------------------------------------------------ folders replaced whole
def manifest_checksum(content: dict[str, Any]) -> str:
    """SHA-256 of a manifest's canonical JSON, every key but ``'checksum'`` itself.

    Examples
    --------
    >>> manifest_checksum({"a": 1}) == manifest_checksum({"a": 1, "checksum": "x"})
    True
    """
    body = {k: v for k, v in content.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def data_folder_name() -> str:
    """A new, unique name for a data sub-folder: ``v-<UTC timestamp>-<random hex>``.

    Examples
    --------
    >>> is_data_folder_name(data_folder_name())
    True
    """
    import time

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"v-{stamp}-{uuid.uuid4().hex[:12]}"


def is_data_folder_name(name: str) -> bool:
    """Whether ``name`` has the form of a data sub-folder written by :func:`replace_folder`."""
    return bool(_DATA_NAME.match(name))


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:  # pragma: no cover - permissions
        logger.warning("could not remove %s: %s", path, err)


def replace_folder(
    target: Path,
    write: Callable[[Path], dict[str, Any]],
    *,
    manifest: str,
    owned: Callable[[Path], set[str]],
    what: str,
) -> None:
    """Create or replace the content of the folder ``target`` atomically.

    ``write(data_dir)`` writes the new content into the fresh sub-folder ``data_dir`` (named by
    :func:`data_folder_name`, inside ``target``) and returns the manifest, a JSON object; the
    manifest is then written, with ``'data': data_dir.name`` added, to ``target / manifest`` by
    an atomic rename. Only after that are the previous data folder and whatever else an earlier
    write owned removed.

    ``owned(target)`` returns the names of the entries of ``target`` that earlier writes made
    (read from the current manifest; the manifest itself, the lock file, the data folder it
    names, data folders and temporary files left by killed writers are always owned). If
    ``target`` holds any other entry, nothing is written and ``ValueError`` lists them.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp()) / "cache"
    >>> def write(d):
    ...     (d / "x.txt").write_text("hello")
    ...     return {"files": ["x.txt"]}
    >>> replace_folder(root, write, manifest="m.json", owned=lambda t: set(), what="a cache")
    >>> read_folder(root, lambda d, m: (d / "x.txt").read_text(), manifest="m.json")
    'hello'
    """
    target = Path(target)
    created = False
    if not target.exists():
        target.mkdir(parents=True)
        created = True
    try:
        _replace_locked(target, write, manifest, owned, what, created)
    except BaseException:
        if created:  # a first write that failed leaves no trace: the folder was ours
            shutil.rmtree(target, ignore_errors=True)
        raise


def _replace_locked(
    target: Path,
    write: Callable[[Path], dict[str, Any]],
    manifest: str,
    owned: Callable[[Path], set[str]],
    what: str,
    created: bool,
) -> None:
    with folder_lock(target):
        names = set(os.listdir(target))
        mine = {manifest, LOCK_FILE} | {
            n for n in names if is_data_folder_name(n) or _TMP_NAME.match(n)
        }
        mine |= owned(target) if not created else set()
        foreign = sorted(names - mine)
        if foreign:
            shown = ", ".join(foreign[:10]) + (
                f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
            )
            raise ValueError(
                f"{target} holds files that are not part of {what}: {shown}. Nothing was "
                f"written; move them away or choose another folder (only what an earlier save "
                "wrote is ever replaced)"
            )
        data_dir = target / data_folder_name()
        data_dir.mkdir()
        try:
            content = write(data_dir)
            for root, _dirs, files in os.walk(data_dir):
                for name in files:
                    sha256_file(Path(root) / name, sync=True)
                fsync_dir(Path(root))
            content = {**content, "data": data_dir.name}
            content["checksum"] = manifest_checksum(content)
            text = json.dumps(content, indent=2, allow_nan=False).encode("utf-8")
            atomic_write(target / manifest, text)
        except BaseException:
            _remove(data_dir)
            raise
        for name in sorted(mine - {manifest, LOCK_FILE, data_dir.name}):
            _remove(target / name)
        fsync_dir(target)


def read_folder(
    target: Path,
    read: Callable[[Path, dict[str, Any]], T],
    *,
    manifest: str,
    limit: int = 64 * 2**20,
    attempts: int = 3,
) -> T:
    """Read a folder written by :func:`replace_folder`: ``read(data_dir, manifest_dict)``.

    A writer may replace the content while it is read; its old data folder then disappears. On
    ``FileNotFoundError`` the manifest is read again, and if it changed, reading starts over
    (up to ``attempts`` times); then :class:`FolderInUseError` says a save is in progress.
    """
    target = Path(target)
    last: BaseException | None = None
    for _ in range(attempts):
        raw = read_limited(target / manifest, limit, "a folder manifest")
        try:
            content = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise DetectorFormatError(f"{target / manifest} is not valid JSON: {err}") from None
        if not isinstance(content, dict) or not isinstance(content.get("data"), str):
            raise DetectorFormatError(f"{target / manifest} does not name a data folder")
        if not is_data_folder_name(content["data"]):
            raise DetectorFormatError(
                f"{target / manifest}: {content['data']!r} is not a data folder name"
            )
        if content.get("checksum") != manifest_checksum(content):
            raise DetectorFormatError(
                f"{target / manifest} does not match its own checksum: it was edited or damaged "
                "after it was written (a hand-edited setting is refused; save the detector again "
                "to change a setting)"
            )
        try:
            return read(target / content["data"], content)
        except (FileNotFoundError, DetectorFormatError) as err:
            last = err
            try:
                again = read_limited(target / manifest, limit, "a folder manifest")
            except DetectorFormatError:
                raise err from None
            if again == raw:
                raise
    raise FolderInUseError(
        f"{target} changed {attempts} times while it was read: a save is in progress; try again"
    ) from last
