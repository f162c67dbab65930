"""The one downloader of the data sets, and where their files live.

Everything that fetches a file over the network goes through :func:`download`:

* files land in a cache directory (``~/.cache/distilldetect``, or ``$DISTILLDETECT_CACHE``, or
  the ``cache_dir=`` argument);
* a transfer is streamed into a temporary file *in the destination directory*, checked (byte
  count against ``Content-Length``, SHA-256 and/or MD5, the server's own MD5 when it sends one,
  and an optional validator), and only then moved into place with :func:`os.replace`, so a
  file in the cache is always whole and checked, and a failed transfer leaves nothing behind;
* a failure raises :class:`DownloadError` that names the URL and says what was expected and
  what arrived.

This module also holds the shared answers to "where are the files": the cache directory, the
``$DISTILLDETECT_DATA`` directory, the checks of a user's ``data_dir``, and safe reading of tar
archives (no absolute paths, no ``..``, no links or device files; nothing is ever extracted by
``tarfile.extractall``).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import http.client
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._version import __version__
from ..base import describe

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "DownloadError",
    "check_data_dir",
    "download",
    "env_data_dir",
    "extract_tar_members",
    "file_digests",
    "get_cache_dir",
    "iter_tar_files",
]

logger = logging.getLogger(__name__)

#: Environment variable that overrides the cache directory.
CACHE_ENV = "DISTILLDETECT_CACHE"
#: Environment variable naming a local directory that holds the data sets (offline use).
DATA_ENV = "DISTILLDETECT_DATA"
#: Bytes read per network or disk read.
CHUNK_SIZE = 1 << 20
_USER_AGENT = f"distilldetect/{__version__} (+python urllib)"


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to ``http(s)://`` URLs only (urllib alone would follow ``ftp://``)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(
                req.full_url, code, f"redirect to a {scheme or 'schemeless'} URL refused "
                f"({newurl}); only http(s) is followed", headers, fp,
            )  # fmt: skip
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


class DownloadError(OSError):
    """A download failed: the server refused, the transfer broke, or the bytes did not check out.

    The message names the URL and what was expected versus what arrived. Nothing is left in
    the cache when this is raised.
    """


# --------------------------------------------------------------------------- where files live


def _as_path(value: Any, name: str) -> Path:
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{name} must be a path (str or os.PathLike) or None, got {describe(value)}"
        )
    text = os.fspath(value)
    if isinstance(text, bytes) or not text:
        raise ValueError(f"{name} must be a non-empty path, got {value!r}")
    return Path(text).expanduser()


def get_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$DISTILLDETECT_CACHE``, else ``~/.cache/distilldetect``.

    The directory is not created here; :func:`download` creates what it writes into.

    Examples
    --------
    >>> get_cache_dir("/tmp/dd-cache")
    PosixPath('/tmp/dd-cache')
    """
    if cache_dir is not None:
        return _as_path(cache_dir, "cache_dir")
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "distilldetect"


def check_data_dir(data_dir: Any) -> Path | None:
    """Check the ``data_dir`` argument of a loader: None, or an existing directory."""
    if data_dir is None:
        return None
    path = _as_path(data_dir, "data_dir")
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ValueError(f"data_dir must be an existing directory, got {str(path)!r}, which {what}")
    return path


def env_data_dir() -> Path | None:
    """The directory named by ``$DISTILLDETECT_DATA``, or None when unset (or not a directory)."""
    env = os.environ.get(DATA_ENV, "").strip()
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.is_dir():
        logger.warning("$%s=%s is not a directory; ignoring it", DATA_ENV, env)
        return None
    return path


# --------------------------------------------------------------------------- checksums


def _new_md5() -> Any:
    # MD5 is used only to compare with published checksums, not for security.
    return hashlib.md5(usedforsecurity=False)


