"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from its gzipped IDX files, parsed with numpy.

Where the files are looked for, in order:

1. ``data_dir`` when given (and only there: a ``data_dir`` without the files is an error);
2. ``$DISTILLDETECT_DATA`` (the directory itself or its ``fashion-mnist/`` folder);
3. the Debian/Ubuntu package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
4. the cache (``<cache>/fashion-mnist``), where missing files are downloaded from the
   official sources and checked against the published MD5 and the SHA-256 of the same files.

In a directory each file may be gzipped (``train-images-idx3-ubyte.gz``, as published) or
already decompressed (``train-images-idx3-ubyte``).

About the checksums: the Debian package ships the same IDX bytes as the official files in a
re-written gzip wrapper (no file name in the header, a 2020 time stamp), so the published MD5s
do not match the Debian ``.gz`` files although their content is identical. Checksums are
therefore verified on downloads (where the official ``.gz`` bytes arrive); local files are
checked by their IDX headers and sizes. ``CONTENT_SHA256`` holds the SHA-256 of the
decompressed files, which is the same for both wrappers.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import struct
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from . import _download as dl

__all__ = ["CLASS_NAMES", "load_fashion_mnist"]

logger = logging.getLogger(__name__)

#: Official sources, tried in order: the S3 site named in the zalandoresearch/fashion-mnist
#: README, then the same files in that GitHub repository (``data/fashion``).
URLS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

#: Where the Debian package ``dataset-fashion-mnist`` installs the files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Folder of the data set under the cache directory and under ``$DISTILLDETECT_DATA``.
SUBDIR = "fashion-mnist"

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

#: Checksums of the official ``.gz`` files: ``{file: (md5, sha256)}``. The MD5s are the ones
#: published in the zalandoresearch/fashion-mnist README; the SHA-256s were computed here from
#: the official bytes (rebuilt from the Debian copies' compressed stream with the original gzip
#: header, which reproduces each published MD5) and agree with other projects' pins.
CHECKSUMS: dict[str, tuple[str, str]] = {
    TRAIN_IMAGES: (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ),
    TRAIN_LABELS: (
        "25c81989df183df01b3e8a0aad5dffbe",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    ),
    TEST_IMAGES: (
        "bef4ecab320f06d8554ea6380940ec79",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ),
    TEST_LABELS: (
        "bb300cfdad3c16e7a12a480ee83cd310",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ),
}

