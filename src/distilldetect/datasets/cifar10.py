"""CIFAR-10 (Krizhevsky 2009) from the *binary* archive ``cifar-10-binary.tar.gz``.

The pickled "python version" of CIFAR-10 is never read (the house rule: no pickle). The
binary version holds, per batch file, records of 3,073 bytes: one label byte (0-9), then the
32x32 image as 1,024 red, 1,024 green and 1,024 blue bytes, each plane row-major.

Where the data is looked for, in order:

1. ``data_dir`` when given (and only there): the extracted ``cifar-10-batches-bin/`` folder,
   the ``.bin`` files directly in ``data_dir``, or the archive ``cifar-10-binary.tar.gz``;
2. the same in ``$DISTILLDETECT_DATA``;
3. the cache (``<cache>/cifar10/cifar-10-binary.tar.gz``), downloaded from the Toronto page
   when missing and checked against its published MD5 and its SHA-256.

The archive is read in place (members are streamed from the tar file; nothing is extracted).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from . import _download as dl

__all__ = ["CLASS_NAMES", "load_cifar10"]

logger = logging.getLogger(__name__)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE = "cifar-10-binary.tar.gz"
#: MD5 published on https://www.cs.toronto.edu/~kriz/cifar.html.
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
#: SHA-256 of the same archive (170,052,171 bytes), as pinned by several independent projects.
SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"

#: Folder of the extracted archive, and of the member names inside it.
FOLDER = "cifar-10-batches-bin"
#: Folder of the data set under the cache directory.
SUBDIR = "cifar10"
TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
RECORD_BYTES = 1 + 32 * 32 * 3

#: Class names of labels 0-9.
CLASS_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download_if_missing: bool = True,
    verbose: bool = True,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load CIFAR-10 from its binary archive: ``((X_train, y_train), (X_test, y_test))``.

    Parameters
    ----------
    data_dir
        Directory holding ``cifar-10-batches-bin/`` (or its ``.bin`` files directly) or
        ``cifar-10-binary.tar.gz``. When given, only this directory is used. When None:
        ``$DISTILLDETECT_DATA`` (same layouts), then the cache, downloading the archive there.
    cache_dir
        Cache directory; default ``$DISTILLDETECT_CACHE`` or ``~/.cache/distilldetect``.
    download_if_missing
        Download the archive (~170 MB) when no local copy is found; if False, raise
        ``ValueError`` instead.
    verbose
        Show download progress.

    Returns
    -------
    ((X_train, y_train), (X_test, y_test))
        uint8 images of shape ``(n, 32, 32, 3)`` (RGB, channels last; 50,000 train in
        ``data_batch_1..5`` order and 10,000 test for the real data) and uint8 labels of shape
        ``(n,)`` in 0-9 (see ``CLASS_NAMES``). Unlike keras' ``cifar10.load_data()`` (labels
        of shape ``(n, 1)``), labels are one-dimensional, as for Fashion-MNIST.

    Raises
    ------
    ValueError
        Files missing from ``data_dir`` (the message names them and where it looked), a batch
        file that is not a whole number of 3,073-byte records, a label outside 0-9, or an
        unsafe or damaged archive.

    Examples
    --------
    >>> (X_train, y_train), (X_test, y_test) = load_cifar10()  # doctest: +SKIP
    >>> X_train.shape, X_test.dtype, y_test[:3]  # doctest: +SKIP
    ((50000, 32, 32, 3), dtype('uint8'), array([3, 8, 8], dtype=uint8))
    """
    explicit = dl.check_data_dir(data_dir)
    if not isinstance(download_if_missing, bool):
        raise TypeError(f"download_if_missing must be True or False, got {download_if_missing!r}")
    source = _locate(explicit, cache_dir, download_if_missing, verbose)
    logger.info("loading CIFAR-10 from %s", source)
    if source.is_dir():
        batches = {
            name: np.fromfile(source / name, dtype=np.uint8) for name in (*TRAIN_FILES, TEST_FILE)
        }
        parsed = {name: _parse_records(data, source / name) for name, data in batches.items()}
    else:
        wanted = [f"{FOLDER}/{name}" for name in (*TRAIN_FILES, TEST_FILE)]
        parsed = {}
        for member, data in dl.iter_tar_files(source, wanted):
            name = member.rsplit("/", 1)[-1]
            parsed[name] = _parse_records(np.frombuffer(data, dtype=np.uint8), f"{source}:{member}")
    x_train = np.concatenate([parsed[name][0] for name in TRAIN_FILES])
    y_train = np.concatenate([parsed[name][1] for name in TRAIN_FILES])
    x_test, y_test = parsed[TEST_FILE]
    return (x_train, y_train), (x_test, y_test)


