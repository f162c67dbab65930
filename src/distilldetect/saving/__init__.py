"""Save and load detectors safely: a folder of JSON and safetensors files, never pickle.

:func:`save_detector` and :func:`load_detector` keep alibi-detect's names. Where alibi-detect
writes dill pickles (which run arbitrary code when loaded), a saved detector here is a folder
(layout in :mod:`distilldetect.saving.folder`): ``config.json`` (settings, meta, one entry per
model, the SHA-256 and size of every file, and a checksum of itself) and an immutable data
folder of safetensors / ``.keras`` files.

Loading never unpickles and never executes code from the folder: ``config.json`` is parsed as
JSON and checked against its own checksum (a hand-edited setting is refused), every file is
checked against its recorded size and SHA-256 when it is read and before it is parsed, arrays are
read with safetensors, architectures are rebuilt only by this library's own model builders, by
name, with arguments bounded by the weight files, and every detector is built through its
constructor (``from_config``), whose checks refuse settings that cannot score.

Saving is atomic and never deletes what is not its own: the new data folder is written first,
then ``config.json`` is replaced by a rename, then the old data folder is removed. A reader sees
the old detector or the new one, whole (a save under way while a load runs makes the load start
over, or say that a save is in progress); a killed save leaves the old detector in place. A
folder holding anything that an earlier save did not write is refused, naming what is in the way.

Model IO per framework lives in the backends (``backends/<framework>/io.py``): ``save_model(model,
directory, name) -> entry`` and ``load_model(directory, entry, model=None)``; see
:class:`distilldetect.backends.Backend`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import files
from .._version import __version__
from ..base import describe
from ..files import DetectorFormatError
from . import alibi, codec, folder
from .folder import CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION

if TYPE_CHECKING:  # pragma: no cover
    from ..ad.model_distillation import ModelDistillation
    from ..cd.ks import KSDrift

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "DetectorFormatError",
    "save_detector",
    "load_detector",
    "detector_parts",
    "write_bytes",
    "check_bytes",
]

logger = logging.getLogger(__name__)

#: Kept under its format-1 name: write a new file and flush it (see :func:`files.write_new`).
write_bytes = files.write_new
#: Kept under its format-1 name (see :func:`files.check_bytes`).
check_bytes = files.check_bytes

# Siblings that format-1 saves made beside the target: ``.name.tmp-<hex>`` (a killed save's
# partial copy) and ``.name.old-<hex>`` (the previous detector, moved aside for the swap).
_V1_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{12}$")


# ==================================================================================== saving
def save_detector(detector: Any, filepath: str | os.PathLike, legacy: bool = False) -> None:
    """Save a detector (:class:`~distilldetect.ModelDistillation`, :class:`~distilldetect.KSDrift`...).

    The detector is written as a folder of JSON and safetensors files, atomically (see the module
    documentation): a detector saved at ``filepath`` before is replaced whole, or left untouched
    if saving fails or is killed. A folder holding anything else than what an earlier save wrote
    is never touched: the error lists what is in the way.

    What is saved:

    * ModelDistillation: threshold, temperature, loss_type, input_shape, training history, meta
      and the weights of both models. Models of this library's zoo
      (:mod:`distilldetect.models`) are also saved with their builder name and arguments, so
      that :func:`load_detector` rebuilds them; for other modules :func:`load_detector` needs
      ``model=`` / ``distilled_model=`` (an architecture is code, and every format storing
      code for arbitrary torch modules — pickle, ``torch.export`` — can run code on load). A
      black-box teacher (any callable) is not saved: pass it again to :func:`load_detector`.
    * KSDrift: the reference ``x_ref`` (as stored: preprocessed, unless preprocessing is lazy),
      all settings, the reservoir-sampling random state and meta. ``preprocess_fn`` must be None
      or a ModelDistillation's ``score`` (``ad.score`` or ``functools.partial(ad.score,
      batch_size=...)``, as made by ``ad.drift_detector``), which is saved with it; other
      callables cannot be saved.

    Parameters
    ----------
    detector
        The detector to save.
    filepath
        Folder to create or replace. Missing parent folders are created.
    legacy
        Accepted for compatibility with alibi-detect; ``True`` (its pickle format) is refused.

    Raises
    ------
    TypeError
        If ``detector`` is not a detector that can be saved.
    ValueError
        If part of the detector cannot be saved (a ``preprocess_fn`` that is not a detector's
        score, meta that is not JSON, a model with non-tensor state), or ``filepath`` holds
        something other than a saved detector. Nothing is written then.

    Examples
    --------
    >>> save_detector(ad, "detectors/fashion")  # doctest: +SKIP
    >>> ad2 = load_detector("detectors/fashion")  # doctest: +SKIP
    """
    if legacy is not False:
        raise ValueError(
            "legacy=True asks for alibi-detect's legacy format (dill pickles), which "
            "distilldetect never writes: loading a pickle can run arbitrary code"
        )
    target = _check_target(filepath)
    record, write_files = codec.encode(detector)  # everything checkable, before any write
    _tidy_v1_siblings(target)

    def write(data_dir: Path) -> dict[str, Any]:
        write_files(data_dir)
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "detector": record,
            "files": folder.table_of(data_dir),
        }

    files.replace_folder(
        target, write, manifest=CONFIG_FILE, owned=folder.owned_entries, what="a saved detector"
    )
    logger.info("saved %s to %s", record["class"], target)


def _check_target(filepath: Any) -> Path:
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(f"filepath must be a str or path, got {describe(filepath)}")
    target = Path(os.path.abspath(os.fspath(filepath)))
    if target.name in ("", ".", ".."):
        raise ValueError(f"filepath must name a folder to create, got {os.fspath(filepath)!r}")
    if os.path.islink(target):
        raise ValueError(
            f"filepath {target} is a symbolic link; save to the folder it points to instead"
        )
    if target.exists() and not target.is_dir():
        raise ValueError(f"filepath {target} exists and is not a folder; refusing to replace it")
    return target


def _v1_siblings(target: Path) -> list[tuple[str, Path]]:
    if not target.parent.is_dir():
        return []
    out = []
    for entry in target.parent.iterdir():
        m = _V1_SIBLING.match(entry.name)
        if m and m["name"] == target.name and entry.is_dir() and not entry.is_symlink():
            out.append((m["kind"], entry))
    return sorted(out, key=lambda kv: kv[1].stat().st_mtime)


def _recover_v1_aside(target: Path) -> None:
    """A format-1 save killed between its two renames left no detector at ``target`` and the
    previous one beside it as ``.name.old-<hex>``: put it back."""
    if os.path.lexists(target):
        return
    asides = [p for kind, p in _v1_siblings(target) if kind == "old"]
    if asides and (asides[-1] / CONFIG_FILE).is_file():
        os.rename(asides[-1], target)
        logger.warning(
            "recovered the detector at %s from an interrupted save (%s)", target, asides[-1].name
        )


def _tidy_v1_siblings(target: Path) -> None:
    """Recover or remove what killed format-1 saves left beside ``target``."""
    _recover_v1_aside(target)
    for _kind, path in _v1_siblings(target):
        if (path / CONFIG_FILE).is_file() or not any(path.iterdir()):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
            logger.info("removed %s, left by an interrupted save", path)


def detector_parts(detector: Any) -> tuple[ModelDistillation, KSDrift | None]:
    """The ModelDistillation of a detector, and its harmful-drift detector if it is one.

    A saved folder holds either a ModelDistillation, or a drift detector built by
    ``ad.drift_detector`` whose ``preprocess_fn`` is that ModelDistillation's ``score``. The
    service and batch scoring need both halves: the instance scores come from the first, the
    drift test on those scores from the second (``predict(scores, preprocessed=True)``).

    Examples
    --------
    >>> ad, cd = detector_parts(load_detector("detectors/fashion-drift"))  # doctest: +SKIP
    """
    from ..ad.model_distillation import ModelDistillation

    if isinstance(detector, ModelDistillation):
        return detector, None
    preprocess = getattr(detector, "preprocess_fn", None)
    if getattr(detector, "detector_type", None) == "drift":
        owner = codec._score_owner(preprocess) if preprocess is not None else None
        if owner is None or not isinstance(owner[0], ModelDistillation):
            raise ValueError(
                f"detector is a {type(detector).__name__} without a ModelDistillation "
                "(its preprocess_fn is not a ModelDistillation's score): there are no instance "
                "scores to compute"
            )
        return owner[0], detector
    raise TypeError(f"detector must be a ModelDistillation or a KSDrift, got {describe(detector)}")


# =================================================================================== loading
def load_detector(filepath: str | os.PathLike, **kwargs: Any) -> Any:
    """Load a detector saved by :func:`save_detector`, safely.

    Nothing in the folder is executed or unpickled: ``config.json`` is read as JSON and checked
    against its own checksum, every file is checked against its recorded size and SHA-256 before
    being parsed, weights and arrays are read as safetensors, only this library's own model
    builders are called, and the detector is built through its constructor. Folders written by
    distilldetect 0.1 (format 1) load too, and so do folders written by alibi-detect's
    ``save_detector`` (a ModelDistillation's ``meta.dill`` + ``ModelDistillation.dill`` +
    ``model/*.h5``, a KSDrift's ``config.toml`` + ``x_ref.npy``): their pickles are read by a
    restricted reader that builds plain data only and runs nothing, their Keras ``.h5`` models
    are checked for code before Keras reads them (see :mod:`distilldetect.saving.alibi`).

    Parameters
    ----------
    filepath
        The folder written by :func:`save_detector`.
    model
        (keyword) The teacher. Required when the saved teacher was a black-box callable (any
        callable is accepted) or a torch module outside this library's model zoo (a module of
        the same architecture, into which the saved weights are loaded in place). When given
        for a saved zoo model, the weights are loaded into it instead of a rebuilt model.
    distilled_model
        (keyword) The student, likewise: required for a student outside the model zoo. For a
        saved KSDrift whose ``preprocess_fn`` is a ModelDistillation's score, ``model`` and
        ``distilled_model`` go to that ModelDistillation.
    preprocess_fn
        (keyword) Only for a KSDrift saved by alibi-detect whose ``preprocess_fn`` it pickled
        (a function is code, which is never loaded): the function to use instead, e.g.
        ``ad.score``; the keyword arguments alibi-detect saved with it are bound to it.
    enable_unsafe_loading
        (keyword) Accepted for compatibility with alibi-detect; ``True`` is refused.

    Returns
    -------
    ModelDistillation or KSDrift
        The detector, with the saved settings, threshold, meta and weights.

    Raises
    ------
    DetectorFormatError
        (a ``ValueError``) if a file is missing, modified, truncated, of the wrong type, or the
        config is invalid, edited by hand or from a newer format version; the message names the
        file.
    ValueError
        If a required ``model=`` / ``distilled_model=`` is missing, or a given module does not
        match the saved weights (names, shapes, dtypes).
    distilldetect.files.FolderInUseError
        If the folder kept changing while it was read (saves in progress).

    Examples
    --------
    >>> ad = load_detector("detectors/fashion")  # doctest: +SKIP
    >>> ad = load_detector("detectors/blackbox", model=clf.predict_proba)  # doctest: +SKIP
    """
    allowed = {"model", "distilled_model", "enable_unsafe_loading", "preprocess_fn"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"load_detector got unexpected keyword arguments {unknown}; accepted: {sorted(allowed)}"
        )
    if kwargs.pop("enable_unsafe_loading", False) is not False:
        raise ValueError(
            "enable_unsafe_loading=True is refused: distilldetect never loads pickles or runs "
            "code from a saved detector"
        )
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(f"filepath must be a str or path, got {describe(filepath)}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    directory = Path(os.fspath(filepath))
    if not os.path.lexists(directory / CONFIG_FILE) and alibi.is_alibi_folder(directory):
        detector, used = alibi.load_alibi_detector(directory, given)
    else:
        if "preprocess_fn" in given:
            raise ValueError(
                "preprocess_fn= is only taken for a KSDrift saved by alibi-detect (whose pickled "
                f"preprocess_fn is never loaded); {filepath} is not one"
            )
        _check_directory(directory)
        config, _ = folder.read_config(directory)
        if config["format_version"] == 1:
            detector, used = _load_v1(directory, config, given)
        else:
            detector, used = files.read_folder(
                directory, lambda data_dir, manifest: _load_v2(directory, data_dir, manifest, given),
                manifest=CONFIG_FILE, limit=folder.MAX_CONFIG_BYTES,
            )  # fmt: skip
    unused = sorted(set(given) - used)
    if unused:
        raise ValueError(
            f"{', '.join(k + '=' for k in unused)} given, but the {type(detector).__name__} "
            f"saved at {filepath} has no such model"
        )
    return detector


def _load_v2(
    directory: Path, data_dir: Path, manifest: dict[str, Any], given: dict[str, Any]
) -> tuple[Any, set[str]]:
    where = directory / CONFIG_FILE
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise DetectorFormatError(f"{where} changed format while it was read")
    try:
        data_stat = os.lstat(data_dir)
    except FileNotFoundError:
        raise
    import stat

    if not stat.S_ISDIR(data_stat.st_mode):
        raise DetectorFormatError(f"{data_dir} must be a plain folder (not a link)")
    table = folder.file_table(manifest["files"], where)
    return codec.decode(manifest["detector"], codec.Reader(data_dir, table, where), given)


def _load_v1(
    directory: Path, config: dict[str, Any], given: dict[str, Any]
) -> tuple[Any, set[str]]:
    where = directory / CONFIG_FILE
    translated = folder.translate_v1(directory, config)
    table = folder.file_table(translated["files"], where)
    return codec.decode(translated["detector"], codec.Reader(directory, table, where), given)


def _check_directory(directory: Path) -> None:
    if not os.path.lexists(directory):
        _recover_v1_aside(Path(os.path.abspath(directory)))
    if not directory.exists():
        raise FileNotFoundError(f"no saved detector at {directory}")
    if not directory.is_dir():
        raise DetectorFormatError(f"{directory} is not a folder written by save_detector")
    if not (directory / CONFIG_FILE).exists():
        raise DetectorFormatError(
            f"{directory / CONFIG_FILE} is missing: not a folder written by save_detector (nor "
            "by alibi-detect's: no meta.dill, meta.pickle or config.toml)"
        )
