"""Pretrained detectors and classifiers: alibi-detect's ``fetch_detector`` / ``fetch_tf_model``.

Both keep alibi-detect's names, signatures and meaning, and download from the same public bucket
layout (``https://storage.googleapis.com/seldon-models/alibi-detect/``; a mirror can be given
with ``base_url=`` or ``$DISTILLDETECT_MODELS_URL``)::

    <base>/ad/<dataset>/<model>/<detector_name>/meta.dill            (or meta.pickle)
    <base>/ad/<dataset>/<model>/<detector_name>/ModelDistillation.dill
    <base>/ad/<dataset>/<model>/<detector_name>/model/model.h5
    <base>/ad/<dataset>/<model>/<detector_name>/model/distilled_model.h5
    <base>/classifier/<dataset>/<model>/model.h5

What differs, and why:

* **Nothing is unpickled and no model code runs**: the ``.dill`` files are read by
  :mod:`distilldetect.saving.pickle_reader` (plain data only), the ``.h5`` models by the
  TensorFlow backend's checked reader (Lambda layers and custom classes refused, naming them).
* **Downloads are cached and verified**: files go through the library's one downloader
  (:func:`distilldetect.datasets.download`: cache directory, temporary file + atomic rename,
  deadline, http(s)-only redirects, the server's own MD5 when it sends one). The SHA-256 of
  each file is recorded in the cache the first time it is downloaded
  (``<cache>/alibi-detect/checksums.json``) and every later use or download must match it:
  a mirror or a cache that starts serving other bytes is refused. A published checksum
  (``checksums=``, or :data:`PUBLISHED_SHA256`) wins over the recorded one.
* **A pretrained Fashion-MNIST detector ships with the package** and is returned offline:
  ``fetch_detector(path, 'adversarial', 'fashion_mnist', 'model_distillation',
  model='cnn_classifier')``, or :func:`pretrained` (``'fashion_mnist'``). How it was made and
  what it scores: :func:`pretrained_info`.

Only alibi-detect's ``ModelDistillation`` adversarial detectors are read; asking for another
detector type says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

from . import files
from .base import describe

__all__ = [
    "MODELS_URL_ENV",
    "DEFAULT_MODELS_URL",
    "PUBLISHED_SHA256",
    "PRETRAINED",
    "fetch_detector",
    "fetch_tf_model",
    "pretrained",
    "pretrained_info",
    "pretrained_path",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a mirror of alibi-detect's model bucket.
MODELS_URL_ENV: str = "DISTILLDETECT_MODELS_URL"
#: alibi-detect's public model bucket.
DEFAULT_MODELS_URL: str = "https://storage.googleapis.com/seldon-models/alibi-detect/"
#: Published SHA-256 digests of bucket files, by path relative to the bucket root. Where one is
#: listed it wins over the digest recorded at the first download. (None is known yet: the
#: bucket publishes MD5s in its ``x-goog-hash`` header, which every download checks.)
PUBLISHED_SHA256: dict[str, str] = {}
#: Detectors shipped with the package: name -> the ``fetch_detector`` arguments that return it.
PRETRAINED: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "detector_type": "adversarial",
        "dataset": "fashion_mnist",
        "detector_name": "model_distillation",
        "model": "cnn_classifier",
    },
}
#: Folder of the cache (under ``$DISTILLDETECT_CACHE`` / ``~/.cache/distilldetect``).
CACHE_SUBDIR: str = "alibi-detect"
#: The file in :data:`CACHE_SUBDIR` recording the SHA-256 of every file downloaded.
RECORD_FILE: str = "checksums.json"

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_DETECTOR_FILES = ("model/model.h5", "model/distilled_model.h5")


# ============================================================================ small helpers
def _check_part(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {describe(value)}")
    if not _NAME.match(value) or value in (".", ".."):
        raise ValueError(
            f"{name} must be a plain name (letters, digits, '_', '-', '.'), got {value!r}"
        )
    return value


def _base_url(base_url: Any) -> str:
    if base_url is None:
        base_url = os.environ.get(MODELS_URL_ENV, "").strip() or DEFAULT_MODELS_URL
    if not isinstance(base_url, str):
        raise TypeError(f"base_url must be a URL string or None, got {describe(base_url)}")
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
    return base_url.rstrip("/") + "/"


def _url(base: str, rel: str) -> str:
    return base + "/".join(urllib.parse.quote(p, safe="") for p in rel.split("/"))


def _check_checksums(checksums: Any) -> dict[str, str]:
    if checksums is None:
        return {}
    if not isinstance(checksums, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in checksums.items()
    ):
        raise TypeError(
            "checksums must be None or a dict {file path in the bucket: SHA-256 hex}, got "
            f"{describe(checksums)}"
        )
    out = {}
    for key, value in checksums.items():
        digest = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"checksums[{key!r}] must be 64 hexadecimal characters, got {value!r}")
        out[key.strip("/")] = digest
    return out


class _Record:
    """The SHA-256 recorded for each bucket file at its first download (trust on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / RECORD_FILE

    def read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        raw = files.read_limited(self.path, 16 * 2**20, "the record of downloaded checksums")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise files.DetectorFormatError(
                f"{self.path} is damaged ({err}); it records the SHA-256 of the files downloaded "
                "before: remove it only if you trust the cached files"
            ) from None
        if not isinstance(data, dict):
            raise files.DetectorFormatError(f"{self.path} must hold a JSON object")
        return data

    def add(self, rel: str, entry: dict[str, Any]) -> None:
        with files.folder_lock(self.root):
            data = self.read()
            data[rel] = entry
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
            files.atomic_write(self.path, text.encode("utf-8"))


def _fetch_file(
    base: str,
    rel: str,
    *,
    cache_dir: Any,
    published: dict[str, str],
    force: bool,
    timeout: float,
    verbose: bool,
) -> tuple[Path, dict[str, Any]]:
    """Download (or reuse) the bucket file ``rel``; return its cached path and checksum."""
    from .datasets._download import download, file_digests, get_cache_dir

    root = get_cache_dir(cache_dir) / CACHE_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    record = _Record(root)
    recorded = record.read().get(rel)
    recorded_sha = recorded.get("sha256") if isinstance(recorded, dict) else None
    expected = published.get(rel) or PUBLISHED_SHA256.get(rel)
    if expected is not None and recorded_sha is not None and expected != recorded_sha:
        logger.warning(
            "%s: the published SHA-256 %s differs from the one recorded at the first download "
            "(%s); the published one wins",
            rel,
            expected,
            recorded_sha,
        )
    expected = expected or recorded_sha
    sub, _, filename = rel.rpartition("/")
    path = download(
        _url(base, rel),
        filename,
        cache_dir=get_cache_dir(cache_dir),
        subdir=f"{CACHE_SUBDIR}/{sub}" if sub else CACHE_SUBDIR,
        sha256=expected,
        force=force,
        timeout=timeout,
        verbose=verbose,
    )
    digest = file_digests(path)["sha256"]
    if expected is not None and digest != expected:  # the file changed after the check
        raise files.DetectorFormatError(
            f"{path} changed while it was read (expected SHA-256 {expected}, got {digest})"
        )
    size = path.stat().st_size
    if recorded_sha != digest:
        record.add(
            rel,
            {
                "sha256": digest,
                "bytes": size,
                "url": _url(base, rel),
                "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
    return path, {"sha256": digest, "bytes": size}


def _copy_into(path: Path, target: Path, checksum: dict[str, Any]) -> None:
    """Put the checked bytes of ``path`` at ``target`` (atomically); an existing different file
    is never replaced."""
    data = files.read_checked(path, checksum, "a downloaded file")
    if target.exists() or target.is_symlink():
        if not target.is_symlink() and target.is_file() and target.read_bytes() == data:
            return
        raise ValueError(
            f"{target} exists and differs from the fetched file; nothing was replaced. Remove it "
            "or fetch into another folder"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(target, data)


# ============================================================================ pretrained
def pretrained_path(name: str = "fashion_mnist") -> Path:
    """The folder of a detector shipped with the package (for :func:`load_detector`).

    Examples
    --------
    >>> pretrained_path("fashion_mnist").name
    'fashion_mnist'
    """
    if not isinstance(name, str) or name not in PRETRAINED:
        raise ValueError(f"name must be one of {sorted(PRETRAINED)}, got {name!r}")
    import importlib.resources

    ref = importlib.resources.files("distilldetect") / "pretrained" / name
    path = Path(str(ref))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the pretrained {name} detector is not installed at {path}: this installation of "
            "distilldetect lacks its package data (reinstall it, or build the detector with "
            "scripts/make_pretrained.py)"
        )
    return path


def pretrained(name: str = "fashion_mnist") -> Any:
    """A detector shipped with the package, loaded offline (a :class:`ModelDistillation`).

    ``'fashion_mnist'``: the harmful-drift study's teacher (the zoo's ``cnn_classifier``) and
    student (``distilled_model_cifar10``, cross-entropy, temperature 0.5, AugMix), trained on
    Fashion-MNIST's 60 000 training images scaled by :func:`~distilldetect.scale_by_instance`
    (``x / 255`` first), with a threshold; PyTorch. See :func:`pretrained_info`.

    Examples
    --------
    >>> ad = pretrained("fashion_mnist")  # doctest: +SKIP
    >>> ad.predict(scale_by_instance(x_test / 255))  # doctest: +SKIP
    """
    from .saving import load_detector

    return load_detector(pretrained_path(name))


def pretrained_info(name: str = "fashion_mnist") -> dict[str, Any]:
    """How a shipped detector was made and what it scored (the JSON written beside it).

    Examples
    --------
    >>> sorted(pretrained_info("fashion_mnist")["test_set"])  # doctest: +SKIP
    ['auroc_score_teacher_wrong', 'flagged_test_5000_9999', 'student_agreement', ...]
    """
    path = pretrained_path(name).with_suffix(".json")
    return json.loads(files.read_limited(path, 2**20, "a pretrained detector's record"))


# ============================================================================ fetch_detector
def fetch_detector(
    filepath: str | os.PathLike,
    detector_type: str,
    dataset: str,
    detector_name: str,
    model: str | None = None,
    *,
    base_url: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    checksums: dict[str, str] | None = None,
    force: bool = False,
    timeout: float = 60.0,
    verbose: bool = True,
) -> Any:
    """Fetch a pretrained adversarial detector, save it in ``filepath`` and return it.

    Same arguments and meaning as alibi-detect's ``fetch_detector``: the detector at
    ``<base_url>/ad/<dataset>/<model>/<detector_name>/`` is downloaded, written to ``filepath``
    in alibi-detect's layout (so that :func:`~distilldetect.load_detector` reads it again) and
    returned as this library's :class:`~distilldetect.ModelDistillation`. Its pickles are never
    run and its Keras models are checked before Keras reads them (see the module docs).

    ``fetch_detector(filepath, 'adversarial', 'fashion_mnist', 'model_distillation',
    model='cnn_classifier')`` (``model=None`` too) returns the detector shipped with the
    package, offline, and saves it in ``filepath`` with :func:`~distilldetect.save_detector`.

    Parameters
    ----------
    filepath
        Local folder to write the detector to (created if missing). A file already there is
        kept if it has the fetched bytes; a different one is never replaced (ValueError).
    detector_type
        ``'adversarial'`` (alibi-detect's ``'outlier'`` detectors are not part of this library).
    dataset
        Data set of the pretrained detector, e.g. ``'cifar10'``.
    detector_name
        Name of the detector in the bucket, e.g. ``'model_distillation'``.
    model
        The classifier the detector protects, e.g. ``'resnet32'``.
    base_url
        (keyword) Root of the bucket or of a mirror; default ``$DISTILLDETECT_MODELS_URL``,
        else :data:`DEFAULT_MODELS_URL`.
    cache_dir
        (keyword) Cache directory; default ``$DISTILLDETECT_CACHE`` or ``~/.cache/distilldetect``.
    checksums
        (keyword) Published SHA-256 digests ``{path in the bucket: hex}`` (e.g.
        ``'ad/cifar10/resnet32/model_distillation/meta.dill'``); they win over those recorded at
        the first download.
    force
        (keyword) Download again even when the cache holds the files (they must still match
        the recorded or published checksums).
    timeout, verbose
        (keyword) Seconds to wait for the server; progress bars.

    Returns
    -------
    ModelDistillation
        With the saved threshold (alibi-detect's bucket detectors often have none: call
        ``infer_threshold`` before ``predict``), temperature, loss type and Keras models.

    Raises
    ------
    ValueError
        Bad arguments, a detector that is not a ModelDistillation, a model with code.
    distilldetect.datasets.DownloadError
        The server refused, the transfer broke, or a file does not match its checksum (nothing
        is kept then).

    Examples
    --------
    >>> ad = fetch_detector("md", "adversarial", "cifar10", "model_distillation",
    ...                     model="resnet32")  # doctest: +SKIP
    >>> ad = fetch_detector("md", "adversarial", "fashion_mnist", "model_distillation",
    ...                     model="cnn_classifier")  # offline  # doctest: +SKIP
    """
    from .datasets._download import DownloadError
    from .saving import load_detector, save_detector

    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(f"filepath must be a str or path, got {describe(filepath)}")
    if detector_type == "outlier":
        raise ValueError(
            "detector_type='outlier': alibi-detect's outlier detectors are not part of "
            "distilldetect; only 'adversarial' (ModelDistillation) detectors are fetched"
        )
    if detector_type != "adversarial":
        raise ValueError(f"detector_type must be 'adversarial', got {detector_type!r}")
    _check_part(dataset, "dataset")
    _check_part(detector_name, "detector_name")
    if model is not None:
        _check_part(model, "model")
    for key, value in (("force", force), ("verbose", verbose)):
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be True or False, got {describe(value)}")

    for name, spec in PRETRAINED.items():
        if (dataset, detector_name) == (spec["dataset"], spec["detector_name"]) and model in (
            None,
            spec["model"],
        ):
            detector = pretrained(name)
            save_detector(detector, filepath)
            logger.info(
                "the pretrained %s detector (shipped with the package) -> %s", name, filepath
            )
            return detector

    if model is None:
        raise ValueError(
            "model (the classifier the detector protects, e.g. 'resnet32') is required for an "
            "adversarial detector"
        )
    base = _base_url(base_url)
    published = _check_checksums(checksums)
    prefix = f"ad/{dataset}/{model}/{detector_name}"
    options = {
        "cache_dir": cache_dir,
        "published": published,
        "force": force,
        "timeout": timeout,
        "verbose": verbose,
    }
    fetched: dict[str, tuple[Path, dict[str, Any]]] = {}
    suffix = ".dill"
    try:
        fetched["meta.dill"] = _fetch_file(base, f"{prefix}/meta.dill", **options)
    except DownloadError as err:
        if "HTTP 404" not in str(err):
            raise
        suffix = ".pickle"
        fetched["meta.pickle"] = _fetch_file(base, f"{prefix}/meta.pickle", **options)
    from .saving.pickle_reader import read_pickle

    meta_path, meta_sum = fetched[f"meta{suffix}"]
    meta = read_pickle(files.read_checked(meta_path, meta_sum, "a downloaded file"), meta_path)
    name = meta.get("name") if isinstance(meta, dict) else None
    if name != "ModelDistillation":
        raise ValueError(
            f"{_url(base, prefix)} holds an alibi-detect {name!r} detector; distilldetect reads "
            "ModelDistillation detectors only"
        )
    for rel in (f"{name}{suffix}", *_DETECTOR_FILES):
        fetched[rel] = _fetch_file(base, f"{prefix}/{rel}", **options)
    target = Path(os.fspath(filepath))
    if target.exists() and not target.is_dir():
        raise ValueError(f"filepath {target} exists and is not a folder")
    if os.path.lexists(target / "config.json"):
        raise ValueError(
            f"filepath {target} holds a detector saved by distilldetect (config.json); fetch into "
            "another folder"
        )
    for rel, (path, checksum) in fetched.items():
        _copy_into(path, target / rel, checksum)
    return load_detector(target)


# ============================================================================ fetch_tf_model
def fetch_tf_model(
    dataset: str,
    model: str,
    *,
    base_url: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    checksum: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
    verbose: bool = True,
    into: Any = None,
) -> Any:
    """Fetch a pretrained Keras classifier from the bucket: alibi-detect's ``fetch_tf_model``.

    Downloads ``<base_url>/classifier/<dataset>/<model>/model.h5`` into the cache (verified as
    described in the module docs; alibi-detect instead writes ``<model>.h5`` to the current
    folder) and loads it with the checked ``.h5`` reader: a model with a Lambda layer or a
    custom class is refused, naming the layer — build that architecture yourself and pass it
    as ``into=``, and only its weights are read.

    Parameters
    ----------
    dataset, model
        E.g. ``'cifar10'``, ``'resnet32'``.
    base_url, cache_dir, force, timeout, verbose
        (keyword) As for :func:`fetch_detector`.
    checksum
        (keyword) The published SHA-256 of ``model.h5``, which wins over the recorded one.
    into
        (keyword) A built Keras model of the same architecture to load the weights into.

    Returns
    -------
    keras.Model
        Not compiled.

    Examples
    --------
    >>> clf = fetch_tf_model("cifar10", "resnet32")  # doctest: +SKIP
    """
    from .backends import get_backend

    _check_part(dataset, "dataset")
    _check_part(model, "model")
    rel = f"classifier/{dataset}/{model}/model.h5"
    published = _check_checksums({rel: checksum} if checksum is not None else None)
    try:
        tf = get_backend("tensorflow")
    except ImportError as err:
        raise ValueError(f"fetch_tf_model returns a Keras model; {err}") from err
    path, digest = _fetch_file(
        _base_url(base_url),
        rel,
        cache_dir=cache_dir,
        published=published,
        force=force,
        timeout=timeout,
        verbose=verbose,
    )
    return tf.load_h5(path, model, checksum=digest, model=into, keyword="into")