def _parse_records(data: np.ndarray, where: object) -> tuple[np.ndarray, np.ndarray]:
    """Split a batch of 3,073-byte records into NHWC uint8 images and uint8 labels."""
    if data.size == 0 or data.size % RECORD_BYTES:
        raise ValueError(
            f"{where} holds {data.size:,} bytes, which is not a whole number of {RECORD_BYTES}-byte "
            "CIFAR-10 records (1 label byte + 3,072 pixel bytes); is it truncated?"
        )
    records = data.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"{where} holds label {int(labels.max())}; expected labels 0-9")
    images = np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _find_in(directory: Path) -> tuple[Path | None, str]:
    """A usable source in ``directory`` (a folder of .bin files or the archive) or why not."""
    names = (*TRAIN_FILES, TEST_FILE)
    notes = []
    for folder in (directory / FOLDER, directory):
        present = [n for n in names if (folder / n).is_file()]
        if len(present) == len(names):
            return folder, ""
        if present:
            missing = [n for n in names if n not in present]
            notes.append(f"{folder} lacks {', '.join(missing)}")
    if (directory / ARCHIVE).is_file():
        return directory / ARCHIVE, ""
    if not directory.is_dir():
        return None, f"{directory} (no such directory)"
    pickled = [
        p for p in ("cifar-10-python.tar.gz", "cifar-10-batches-py") if (directory / p).exists()
    ]
    if pickled:
        notes.append(
            f"found {', '.join(pickled)}, the pickled python version, which is never read; "
            f"use the binary version {ARCHIVE}"
        )
    detail = "; ".join(notes) if notes else f"neither {FOLDER}/ nor {ARCHIVE}"
    return None, f"{directory} ({detail})"


def _locate(
    explicit: Path | None,
    cache_dir: str | os.PathLike[str] | None,
    download_if_missing: bool,
    verbose: bool,
) -> Path:
    expected = f"{FOLDER}/ with {', '.join(TRAIN_FILES)} and {TEST_FILE}, or {ARCHIVE}"
    if explicit is not None:
        source, why = _find_in(explicit)
        if source is None:
            raise ValueError(
                f"data_dir {str(explicit)!r} does not hold CIFAR-10: expected {expected}. "
                f"Looked in: {why}"
            )
        return source

    looked = []
    env = dl.env_data_dir()
    if env is not None:
        for directory in (env, env / SUBDIR):
            source, why = _find_in(directory)
            if source is not None:
                return source
            looked.append(why)

    cache = dl.get_cache_dir(cache_dir) / SUBDIR
    if (cache / ARCHIVE).is_file() or download_if_missing:
        # download() re-checks a cached archive and fetches it when missing or damaged.
        return dl.download(
            URL,
            ARCHIVE,
            cache_dir=cache_dir,
            subdir=SUBDIR,
            md5=MD5,
            sha256=SHA256,
            verbose=verbose,
        )
    looked.append(f"{cache} (no {ARCHIVE})")
    raise ValueError(
        f"CIFAR-10 was not found and download_if_missing=False. Expected {expected}; "
        f"looked in: {'; '.join(looked)}. Pass data_dir= or set ${dl.DATA_ENV}."
    )
