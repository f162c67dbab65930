"""Data sets of the experiments: Fashion-MNIST, CIFAR-10 and CIFAR-10-C, and one downloader.

* :func:`load_fashion_mnist` and :func:`load_cifar10` return ``((X_train, y_train),
  (X_test, y_test))`` of uint8 arrays, like keras' ``load_data()``.
* :func:`fetch_cifar10c` and :func:`corruption_types_cifar10c` keep alibi-detect's names and
  signatures (``fetch_cifar10c`` returns uint8 images instead of float64 of the same values).
* :func:`download` is the one downloader behind them: a cache directory
  (``~/.cache/distilldetect`` or ``$DISTILLDETECT_CACHE``), checksums verified before a file
  is used, atomic writes, and a :class:`DownloadError` naming the URL when anything fails.

For offline use, point ``data_dir=`` or ``$DISTILLDETECT_DATA`` at a directory holding the
files in their published layout. Nothing here loads pickle: CIFAR-10 is read from its binary
archive and ``.npy`` files with ``allow_pickle=False``.
"""

from __future__ import annotations

from ._download import DownloadError, download, get_cache_dir
from .cifar10 import load_cifar10
from .cifar10c import Bunch, corruption_types_cifar10c, fetch_cifar10c
from .fashion_mnist import load_fashion_mnist

__all__ = [
    "Bunch",
    "DownloadError",
    "corruption_types_cifar10c",
    "download",
    "fetch_cifar10c",
    "get_cache_dir",
    "load_cifar10",
    "load_fashion_mnist",
]