#: SHA-256 of the *decompressed* IDX files (identical for the official and the Debian copies).
CONTENT_SHA256: dict[str, str] = {
    TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

#: Class names of labels 0-9.
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IMAGE_SHAPE = (28, 28)
N_CLASSES = 10
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only type Fashion-MNIST uses


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download_if_missing: bool = True,
    verbose: bool = True,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load Fashion-MNIST as keras' ``fashion_mnist.load_data()`` does.

    Parameters
    ----------
    data_dir
        Directory holding the four IDX files (gzipped or not), directly or in a
        ``fashion-mnist/`` folder. When given, only this directory is used. When None: first
        ``$DISTILLDETECT_DATA``, then the Debian package's ``/usr/share/datasets/fashion-mnist``,
        then the cache, downloading what is missing.
    cache_dir
        Cache directory for downloads; default ``$DISTILLDETECT_CACHE`` or
        ``~/.cache/distilldetect``.
    download_if_missing
        Download the files when no local copy is found; if False, raise ``ValueError`` instead.
    verbose
        Show download progress.

    Returns
    -------
    ((X_train, y_train), (X_test, y_test))
        uint8 images of shape ``(n, 28, 28)`` (60,000 train and 10,000 test for the real data)
        and uint8 labels of shape ``(n,)`` in 0-9 (see ``CLASS_NAMES``).

    Raises
    ------
    ValueError
        A file is missing from ``data_dir`` (the message names it and where it looked), or a
        file is not a valid IDX file (wrong magic number, truncated, sizes that disagree).

    Examples
    --------
    >>> (X_train, y_train), (X_test, y_test) = load_fashion_mnist()  # doctest: +SKIP
    >>> X_train.shape, X_train.dtype, y_test.shape  # doctest: +SKIP
    ((60000, 28, 28), dtype('uint8'), (10000,))
    """
    explicit = dl.check_data_dir(data_dir)
    if not isinstance(download_if_missing, bool):
        raise TypeError(f"download_if_missing must be True or False, got {download_if_missing!r}")
    paths = _locate(explicit, cache_dir, download_if_missing, verbose)
    logger.info("loading Fashion-MNIST from %s", paths[TRAIN_IMAGES].parent)
    x_train = _read_images(paths[TRAIN_IMAGES])
    y_train = _read_labels(paths[TRAIN_LABELS], len(x_train), paths[TRAIN_IMAGES])
    x_test = _read_images(paths[TEST_IMAGES])
    y_test = _read_labels(paths[TEST_LABELS], len(x_test), paths[TEST_IMAGES])
    return (x_train, y_train), (x_test, y_test)


# --------------------------------------------------------------------------- locating the files


def _find_in(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The files found in ``directory`` (gzipped or decompressed) and the names missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in FILES:
        for candidate in (directory / name, directory / name[: -len(".gz")]):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            missing.append(name)
    return found, missing


def _describe_missing(directory: Path, missing: list[str]) -> str:
    if not directory.is_dir():
        return f"{directory} (no such directory)"
    if len(missing) == len(FILES):
        return f"{directory} (none of the files)"
    return f"{directory} (missing {', '.join(missing)})"


def _locate(
    explicit: Path | None,
    cache_dir: str | os.PathLike[str] | None,
    download_if_missing: bool,
    verbose: bool,
) -> dict[str, Path]:
    looked: list[str] = []
    if explicit is not None:
        for directory in (explicit, explicit / SUBDIR):
            found, missing = _find_in(directory)
            if not missing:
                return found
            looked.append(_describe_missing(directory, missing))
        raise ValueError(
            f"data_dir {str(explicit)!r} does not hold Fashion-MNIST: expected the files "
            f"{', '.join(FILES)} (gzipped or decompressed). Looked in: {'; '.join(looked)}"
        )

    candidates: list[Path] = []
    env = dl.env_data_dir()
    if env is not None:
        candidates += [env, env / SUBDIR]
    candidates.append(DEBIAN_DIR)
    for directory in candidates:
        found, missing = _find_in(directory)
        if not missing:
            return found
        if len(missing) < len(FILES):
            logger.warning(
                "ignoring %s: it holds only part of Fashion-MNIST (missing %s)",
                directory,
                ", ".join(missing),
            )
        looked.append(_describe_missing(directory, missing))

    cache = dl.get_cache_dir(cache_dir) / SUBDIR
    found, missing = _find_in(cache)
    if not missing:
        return found
    looked.append(_describe_missing(cache, missing))
    if not download_if_missing:
        raise ValueError(
            "Fashion-MNIST was not found and download_if_missing=False. Expected the files "
            f"{', '.join(FILES)}; looked in: {'; '.join(looked)}. Pass data_dir=, set "
            f"${dl.DATA_ENV}, or install the Debian package dataset-fashion-mnist."
        )
    for name in missing:
        md5, sha256 = CHECKSUMS[name]
        found[name] = dl.download(
            [base + name for base in URLS],
            name,
            cache_dir=cache_dir,
            subdir=SUBDIR,
            md5=md5,
            sha256=sha256,
            verbose=verbose,
        )
    return found


# --------------------------------------------------------------------------- IDX parsing


def _open(path: Path) -> IO[bytes]:
    """Open an IDX file, transparently decompressing gzip (detected by its magic bytes)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_exact(f: IO[bytes], out: memoryview) -> int:
    """Fill ``out`` from ``f``; return the number of bytes read (short only at end of file)."""
    filled = 0
    while filled < len(out):
        n = f.readinto(out[filled:])  # type: ignore[attr-defined]
        if not n:
            break
        filled += n
    return filled


#: Deflate cannot expand data more than about 1032 times: a bound on what a gzip file can hold.
_MAX_DEFLATE_RATIO = 1032


def _check_declared_size(path: Path, dims: tuple[int, ...], size: int, header: int) -> None:
    """Refuse a header announcing more data than the file can hold, before allocating it."""
    on_disk = path.stat().st_size
    if path.suffix == ".gz":
        most = on_disk * _MAX_DEFLATE_RATIO
        if size > most:
            raise ValueError(
                f"{path} is not a valid IDX file: its header announces shape {dims} ({size:,} "
                f"bytes of data), more than a gzip file of {on_disk:,} bytes can hold"
            )
    elif size > on_disk - header:
        raise ValueError(
            f"{path} is truncated: its header announces shape {dims} ({size:,} bytes of data) "
            f"but the file holds only {max(on_disk - header, 0):,} bytes after its header"
        )


def read_idx(path: str | os.PathLike[str], *, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions (gzipped or not).

    The magic number must be ``0x0000 08 <ndim>`` (unsigned bytes, ``ndim`` dimensions), the
    data must have exactly the size the header announces, and nothing may follow it.

    Examples
    --------
    >>> labels = read_idx("t10k-labels-idx1-ubyte.gz", ndim=1)  # doctest: +SKIP
    >>> labels.shape, labels.dtype  # doctest: +SKIP
    ((10000,), dtype('uint8'))
    """
    path = Path(path)
    expected_magic = (_IDX_UBYTE << 8) | ndim
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError(f"{path} is truncated: it ends inside the 4-byte IDX magic number")
            (magic,) = struct.unpack(">I", head)
            if magic != expected_magic:
                raise ValueError(
                    f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s): "
                    f"magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
                )
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise ValueError(f"{path} is truncated: it ends inside the IDX header")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            size = math.prod(dims)  # Python integers: no overflow for any header
            _check_declared_size(path, dims, size, 4 + 4 * ndim)
            data = np.empty(size, dtype=np.uint8)
            got = _read_exact(f, memoryview(data))
            if got < size:
                raise ValueError(
                    f"{path} is truncated: its header announces shape {dims} ({size:,} bytes of "
                    f"data) but the file ends after {got:,}"
                )
            if f.read(1):
                raise ValueError(
                    f"{path} has bytes after the {size:,} data bytes its header (shape {dims}) "
                    "announces"
                )
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path} is a damaged or truncated gzip file: {exc}") from exc
    return data.reshape(dims)


def _read_images(path: Path) -> np.ndarray:
    images = read_idx(path, ndim=3)
    if images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"{path} holds images of shape {images.shape[1:]}, expected {IMAGE_SHAPE} "
            "(Fashion-MNIST images are 28x28)"
        )
    return images


def _read_labels(path: Path, n_images: int, images_path: Path) -> np.ndarray:
    labels = read_idx(path, ndim=1)
    if len(labels) != n_images:
        raise ValueError(
            f"{path} holds {len(labels):,} labels but {images_path} holds {n_images:,} images"
        )
    if labels.size and labels.max() >= N_CLASSES:
        raise ValueError(f"{path} holds label {int(labels.max())}; expected labels 0-9")
    return labels