def file_digests(path: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 and MD5 hex digests of a file, read in chunks.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
    >>> _ = p.write_bytes(b"abc")
    >>> file_digests(p)["md5"]
    '900150983cd24fb0d6963f7d28e17f72'
    """
    sha256, md5 = hashlib.sha256(), _new_md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            sha256.update(chunk)
            md5.update(chunk)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def _check_hex(value: Any, name: str, n_chars: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be None or a hex string, got {describe(value)}")
    text = value.strip().lower()
    if len(text) != n_chars or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"{name} must be {n_chars} hexadecimal characters, got {value!r}")
    return text


def _mismatches(
    got: Mapping[str, str], sha256: str | None, md5: str | None, server_md5: str | None
) -> list[str]:
    problems = []
    if sha256 is not None and got["sha256"] != sha256:
        problems.append(f"expected SHA-256 {sha256}, got {got['sha256']}")
    if md5 is not None and got["md5"] != md5:
        problems.append(f"expected MD5 {md5}, got {got['md5']}")
    if server_md5 is not None and got["md5"] != server_md5:
        problems.append(f"the server reported MD5 {server_md5} (x-goog-hash), got {got['md5']}")
    return problems


def _server_md5(headers: Any) -> str | None:
    """The MD5 a Google Cloud Storage server reports in ``x-goog-hash: md5=<base64>``, as hex."""
    values = headers.get_all("x-goog-hash") or []
    for value in values:
        for part in value.split(","):
            key, _, encoded = part.strip().partition("=")
            if key.lower() == "md5" and encoded:
                try:
                    raw = base64.b64decode(encoded.strip(), validate=True)
                except (binascii.Error, ValueError):
                    logger.warning("ignoring a malformed x-goog-hash header: %r", value)
                    return None
                if len(raw) == 16:
                    return raw.hex()
    return None


# --------------------------------------------------------------------------- the downloader


def _check_urls(url: Any) -> list[str]:
    urls = [url] if isinstance(url, str) else url
    if not isinstance(urls, Sequence) or isinstance(urls, (bytes, bytearray)) or not urls:
        raise TypeError(
            f"url must be a URL string or a non-empty sequence of mirror URLs, got {describe(url)}"
        )
    for u in urls:
        if not isinstance(u, str):
            raise TypeError(f"url must hold URL strings, got {describe(u)}")
        parts = urllib.parse.urlsplit(u)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be an http:// or https:// URL, got {u!r}")
    return list(urls)


def _check_name(value: Any, name: str, *, allow_slash: bool) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {describe(value)}")
    parts = value.split("/") if allow_slash else [value]
    if (
        not value
        or "\\" in value
        or value.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or (not allow_slash and "/" in value)
    ):
        kind = "a relative folder path" if allow_slash else "a plain file name"
        raise ValueError(f"{name} must be {kind} without '..', got {value!r}")
    return value


def download(
    url: str | Sequence[str],
    filename: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    subdir: str | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    validate: Callable[[Path], Any] | None = None,
    force: bool = False,
    timeout: float = 60.0,
    deadline: float | None = 3600.0,
    verbose: bool = True,
) -> Path:
    """Download a file into the cache, checked before use; return its path.

    A file already in the cache is re-checked (checksums, ``validate``) and returned without
    any request. Otherwise the file is streamed into a temporary file next to its destination,
    checked, and renamed into place atomically. On any failure nothing is left behind and a
    :class:`DownloadError` names the URL, what was expected and what arrived.

    Parameters
    ----------
    url
        An ``http(s)://`` URL, or a sequence of mirror URLs tried in order until one succeeds.
    filename
        Name of the file in the cache; default: the last part of the first URL's path.
    cache_dir
        Cache directory; default ``$DISTILLDETECT_CACHE`` or ``~/.cache/distilldetect``.
    subdir
        Folder inside the cache directory (e.g. ``'fashion-mnist'``).
    sha256, md5
        Expected hex digests of the file; each one given is verified. Use MD5 only where that
        is all the publisher gives. When the server sends its own MD5 (Google Cloud Storage's
        ``x-goog-hash`` header), that is verified too.
    validate
        Optional check ``validate(path)`` of the downloaded (temporary) file, raising
        ``ValueError`` when its content is wrong; e.g. a check of a ``.npy`` header.
    force
        Download again even when the file is cached.
    timeout
        Seconds to wait for the server on connect and on each read.
    deadline
        Seconds the whole transfer of one URL may take (None: no limit); a server that
        trickles bytes slower than that is given up on, and nothing is saved.
    verbose
        Show a progress bar (tqdm, on stderr).

    Returns
    -------
    pathlib.Path
        The path of the checked file in the cache.

    Raises
    ------
    DownloadError
        HTTP error, connection error, interrupted transfer, checksum or validation failure.

    Examples
    --------
    >>> path = download(  # doctest: +SKIP
    ...     "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz",
    ...     subdir="fashion-mnist",
    ...     md5="bb300cfdad3c16e7a12a480ee83cd310",
    ... )
    """
    urls = _check_urls(url)
    if filename is None:
        filename = posixpath.basename(urllib.parse.urlsplit(urls[0]).path)
        if not filename:
            raise ValueError(f"filename must be given: the URL {urls[0]!r} does not end in one")
    filename = _check_name(filename, "filename", allow_slash=False)
    if subdir is not None:
        subdir = _check_name(subdir, "subdir", allow_slash=True)
    sha256 = _check_hex(sha256, "sha256", 64)
    md5 = _check_hex(md5, "md5", 32)
    if validate is not None and not callable(validate):
        raise TypeError(f"validate must be callable or None, got {describe(validate)}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0
    ):
        raise ValueError(f"deadline must be None or a number of seconds > 0, got {deadline!r}")

    dest_dir = get_cache_dir(cache_dir)
    if subdir is not None:
        dest_dir = dest_dir / subdir
    dest = dest_dir / filename
    if dest.is_dir():
        raise ValueError(
            f"filename {filename!r}: {dest} is a folder, not a file the download could replace"
        )

    if dest.is_file() and not force:
        try:
            _check_cached(dest, sha256, md5, validate)
        except ValueError as exc:
            logger.warning("cached file %s is damaged (%s); downloading it again", dest, exc)
            dest.unlink()
        else:
            logger.debug("using cached %s", dest)
            return dest
    if sha256 is None and md5 is None and validate is None:
        logger.warning("downloading %s without a checksum to verify it against", filename)

    dest_dir.mkdir(parents=True, exist_ok=True)
    errors: list[DownloadError] = []
    for u in urls:
        try:
            _fetch(
                u,
                dest,
                sha256=sha256,
                md5=md5,
                validate=validate,
                timeout=timeout,
                deadline=deadline,
                verbose=verbose,
            )
        except DownloadError as exc:
            errors.append(exc)
            if len(urls) > 1:
                logger.warning("%s", exc)
            continue
        return dest
    if len(errors) == 1:
        raise errors[0]
    listing = "\n".join(f"  - {e}" for e in errors)
    raise DownloadError(
        f"could not download {filename} from any of its {len(urls)} sources:\n{listing}"
    )


def _check_cached(
    path: Path, sha256: str | None, md5: str | None, validate: Callable[[Path], Any] | None
) -> None:
    if sha256 is not None or md5 is not None:
        problems = _mismatches(file_digests(path), sha256, md5, None)
        if problems:
            raise ValueError("; ".join(problems))
    if validate is not None:
        validate(path)


def _fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    md5: str | None,
    validate: Callable[[Path], Any] | None,
    timeout: float,
    deadline: float | None = None,
    verbose: bool,
) -> None:
    """Stream ``url`` into a temporary file beside ``dest``, check it, rename it into place."""
    import time

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    logger.info("downloading %s to %s", url, dest)
    started = time.monotonic()
    try:
        response = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"could not download {url}: {reason}") from exc

    with response:
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if length is not None:
            free = shutil.disk_usage(dest.parent).free
            if free < length:
                raise DownloadError(
                    f"could not download {url}: it is {length:,} bytes but {dest.parent} has "
                    f"only {free:,} bytes free"
                )
        server_md5 = _server_md5(response.headers)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            sha, md = hashlib.sha256(), _new_md5()
            received = 0
            with (
                os.fdopen(fd, "wb") as out,
                tqdm(
                    total=length,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not verbose,
                    leave=False,
                ) as bar,
            ):
                while True:
                    try:
                        chunk = response.read1(
                            CHUNK_SIZE
                        )  # what arrived: the deadline is checked often
                    except (http.client.HTTPException, OSError) as exc:
                        raise DownloadError(
                            f"the transfer of {url} was interrupted after {received:,} bytes "
                            f"({exc!r}); nothing was saved"
                        ) from exc
                    if not chunk:
                        break
                    if deadline is not None and time.monotonic() - started > deadline:
                        raise DownloadError(
                            f"the transfer of {url} took longer than its deadline of "
                            f"{deadline:g} s ({received:,} bytes received); nothing was saved"
                        )
                    out.write(chunk)
                    sha.update(chunk)
                    md.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if length is not None and received != length:
                raise DownloadError(
                    f"the transfer of {url} was interrupted: received {received:,} of "
                    f"{length:,} bytes; nothing was saved"
                )
            got = {"sha256": sha.hexdigest(), "md5": md.hexdigest()}
            problems = _mismatches(got, sha256, md5, server_md5)
            if problems:
                raise DownloadError(
                    f"checksum mismatch for {url} ({received:,} bytes): {'; '.join(problems)}. "
                    f"The download was discarded; nothing was saved to {dest}"
                )
            if validate is not None:
                try:
                    validate(tmp)
                except ValueError as exc:
                    raise DownloadError(
                        f"the file downloaded from {url} is not valid: {exc}. "
                        f"The download was discarded; nothing was saved to {dest}"
                    ) from exc
            os.replace(tmp, dest)
        except BaseException:
            with suppress(FileNotFoundError):
                tmp.unlink()
            raise
    logger.info("saved %s (%s bytes, SHA-256 %s)", dest, f"{received:,}", got["sha256"])


# --------------------------------------------------------------------------- tar archives


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member is unsafe to read, or None."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' in its path"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "device, FIFO or other special file"
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            data_filter(member, "/nonexistent-extraction-root")
        except tarfile.FilterError as exc:
            return str(exc)
    return None


def _normalise(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/")).lstrip("/")


def iter_tar_files(
    archive: str | os.PathLike[str], wanted: Sequence[str]
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member_name, content)`` for the wanted regular files of a tar archive.

    Every member of the archive is checked: one with an absolute path, ``..``, or that is a
    link, a device or a FIFO makes the whole archive refused (``ValueError``). Nothing is
    written to disk. A wanted member that is missing raises ``ValueError`` naming it.

    Examples
    --------
    >>> for name, data in iter_tar_files("cifar-10-binary.tar.gz", ["a/b.bin"]):  # doctest: +SKIP
    ...     print(name, len(data))
    """
    archive = Path(archive)
    remaining = {_normalise(w) for w in wanted}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                problem = _member_problem(member)
                if problem is not None:
                    raise ValueError(
                        f"refusing to read {archive}: its member {member.name!r} is unsafe ({problem})"
                    )
                name = _normalise(member.name)
                if member.isfile() and name in remaining:
                    f = tar.extractfile(member)
                    assert f is not None  # a regular file always has content
                    data = f.read()
                    if len(data) != member.size:
                        raise ValueError(f"{archive} is truncated inside member {member.name!r}")
                    remaining.discard(name)
                    yield name, data
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ValueError(
            f"{archive} is not a readable tar archive (truncated or damaged?): {exc}"
        ) from exc
    if remaining:
        raise ValueError(f"{archive} does not contain {', '.join(sorted(remaining))}")


def extract_tar_members(
    archive: str | os.PathLike[str],
    destinations: Mapping[str, str | os.PathLike[str]],
    *,
    verbose: bool = True,
) -> None:
    """Copy the named regular files out of a tar archive, each atomically to its destination.

    ``destinations`` maps member names (``'CIFAR-10-C/fog.npy'``) to target paths. Every
    member of the archive is checked as in :func:`iter_tar_files`; each wanted file is copied
    in chunks into a temporary file beside its target and renamed into place, so a failure
    leaves no half-written file. Missing members raise ``ValueError`` naming them.
    """
    archive = Path(archive)
    targets = {_normalise(k): Path(v) for k, v in destinations.items()}
    done: set[str] = set()
    try:
        with (
            tarfile.open(archive, "r:*") as tar,
            tqdm(
                total=len(targets),
                unit="file",
                desc=f"extracting {archive.name}",
                disable=not verbose,
            ) as bar,
        ):
            for member in tar:
                problem = _member_problem(member)
                if problem is not None:
                    raise ValueError(
                        f"refusing to extract from {archive}: its member {member.name!r} is "
                        f"unsafe ({problem})"
                    )
                name = _normalise(member.name)
                if not member.isfile() or name not in targets or name in done:
                    continue
                target = targets[name]
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                fd, tmp_name = tempfile.mkstemp(
                    dir=target.parent, prefix=f".{target.name}.", suffix=".part"
                )
                try:
                    with os.fdopen(fd, "wb") as out:
                        copied = 0
                        while chunk := source.read(CHUNK_SIZE):
                            out.write(chunk)
                            copied += len(chunk)
                    if copied != member.size:
                        raise ValueError(f"{archive} is truncated inside member {member.name!r}")
                    os.replace(tmp_name, target)
                except BaseException:
                    with suppress(FileNotFoundError):
                        os.unlink(tmp_name)
                    raise
                done.add(name)
                bar.update(1)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(
            f"{archive} is not a readable tar archive (truncated or damaged?): {exc}"
        ) from exc
    missing = sorted(set(targets) - done)
    if missing:
        raise ValueError(f"{archive} does not contain {', '.join(missing)}")
