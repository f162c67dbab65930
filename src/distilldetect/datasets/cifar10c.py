"""CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) under alibi-detect's ``fetch_cifar10c`` API.

The release is one ``.npy`` file per corruption, uint8 of shape ``(50000, 32, 32, 3)``, whose
rows ``(s-1)*10000 .. s*10000-1`` are severity ``s`` (each block the 10,000 CIFAR-10 test
images in ``test_batch`` order), plus ``labels.npy`` (the test labels tiled five times).

Files are memory-mapped (``np.load(..., mmap_mode='r', allow_pickle=False)``), so a call reads
only the 10,000-row block of the requested severity of each requested corruption. The
number of rows per severity is the file length / 5, so local files of any length divisible
by 5 work (the tests use a few rows per severity); downloaded files must have ``N_ROWS`` rows.

Where the files are looked for, in order:

1. ``data_dir`` when given (and only there): the ``.npy`` files directly or in a
   ``CIFAR-10-C/`` folder, or the Zenodo archive ``CIFAR-10-C.tar`` (the needed members are
   then copied into the cache, where they can be memory-mapped);
2. the same in ``$DISTILLDETECT_DATA``;
3. the cache, ``<cache>/CIFAR-10-C/``, downloading what is missing from ``source``:

   * ``'seldon'`` (default): the per-file copies alibi-detect reads,
     ``https://storage.googleapis.com/seldon-datasets/cifar10c/<name>.npy``. Only the needed
     files are fetched (153.6 MB per corruption + 50 kB of labels). No checksum is published;
     each file is checked against the MD5 the server reports (``x-goog-hash``) when present,
     and always by its ``.npy`` header (dtype, shape) and exact size.
   * ``'zenodo'``: the original release, ``CIFAR-10-C.tar`` (2.9 GB, all 19 corruptions)
     from Zenodo record 2535967, checked against its published MD5; all members are copied
     out into the cache and the archive is deleted.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..base import describe
from . import _download as dl

__all__ = ["Bunch", "corruption_types_cifar10c", "fetch_cifar10c"]

logger = logging.getLogger(__name__)

#: The 19 corruptions of the release, alphabetical (as alibi-detect lists them).
CORRUPTIONS: tuple[str, ...] = (
    "brightness",
    "contrast",
    "defocus_blur",
    "elastic_transform",
    "fog",
    "frost",
    "gaussian_blur",
    "gaussian_noise",
    "glass_blur",
    "impulse_noise",
    "jpeg_compression",
    "motion_blur",
    "pixelate",
    "saturate",
    "shot_noise",
    "snow",
    "spatter",
    "speckle_noise",
    "zoom_blur",
)
LABELS = "labels"
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
IMAGE_SHAPE = (32, 32, 3)
#: Rows of each file of the real release (5 severities x 10,000 test images). Downloaded files
#: must have exactly this many rows; local files need only a multiple of 5.
N_ROWS = 50_000

#: Folder of the data set in the Zenodo archive, in the cache and under ``$DISTILLDETECT_DATA``.
SUBDIR = "CIFAR-10-C"
SOURCES: tuple[str, ...] = ("seldon", "zenodo")
SELDON_URL = "https://storage.googleapis.com/seldon-datasets/cifar10c/{name}.npy"
ZENODO_URL = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1"
ZENODO_ARCHIVE = "CIFAR-10-C.tar"
#: MD5 of ``CIFAR-10-C.tar`` as published on Zenodo (the only checksum Zenodo publishes).
ZENODO_MD5 = "56bf5dcef84df0e2308c6dcbcbbd8499"
#: SHA-256 of the same archive as listed by TensorFlow Datasets (2,918,471,680 bytes); recorded
#: for reference, not verified (the publisher gives only the MD5).
ZENODO_SHA256 = "c72763e101c723b7c507b96205f7e938912a5d587376173b825850cf3cb876a7"


class Bunch(dict):
    """A dictionary whose keys can also be read and written as attributes.

    Examples
    --------
    >>> b = Bunch(data=[1, 2], target=[0, 1])
    >>> b.data is b["data"]
    True
    """

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {k for k in self if isinstance(k, str)})


def corruption_types_cifar10c() -> list[str]:
    """The names of the 19 CIFAR-10-C corruptions, alphabetical (no network access).

    Examples
    --------
    >>> corruption_types_cifar10c()[:3]
    ['brightness', 'contrast', 'defocus_blur']
    >>> len(corruption_types_cifar10c())
    19
    """
    return list(CORRUPTIONS)


def fetch_cifar10c(
    corruption: str | Sequence[str],
    severity: int,
    return_X_y: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    source: str = "seldon",
    download_if_missing: bool = True,
    verbose: bool = True,
) -> Bunch | tuple[np.ndarray, np.ndarray]:
    """CIFAR-10-C images of some corruptions at one severity, as alibi-detect's function.

    Parameters
    ----------
    corruption
        A corruption name, a list of names, or ``'all'`` (see ``corruption_types_cifar10c()``).
    severity
        Severity level, an integer 1-5.
    return_X_y
        Return ``(X, y)`` instead of a :class:`Bunch`.
    data_dir
        Local CIFAR-10-C directory: the ``.npy`` files directly or in ``CIFAR-10-C/``, or the
        archive ``CIFAR-10-C.tar``. When given, only this directory is used. When None:
        ``$DISTILLDETECT_DATA`` (same layouts), then the cache, downloading what is missing.
    cache_dir
        Cache directory; default ``$DISTILLDETECT_CACHE`` or ``~/.cache/distilldetect``.
    source
        Where to download from: ``'seldon'`` (default; per-file, only what is needed, the
        copies alibi-detect reads) or ``'zenodo'`` (the original 2.9 GB archive with a
        published MD5). See the module documentation.
    download_if_missing
        Download missing files; if False, raise ``ValueError`` instead.
    verbose
        Show progress bars.

    Returns
    -------
    Bunch or (X, y)
        ``data``: uint8 images ``(10000 * n_corruptions, 32, 32, 3)``, values 0-255, one
        10,000-row block per corruption in the order given; ``target``: int64 labels;
        ``corruption``: the corruption name of each row; ``severity``: int64, the severity of
        each row. alibi-detect returns the same values as float64; uint8 takes 8x less memory,
        and ``X.astype('float32') / 255`` works on both.

    Raises
    ------
    TypeError, ValueError
        Unknown corruption name (the message lists the valid ones), severity not an integer
        1-5, unknown source, files missing from ``data_dir`` (the message names them and
        where it looked), or a file that is not the expected ``.npy`` (dtype, shape, size).

    Examples
    --------
    >>> b = fetch_cifar10c("fog", severity=3)  # doctest: +SKIP
    >>> b.data.shape, b.data.dtype, b.target[:3], b.corruption[0]  # doctest: +SKIP
    ((10000, 32, 32, 3), dtype('uint8'), array([3, 8, 8]), 'fog')
    >>> X, y = fetch_cifar10c(["fog", "snow"], 5, return_X_y=True)  # doctest: +SKIP
    """
    names = _check_corruption(corruption)
    severity = _check_severity(severity)
    if not isinstance(return_X_y, (bool, np.bool_)):
        raise TypeError(f"return_X_y must be True or False, got {describe(return_X_y)}")
    explicit = dl.check_data_dir(data_dir)
    if not isinstance(source, str) or source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
    if not isinstance(download_if_missing, bool):
        raise TypeError(f"download_if_missing must be True or False, got {download_if_missing!r}")

    needed = list(dict.fromkeys([*names, LABELS]))
    paths = _locate(needed, explicit, cache_dir, source, download_if_missing, verbose)

    labels_all = _open_npy(paths[LABELS], labels=True)
    n = labels_all.shape[0]
    rows = n // len(SEVERITIES)
    block = slice((severity - 1) * rows, severity * rows)
    target = np.asarray(labels_all[block]).astype(np.int64)
    del labels_all
    if target.size and (target.min() < 0 or target.max() > 9):
        raise ValueError(
            f"{paths[LABELS]} holds labels in [{target.min()}, {target.max()}]; expected 0-9"
        )

    data = np.empty((rows * len(names), *IMAGE_SHAPE), dtype=np.uint8)
    for i, name in enumerate(tqdm(names, desc="CIFAR-10-C", unit="file", disable=not verbose)):
        images = _open_npy(paths[name], labels=False)
        if images.shape[0] != n:
            raise ValueError(
                f"{paths[name]} has {images.shape[0]:,} rows but {paths[LABELS]} has {n:,}; "
                "the files do not belong together"
            )
        data[i * rows : (i + 1) * rows] = images[block]
        del images
    target = np.tile(target, len(names))
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        target=target,
        corruption=np.repeat(np.array(names), rows),
        severity=np.full(len(target), severity, dtype=np.int64),
    )


# --------------------------------------------------------------------------- argument checks


def _check_corruption(corruption: Any) -> list[str]:
    valid = ", ".join(CORRUPTIONS)
    if isinstance(corruption, str):
        names = list(CORRUPTIONS) if corruption == "all" else [corruption]
    elif isinstance(corruption, (list, tuple)):
        names = list(corruption)
        if not names:
            raise ValueError("corruption must name at least one corruption, got an empty list")
    else:
        raise TypeError(
            f"corruption must be a name, a list of names or 'all', got {describe(corruption)}"
        )
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"corruption must hold corruption names (str), got {describe(name)}")
        if name not in CORRUPTIONS:
            raise ValueError(
                f"corruption {name!r} is not a CIFAR-10-C corruption; expected 'all' or one of: "
                f"{valid}"
            )
    return names


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral):
        raise TypeError(f"severity must be an integer 1-5, got {describe(severity)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer 1-5, got {severity}")
    return int(severity)


# --------------------------------------------------------------------------- npy files


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data_offset)`` of a ``.npy`` file, without loading it."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = f.tell()
    except (ValueError, EOFError) as exc:
        raise ValueError(f"{path} is not a valid .npy file: {exc}") from exc
    return shape, fortran, dtype, offset


def check_npy(path: str | os.PathLike[str], *, labels: bool, n_rows: int | None = None) -> int:
    """Check a CIFAR-10-C ``.npy`` file's header and size; return its number of rows.

    Images must be uint8 of shape ``(n, 32, 32, 3)``, labels integers of shape ``(n,)``, with
    ``n`` a positive multiple of 5 (equal to ``n_rows`` when given), C order, and the file
    exactly as long as its header says. Raises ``ValueError`` otherwise.
    """
    path = Path(path)
    shape, fortran, dtype, offset = _read_npy_header(path)
    if labels:
        ok = len(shape) == 1 and dtype.kind in "iu" and not dtype.hasobject
        expected = "integer labels of shape (n,)"
    else:
        ok = len(shape) == 4 and tuple(shape[1:]) == IMAGE_SHAPE and dtype == np.uint8
        expected = f"uint8 images of shape (n, {', '.join(map(str, IMAGE_SHAPE))})"
    if not ok:
        raise ValueError(f"{path} must hold {expected}, got dtype {dtype} and shape {shape}")
    if fortran:
        raise ValueError(f"{path} is stored in Fortran order; expected C order")
    n = shape[0]
    if n == 0 or n % len(SEVERITIES):
        raise ValueError(
            f"{path} has {n:,} rows; expected a positive multiple of 5 (one block per severity)"
        )
    if n_rows is not None and n != n_rows:
        raise ValueError(f"{path} has {n:,} rows; expected {n_rows:,}")
    size = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual != size:
        raise ValueError(
            f"{path} is {actual:,} bytes but its header (shape {shape}, dtype {dtype}) implies "
            f"{size:,}; it is truncated or damaged"
        )
    return int(n)


def _open_npy(path: Path, *, labels: bool) -> np.ndarray:
    check_npy(path, labels=labels)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _download_validator(labels: bool) -> Any:
    def validate(path: Path) -> None:
        check_npy(path, labels=labels, n_rows=N_ROWS)

    return validate


# --------------------------------------------------------------------------- locating the files


def _find_npy_dir(directory: Path, needed: list[str]) -> tuple[Path | None, list[str]]:
    """The folder (``directory`` or ``directory/CIFAR-10-C``) holding all needed files."""
    best: list[str] | None = None
    for folder in (directory, directory / SUBDIR):
        missing = [f"{name}.npy" for name in needed if not (folder / f"{name}.npy").is_file()]
        if not missing:
            return folder, []
        if best is None or len(missing) < len(best):
            best = missing
    return None, best or []


def _from_local(directory: Path, needed: list[str], cache: Path, verbose: bool) -> dict | None:
    folder, _ = _find_npy_dir(directory, needed)
    if folder is not None:
        return {name: folder / f"{name}.npy" for name in needed}
    archive = directory / ZENODO_ARCHIVE
    if archive.is_file():
        todo = [name for name in needed if not (cache / f"{name}.npy").is_file()]
        if todo:
            logger.info("copying %s out of %s into %s", ", ".join(todo), archive, cache)
            dl.extract_tar_members(
                archive,
                {f"{SUBDIR}/{name}.npy": cache / f"{name}.npy" for name in todo},
                verbose=verbose,
            )
        return {name: cache / f"{name}.npy" for name in needed}
    return None


def _why_not(directory: Path, needed: list[str]) -> str:
    if not directory.is_dir():
        return f"{directory} (no such directory)"
    _, missing = _find_npy_dir(directory, needed)
    return (
        f"{directory} and {directory / SUBDIR} (missing {', '.join(missing)}; no {ZENODO_ARCHIVE})"
    )


def _locate(
    needed: list[str],
    explicit: Path | None,
    cache_dir: str | os.PathLike[str] | None,
    source: str,
    download_if_missing: bool,
    verbose: bool,
) -> dict[str, Path]:
    cache = dl.get_cache_dir(cache_dir) / SUBDIR
    if explicit is not None:
        found = _from_local(explicit, needed, cache, verbose)
        if found is None:
            raise ValueError(
                f"data_dir {str(explicit)!r} does not hold the CIFAR-10-C files needed "
                f"({', '.join(n + '.npy' for n in needed)}). Looked in: {_why_not(explicit, needed)}"
            )
        return found

    looked = []
    env = dl.env_data_dir()
    if env is not None:
        found = _from_local(env, needed, cache, verbose)
        if found is not None:
            return found
        looked.append(_why_not(env, needed))

    missing = [name for name in needed if not (cache / f"{name}.npy").is_file()]
    if missing and not download_if_missing:
        looked.append(f"{cache} (missing {', '.join(n + '.npy' for n in missing)})")
        raise ValueError(
            "CIFAR-10-C files were not found and download_if_missing=False. Looked in: "
            f"{'; '.join(looked)}. Pass data_dir= or set ${dl.DATA_ENV}."
        )
    if missing and source == "seldon":
        for name in missing:
            dl.download(
                SELDON_URL.format(name=name),
                f"{name}.npy",
                cache_dir=cache_dir,
                subdir=SUBDIR,
                validate=_download_validator(labels=name == LABELS),
                verbose=verbose,
            )
    elif missing:
        _download_zenodo(cache_dir, cache, verbose)
    return {name: cache / f"{name}.npy" for name in needed}


def _download_zenodo(cache_dir: str | os.PathLike[str] | None, cache: Path, verbose: bool) -> None:
    """Download the Zenodo archive, copy all its files into ``cache``, delete the archive."""
    archive = dl.download(
        ZENODO_URL, ZENODO_ARCHIVE, cache_dir=cache_dir, md5=ZENODO_MD5, verbose=verbose
    )
    members = {f"{SUBDIR}/{name}.npy": cache / f"{name}.npy" for name in (*CORRUPTIONS, LABELS)}
    dl.extract_tar_members(archive, members, verbose=verbose)
    archive.unlink()
    logger.info("extracted %s into %s and deleted the archive", ZENODO_ARCHIVE, cache)
