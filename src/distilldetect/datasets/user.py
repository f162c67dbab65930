"""A user's own labelled data for the studies: numpy arrays, or an image folder per class.

:func:`load_user_data` accepts

* a folder (or a list of the four files) holding ``x_train.npy``, ``y_train.npy``,
  ``x_test.npy`` and ``y_test.npy`` (read with ``allow_pickle=False``);
* an image folder with ``train/`` and ``test/`` sub-folders, each with one sub-folder per class
  (``train/cat/001.png``), or one sub-folder per class directly, split into train and test by a
  seeded, stratified draw.

Labels of an image folder are the sorted class-folder names' indices. All images must have the
same size and colour mode; the first one that does not is named in the error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..base import check_seed, describe

__all__ = ["ARRAY_FILES", "IMAGE_SUFFIXES", "load_user_data", "UserData"]

#: The four files of a numpy data folder.
ARRAY_FILES: tuple[str, ...] = ("x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy")
#: Image files read from an image folder.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)


class UserData(tuple):
    """``((x_train, y_train), (x_test, y_test))`` with the ``classes`` names as an attribute."""

    classes: list[str]

    def __new__(cls, train: tuple, test: tuple, classes: list[str]) -> UserData:
        obj = super().__new__(cls, (train, test))
        obj.classes = classes
        return obj


def load_user_data(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> UserData:
    """Load a user's labelled train and test data (see the module documentation).

    Parameters
    ----------
    source
        A folder, or the four ``.npy`` files.
    test_fraction
        For an image folder without ``train/``/``test/``: the share of each class held out.
    seed
        Seed of that split.

    Returns
    -------
    UserData
        ``((x_train, y_train), (x_test, y_test))``; images as uint8 ``(n, h, w)`` or
        ``(n, h, w, c)``, labels int64; ``.classes`` names the classes.

    Raises
    ------
    ValueError
        Naming what is missing or inconsistent (a file, a class folder, an image's size).

    Examples
    --------
    >>> (x_train, y_train), (x_test, y_test) = load_user_data("my_data/")  # doctest: +SKIP
    """
    seed = check_seed(seed) or 0
    if not isinstance(test_fraction, float | int) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {describe(test_fraction)}")
    if isinstance(source, (list, tuple)):
        paths = [Path(os.fspath(p)) for p in source]
        return _from_arrays({p.name: p for p in paths}, f"the files {[str(p) for p in paths]}")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"data must be a folder or a list of .npy files, got {describe(source)}")
    root = Path(os.fspath(source))
    if not root.is_dir():
        raise ValueError(f"data {root} is not a folder")
    present = {name: root / name for name in ARRAY_FILES if (root / name).is_file()}
    if present:
        return _from_arrays(present, str(root))
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = _classes(root / "train")
        x_tr, y_tr = _images(root / "train", classes)
        x_te, y_te = _images(root / "test", classes, like=x_tr)
        return UserData((x_tr, y_tr), (x_te, y_te), classes)
    classes = _classes(root)
    x, y = _images(root, classes)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for k in range(len(classes)):
        idx = np.flatnonzero(y == k)
        n_test = max(1, round(len(idx) * test_fraction))
        if n_test >= len(idx):
            raise ValueError(
                f"class folder {classes[k]!r} has {len(idx)} image(s): too few to hold out "
                f"{test_fraction:.0%} for testing and train on the rest"
            )
        test[rng.choice(idx, size=n_test, replace=False)] = True
    return UserData((x[~test], y[~test]), (x[test], y[test]), classes)


def _from_arrays(files: dict[str, Path], where: str) -> UserData:
    missing = [name for name in ARRAY_FILES if name not in files or not files[name].is_file()]
    if missing:
        raise ValueError(
            f"{where} lacks {', '.join(missing)}: a numpy data folder holds {', '.join(ARRAY_FILES)}"
        )
    arrays = {}
    for name in ARRAY_FILES:
        try:
            arrays[name] = np.load(files[name], allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{files[name]} cannot be read without pickle: {err}") from None
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}.npy"], arrays[f"y_{split}.npy"]
        if x.dtype.kind not in "biuf" or x.ndim < 2:
            raise ValueError(f"x_{split}.npy must hold numbers, instances first; got {describe(x)}")
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
            raise ValueError(
                f"y_{split}.npy must hold one integer label per instance of x_{split}.npy "
                f"({len(x)}), got {describe(y)}"
            )
        out.append((x, y.astype(np.int64)))
    if out[0][0].shape[1:] != out[1][0].shape[1:]:
        raise ValueError(
            f"x_train.npy has instances of shape {out[0][0].shape[1:]} but x_test.npy of "
            f"{out[1][0].shape[1:]}"
        )
    n_classes = int(max(out[0][1].max(initial=0), out[1][1].max(initial=0))) + 1
    if min(out[0][1].min(initial=0), out[1][1].min(initial=0)) < 0:
        raise ValueError("labels must be class indices >= 0")
    return UserData(out[0], out[1], [str(k) for k in range(n_classes)])


def _classes(folder: Path) -> list[str]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(
            f"{folder} must hold the four .npy files ({', '.join(ARRAY_FILES)}), or one "
            f"sub-folder per class (at least two), or train/ and test/ folders of those; found "
            f"{len(classes)} class folder(s)"
        )
    return classes


def _images(folder: Path, classes: list[str], like: np.ndarray | None = None) -> tuple[Any, Any]:
    from PIL import Image

    xs: list[np.ndarray] = []
    ys: list[int] = []
    ref_shape = None if like is None else like.shape[1:]
    for k, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise ValueError(f"{class_dir} is missing: every split needs the same class folders")
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {class_dir} holds no images ({sorted(IMAGE_SUFFIXES)})")
        for file in files:
            try:
                with Image.open(file) as img:
                    arr = np.asarray(
                        img.convert("L" if img.mode in ("1", "L", "P", "I;16") else "RGB")
                    )
            except OSError as err:
                raise ValueError(f"{file} is not a readable image: {err}") from None
            if ref_shape is None:
                ref_shape = arr.shape
            if arr.shape != ref_shape:
                raise ValueError(
                    f"{file} is an image of shape {arr.shape}, but the others are {ref_shape}: "
                    "resize the images to one size first"
                )
            xs.append(arr)
            ys.append(k)
    return np.stack(xs).astype(np.uint8), np.asarray(ys, dtype=np.int64)
