"""The stages of the harmful-drift study, one function each.

``load_data`` → ``get_teacher`` → ``fit_detector`` → per severity ``evaluate_severity`` (corrupt,
score, AUROC) and ``drift_stage`` (contaminated batches against clean references, every test on
the same batches, repeated over reference draws; power by batch size). The orchestrator
(:func:`distilldetect.experiments.harmful_drift.run`) chains them and writes the outputs.

Framework calls go through :func:`distilldetect.backends.get_backend` and
:mod:`distilldetect.models`; nothing here imports torch or TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest
from tqdm.auto import tqdm

from ..ad import ModelDistillation
from ..metrics import auroc, one_minus_max_prob, predictive_entropy
from ..utils import predict_batch, scale_by_instance
from .config import DETECTORS, POWER_CELLS, StudyConfig

__all__ = [
    "StudyData",
    "Teacher",
    "Detector",
    "Pool",
    "to_model_input",
    "load_data",
    "cache_root",
    "teacher_key",
    "check_teacher_path",
    "get_teacher",
    "fit_detector",
    "check_sizes",
    "corruption_rows",
    "has_real_cifar10c",
    "evaluate_severity",
    "reference_draws",
    "drift_stage",
    "batch_pvalues",
    "rate_ci",
]

#: Points kept per ROC curve in results.json.
ROC_POINTS = 101


# ============================================================================ data
@dataclass
class StudyData:
    """Training and evaluation images (uint8 and model input) and labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval_u8: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    split: str
    fingerprint: str = ""  # SHA-256 of the user's training data ('user' only: the cache key)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one instance (the architectures' input for the user's data)."""
        return tuple(int(n) for n in self.x_eval_u8.shape[1:])

    @property
    def num_classes(self) -> int:
        """Labels are class indices: one more than the largest."""
        return int(max(self.y_train.max(initial=0), self.y_eval.max(initial=0))) + 1


#: How uint8 images become the models' input (``StudyConfig.preprocess``).
PREPROCESS: tuple[str, ...] = ("scale_by_instance", "unit", "raw")


def to_model_input(images: np.ndarray, preprocess: str = "scale_by_instance") -> np.ndarray:
    """uint8 images → the models' float32 input.

    ``'scale_by_instance'`` (the study's): ``x / 255`` scaled by instance; ``'unit'``: ``x / 255``;
    ``'raw'``: the values 0-255 as floats. A teacher of your own needs the preprocessing it was
    trained with.

    Examples
    --------
    >>> to_model_input(np.full((1, 2, 2), 255, np.uint8), "unit").tolist()
    [[[1.0, 1.0], [1.0, 1.0]]]
    """
    x = images.astype(np.float32)
    if preprocess == "raw":
        return x
    x /= np.float32(255.0)
    if preprocess == "unit":
        return x
    if preprocess != "scale_by_instance":
        raise ValueError(f"preprocess must be one of {list(PREPROCESS)}, got {preprocess!r}")
    return scale_by_instance(x).astype(np.float32)


def _as_images(x: np.ndarray, name: str) -> np.ndarray:
    """The user's arrays as uint8 images (the corruptions work on images), or ValueError."""
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
        raise ValueError(
            f"{name}: the study corrupts images, so it needs (n, height, width) or (n, height, "
            f"width, 1 or 3) arrays; got shape {x.shape}"
        )
    if x.dtype == np.uint8:
        return x
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if x.dtype.kind == "f" and 0.0 <= lo and hi <= 1.0:
        return np.round(x * 255.0).astype(np.uint8)  # images in [0, 1]: the same pixel levels
    if x.dtype.kind in "iu" and 0 <= lo and hi <= 255:
        return x.astype(np.uint8)
    raise ValueError(
        f"{name}: images must be uint8, integers in 0-255 or floats in [0, 1]; got {x.dtype} "
        f"values in [{lo:g}, {hi:g}]"
    )


def _load_raw(cfg: StudyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """uint8 train/eval images and labels; with eval_split='validation' the eval set is held out."""
    if cfg.dataset == "user":
        from ..datasets.user import load_user_data

        source = cfg.data if isinstance(cfg.data, str) else list(cfg.data or ())
        (x_train, y_train), (x_test, y_test) = load_user_data(source, seed=cfg.seed)
        x_train, x_test = _as_images(x_train, "x_train"), _as_images(x_test, "x_test")
    elif cfg.dataset == "fashion_mnist":
        from ..datasets import load_fashion_mnist

        (x_train, y_train), (x_test, y_test) = load_fashion_mnist(
            data_dir=cfg.data_dir, verbose=cfg.verbose
        )
    else:
        from ..datasets import load_cifar10

        (x_train, y_train), (x_test, y_test) = load_cifar10(
            data_dir=cfg.data_dir, verbose=cfg.verbose
        )
    y_train, y_test = np.asarray(y_train).ravel(), np.asarray(y_test).ravel()
    split = "test"
    if cfg.eval_split == "validation":
        if cfg.n_validation >= len(x_train):
            raise ValueError(
                f"n_validation ({cfg.n_validation}) must be smaller than the training set "
                f"({len(x_train)} images) to hold a validation split out of it"
            )
        rng = np.random.default_rng(cfg.seed + 7919)
        order = rng.permutation(len(x_train))
        val, train = order[: cfg.n_validation], order[cfg.n_validation :]
        x_test, y_test = x_train[val], y_train[val]
        x_train, y_train = x_train[train], y_train[train]
        split = f"validation ({cfg.n_validation} training images held out)"
    if cfg.n_train is not None and cfg.n_train < len(x_train):
        idx = np.sort(
            np.random.default_rng(cfg.seed + 1).choice(len(x_train), cfg.n_train, replace=False)
        )
        x_train, y_train = x_train[idx], y_train[idx]
    return x_train, y_train, x_test, y_test, split


def load_data(cfg: StudyConfig, *, raw_only: bool = False) -> StudyData:
    """Stage 1: the images and labels (``raw_only``: skip the float conversion, for checks)."""
    x_train_u8, y_train, x_eval_u8, y_eval, split = _load_raw(cfg)
    fingerprint = ""
    if cfg.dataset == "user":
        digest = hashlib.sha256()
        for part in (x_train_u8, y_train, x_eval_u8, y_eval):
            digest.update(str(part.shape).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        fingerprint = digest.hexdigest()
    if raw_only:
        return StudyData(x_train_u8, y_train, x_eval_u8, x_eval_u8, y_eval, split, fingerprint)
    return StudyData(
        to_model_input(x_train_u8, cfg.preprocess),
        y_train,
        x_eval_u8,
        to_model_input(x_eval_u8, cfg.preprocess),
        y_eval,
        split,
        fingerprint,
    )


# ============================================================================ teacher
@dataclass
class Teacher:
    """The classifier to protect and its outputs on the clean evaluation images."""

    model: Any
    how: str
    probs_eval: np.ndarray
    accuracy: float
    shipped: ModelDistillation | None = None  # pretrained: the shipped detector, student fitted


def cache_root(cfg: StudyConfig) -> Path:
    """``cache_dir``, else ``$DISTILLDETECT_CACHE``, else ``~/.cache/distilldetect``."""
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir)
    env = os.environ.get("DISTILLDETECT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "distilldetect"


def teacher_key(cfg: StudyConfig, data: StudyData | None = None) -> str:
    """The cache key of the study's teacher: a hash of everything its training depends on
    (for the user's data, the data's own SHA-256 too)."""
    shape = data.input_shape if data is not None else None
    classes = data.num_classes if data is not None else None
    name, kwargs = cfg.teacher_spec(shape, classes)
    spec = {
        "dataset": cfg.dataset,
        "arch": [name, kwargs],
        "epochs": cfg.teacher_epochs,
        "lr": cfg.teacher_lr,
        "batch_size": cfg.batch_size_fit,
        "seed": cfg.seed,
        "n_train": cfg.n_train,
        "eval_split": cfg.eval_split,
        "n_validation": cfg.n_validation if cfg.eval_split == "validation" else None,
        "recipe": 1,
    }
    if cfg.preprocess != "scale_by_instance":
        spec["preprocess"] = cfg.preprocess
    if data is not None and data.fingerprint:
        spec["data"] = data.fingerprint
    blob = json.dumps(spec, sort_keys=True).encode()
    return f"{cfg.dataset}-{hashlib.sha256(blob).hexdigest()[:16]}"


def _load_teacher_folder(path: Path) -> Any:
    """A teacher from ``path`` (a cached teacher or a saved ModelDistillation); ValueError if not.

    Every way the folder can be wrong ends in a one-line ``ValueError`` naming it.
    """
    from . import _teacher_cache

    where = f"teacher {str(path)!r}"
    config = path / _teacher_cache.CONFIG
    if config.is_file():
        try:
            spec = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{where}: {config.name} is not valid JSON ({err})") from None
        from ..backends import FRAMEWORKS

        if not isinstance(spec, dict) or spec.get("framework") not in FRAMEWORKS:
            got = spec.get("framework") if isinstance(spec, dict) else spec
            raise ValueError(
                f"{where}: {config.name} names framework {got!r}; expected one of "
                f"{list(FRAMEWORKS)}"
            )
        if not isinstance(spec.get("model"), dict):
            raise ValueError(f"{where}: {config.name} has no 'model' entry")
    elif (path / "config.json").is_file():
        from ..saving import load_detector

        try:
            detector = load_detector(path)
        except (ValueError, TypeError, OSError) as err:
            raise ValueError(f"{where}: {str(err).splitlines()[0]}") from None
        if not isinstance(detector, ModelDistillation):
            raise ValueError(
                f"{where} holds a saved {type(detector).__name__}, not a teacher: give a cached "
                "teacher (teacher.json) or a saved ModelDistillation"
            )
        return detector.model
    else:
        raise ValueError(
            f"{where} holds neither a cached teacher ({_teacher_cache.CONFIG}) nor a saved "
            "detector (config.json)"
        )
    try:
        return _teacher_cache.load_teacher(path)
    except (ValueError, TypeError, OSError, KeyError, ImportError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{where} cannot be loaded: {message}") from None


def _load_teacher_spec(cfg: StudyConfig) -> Any:
    """The teacher named by ``teacher_path``: a folder, a ``.keras`` / ``.onnx`` file or
    ``module:factory`` (with ``teacher_weights``); ValueError with one line if it cannot be had."""
    path = Path(cfg.teacher_path or "")
    if path.is_dir():
        return _load_teacher_folder(path)
    from ..models import load_classifier

    try:
        return load_classifier(cfg.teacher_path, weights=cfg.teacher_weights)
    except (ValueError, TypeError, OSError, ImportError, AttributeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"teacher {cfg.teacher_path!r} cannot be loaded: {message}") from None


def load_pretrained() -> ModelDistillation:
    """The shipped Fashion-MNIST detector (teacher and student), for ``pretrained=True``."""
    from ..fetching import pretrained

    return pretrained("fashion_mnist")


def check_teacher_path(cfg: StudyConfig) -> None:
    """Load the teacher given by ``teacher_path`` once (cheap), so that a bad folder is refused
    before any long work; check that the cache folder can hold a trained teacher."""
    if cfg.pretrained:
        load_pretrained()
        return
    if cfg.teacher_path is not None:
        _load_teacher_spec(cfg)
        return
    root = cache_root(cfg)
    for parent in (root, *root.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"cache_dir {str(root)!r}: {str(parent)!r} exists and is not a directory; "
                    "the trained teacher could not be cached"
                )
            break


def check_teacher_fits(cfg: StudyConfig, data: StudyData) -> None:
    """The given teacher takes the data's images and has an output per class (4 images)."""
    if cfg.teacher_path is None:
        return
    model = _load_teacher_spec(cfg)
    x = to_model_input(data.x_eval_u8[:4], cfg.preprocess)
    try:
        probs = predict_batch(x, model, batch_size=4)
    except Exception as err:  # the user's model: any framework error, as one line
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"teacher {cfg.teacher_path!r} does not take the data's images of shape "
            f"{data.input_shape}: {message}"
        ) from None
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] < data.num_classes:
        raise ValueError(
            f"teacher {cfg.teacher_path!r} gives outputs of shape {probs.shape[1:]} per image; "
            f"the data has {data.num_classes} classes"
        )


def get_teacher(cfg: StudyConfig, data: StudyData) -> Teacher:
    """Stage 2: the teacher — shipped (``pretrained``), given by ``teacher_path``, cached, or
    trained and cached."""
    from ..models import build_model, train_classifier
    from . import _teacher_cache

    shipped = None
    if cfg.pretrained:
        shipped = load_pretrained()
        model, how = shipped.model, "pretrained (shipped with distilldetect, fashion_mnist)"
    elif cfg.teacher_path is not None:
        model = _load_teacher_spec(cfg)
        how = f"loaded from {cfg.teacher_path}"
    else:
        directory = cache_root(cfg) / "teachers" / teacher_key(cfg, data)
        if _teacher_cache.exists(directory):
            model, how = _teacher_cache.load_teacher(directory), f"cached ({directory})"
        else:
            name, kwargs = cfg.teacher_spec(data.input_shape, data.num_classes)
            model = build_model(name, seed=cfg.seed, **kwargs)
            train_classifier(
                model,
                data.x_train,
                data.y_train,
                epochs=cfg.teacher_epochs,
                batch_size=cfg.batch_size_fit,
                learning_rate=cfg.teacher_lr,
                seed=cfg.seed,
                verbose=cfg.verbose,
            )
            _teacher_cache.save_teacher(model, directory)
            how = f"trained for {cfg.teacher_epochs} epochs, cached in {directory}"
    probs = predict_batch(data.x_eval, model, batch_size=512)
    accuracy = float((probs.argmax(1) == data.y_eval).mean())
    return Teacher(model, how, probs, accuracy, shipped)


# ============================================================================ detector
@dataclass
class Detector:
    """The fitted ModelDistillation and its scores of the clean evaluation images."""

    ad: ModelDistillation
    student_name: str
    n_params: int
    clean_scores: np.ndarray
    agreement: float


def fit_detector(cfg: StudyConfig, data: StudyData, teacher: Teacher) -> Detector:
    """Stage 3: build the student, distil it on the unlabelled training images, score the
    clean evaluation images (``pretrained``: the shipped student, already distilled)."""
    from ..models import build_model

    if teacher.shipped is not None:
        from ..fetching import pretrained_info

        name = pretrained_info("fashion_mnist")["recipe"]["student"]["builder"]
        return _describe_detector(teacher.shipped, data, teacher, name)
    name, kwargs = cfg.student_spec(data.input_shape, data.num_classes)
    student = build_model(name, seed=cfg.seed + 1, **kwargs)
    ad = ModelDistillation(
        distilled_model=student,
        model=teacher.model,
        loss_type=cfg.loss_type,
        temperature=cfg.temperature,
        data_type="image",
    )
    augment_fn = None
    if cfg.augment is not None:
        from ..augment import make_augment_fn

        augment_fn = make_augment_fn(cfg.augment, level=cfg.augment_level)
    ad.fit(
        data.x_train,
        epochs=cfg.student_epochs,
        batch_size=cfg.batch_size_fit,
        verbose=cfg.verbose,
        seed=cfg.seed,
        learning_rate=cfg.student_lr,
        augment_fn=augment_fn,
    )
    return _describe_detector(ad, data, teacher, name)


def _describe_detector(
    ad: ModelDistillation, data: StudyData, teacher: Teacher, name: str
) -> Detector:
    """The fitted detector's scores of the clean evaluation images and its agreement."""
    from ..backends import framework_of, get_backend

    student = ad.distilled_model
    scores = ad.score(data.x_eval, batch_size=512, teacher_probs=teacher.probs_eval)
    student_probs = predict_batch(data.x_eval, student, batch_size=512)
    agreement = float((student_probs.argmax(1) == teacher.probs_eval.argmax(1)).mean())
    n_params = get_backend(framework_of(student)).n_trainable_parameters(student)
    return Detector(ad, name, int(n_params), scores, agreement)


# ============================================================================ corruptions
@dataclass
class Pool:
    """Scores and teacher outputs of a set of instances, with the evaluation row of each."""

    scores: np.ndarray
    probs: np.ndarray
    rows: np.ndarray

    def take(self, idx: np.ndarray) -> Pool:
        return Pool(self.scores[idx], self.probs[idx], self.rows[idx])

    @staticmethod
    def concat(parts: list[Pool]) -> Pool:
        return Pool(
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.probs for p in parts]),
            np.concatenate([p.rows for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.scores)


def check_sizes(cfg: StudyConfig, n_eval_images: int) -> int:
    """The reference size; ValueError if the clean pool cannot fill the largest batch."""
    n_ref = min(cfg.n_ref, n_eval_images // 2)
    largest = max([cfg.batch_size, *cfg.power_batch_sizes])
    if n_eval_images - n_ref < largest:
        which = "batch_size" if largest == cfg.batch_size else "the largest power_batch_sizes"
        raise ValueError(
            f"{which} ({largest}) is larger than the clean evaluation pool "
            f"({n_eval_images - n_ref} = {n_eval_images} evaluation images - {n_ref} reference); "
            "lower the batch size or n_ref"
        )
    return n_ref


def corruption_rows(cfg: StudyConfig, n_eval_images: int) -> dict[str, np.ndarray]:
    """The evaluation images corrupted for each type (the same at every severity)."""
    n_eval = min(cfg.n_eval, n_eval_images)
    return {
        c: np.sort(np.random.default_rng([cfg.seed, i]).choice(n_eval_images, n_eval, False))
        for i, c in enumerate(cfg.corruption_list())
    }


def has_real_cifar10c(cfg: StudyConfig) -> bool:
    """Whether the real CIFAR-10-C files are available locally for this study."""
    if cfg.dataset != "cifar10" or cfg.eval_split != "test":
        return False
    from ..datasets import fetch_cifar10c

    try:
        fetch_cifar10c(
            cfg.corruption_list()[0],
            1,
            data_dir=cfg.data_dir,
            download_if_missing=False,
            verbose=False,
        )
    except (FileNotFoundError, ValueError):
        return False
    return True


def _corrupted(
    cfg: StudyConfig,
    x_eval_u8: np.ndarray,
    rows: np.ndarray,
    corruption: str,
    severity: int,
    real: bool,
) -> np.ndarray:
    """uint8 corrupted versions of ``x_eval_u8[rows]``: the real CIFAR-10-C files or generated."""
    if real:
        from ..datasets import fetch_cifar10c

        x, _ = fetch_cifar10c(
            corruption,
            severity,
            return_X_y=True,
            data_dir=cfg.data_dir,
            download_if_missing=False,
            verbose=False,
        )
        return np.asarray(x[rows], dtype=np.uint8)
    from ..corruptions import corrupt

    seed = (cfg.seed * 1_000_003 + zlib.crc32(f"{corruption}/{severity}".encode())) % (2**32)
    return corrupt(x_eval_u8[rows], corruption, severity, seed=seed)


def _summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan")}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
    }


def _aurocs(
    scores: np.ndarray, probs: np.ndarray, harmful: np.ndarray, harmless: np.ndarray
) -> dict[str, float]:
    entropy = predictive_entropy(probs)
    unconf = one_minus_max_prob(probs)
    return {
        "distillation": auroc(scores[harmful], scores[harmless]),
        "entropy": auroc(entropy[harmful], entropy[harmless]),
        "max_prob": auroc(unconf[harmful], unconf[harmless]),
    }


def roc_curve(positive: np.ndarray, negative: np.ndarray, points: int = ROC_POINTS) -> dict:
    """ROC curve (false / true positive rates) of a score, at ``points`` thresholds that are
    quantiles of all values (so that every part of the curve is drawn)."""
    if len(positive) == 0 or len(negative) == 0:
        return {"fpr": [], "tpr": []}
    values = np.concatenate([positive, negative])
    thresholds = np.unique(np.quantile(values, np.linspace(0, 1, points)))[::-1]
    pos, neg = np.sort(positive), np.sort(negative)
    tpr = 1 - np.searchsorted(pos, thresholds, side="left") / len(pos)
    fpr = 1 - np.searchsorted(neg, thresholds, side="left") / len(neg)
    return {
        "fpr": [0.0, *np.round(fpr, 5).tolist(), 1.0],
        "tpr": [0.0, *np.round(tpr, 5).tolist(), 1.0],
    }


def _score(ad: ModelDistillation, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = predict_batch(x, ad.model, batch_size=512)
    return ad.score(x, batch_size=512, teacher_probs=probs), probs


def evaluate_severity(
    cfg: StudyConfig,
    severity: int,
    data: StudyData,
    teacher: Teacher,
    detector: Detector,
    rows_per_type: dict[str, np.ndarray],
    real: bool,
    corruption_cache: dict | None = None,
) -> tuple[dict[str, Any], Pool, Pool]:
    """Stage 4: corrupt and score every type at ``severity``; split the corrupted instances into
    harmful (teacher right on the clean image, wrong on the corrupted one) and harmless (right
    on both); AUROC and ROC curves of the score and the teacher's uncertainty baselines."""
    clean_ok = teacher.probs_eval.argmax(1) == data.y_eval
    harmful_parts: list[Pool] = []
    harmless_parts: list[Pool] = []
    per_corruption: dict[str, Any] = {}
    n_correct = n_total = 0
    bar = tqdm(
        list(rows_per_type.items()),
        desc=f"Severity {severity}: corrupt + score",
        disable=not cfg.verbose,
        leave=False,
    )
    for corruption, rows in bar:
        key = (cfg.dataset, cfg.eval_split, cfg.seed, len(rows), corruption, severity)
        if corruption_cache is not None and key in corruption_cache:
            x_c = corruption_cache[key]
        else:
            x_c = to_model_input(
                _corrupted(cfg, data.x_eval_u8, rows, corruption, severity, real), cfg.preprocess
            )
            if corruption_cache is not None:
                corruption_cache[key] = x_c
        scores, probs = _score(detector.ad, x_c)
        correct = probs.argmax(1) == data.y_eval[rows]
        harmful = clean_ok[rows] & ~correct
        harmless = clean_ok[rows] & correct
        n_correct += int(correct.sum())
        n_total += len(rows)
        pool = Pool(scores, probs, rows)
        harmful_parts.append(pool.take(np.flatnonzero(harmful)))
        harmless_parts.append(pool.take(np.flatnonzero(harmless)))
        per_corruption[corruption] = {
            "accuracy": float(correct.mean()),
            "n_harmful": int(harmful.sum()),
            "n_harmless": int(harmless.sum()),
            "score_mean": {
                "harmless": _summary(scores[harmless])["mean"],
                "harmful": _summary(scores[harmful])["mean"],
            },
            "auroc": _aurocs(scores, probs, harmful, harmless),
        }
    harmful_pool, harmless_pool = Pool.concat(harmful_parts), Pool.concat(harmless_parts)
    both = Pool.concat([harmful_pool, harmless_pool])
    is_harmful = np.r_[np.ones(len(harmful_pool), bool), np.zeros(len(harmless_pool), bool)]
    baselines = {
        "distillation": both.scores,
        "entropy": predictive_entropy(both.probs),
        "max_prob": one_minus_max_prob(both.probs),
    }
    clean = detector.clean_scores
    entry: dict[str, Any] = {
        "accuracy": n_correct / n_total,
        "n_harmful": len(harmful_pool),
        "n_harmless": len(harmless_pool),
        "score_mean": {
            "clean": float(clean.mean()),
            "harmless": _summary(harmless_pool.scores)["mean"],
            "harmful": _summary(harmful_pool.scores)["mean"],
        },
        "score_std": {
            "clean": float(clean.std()),
            "harmless": _summary(harmless_pool.scores)["std"],
            "harmful": _summary(harmful_pool.scores)["std"],
        },
        "auroc": _aurocs(both.scores, both.probs, is_harmful, ~is_harmful),
        "roc": {k: roc_curve(v[is_harmful], v[~is_harmful]) for k, v in baselines.items()},
        "per_corruption": per_corruption,
    }
    return entry, harmful_pool, harmless_pool


# ============================================================================ drift
def reference_draws(cfg: StudyConfig, n_eval_images: int) -> list[np.ndarray]:
    """The evaluation rows of each draw's reference (the same draws at every severity)."""
    n_ref = check_sizes(cfg, n_eval_images)
    return [
        np.sort(np.random.default_rng([cfg.seed, 2718, d]).permutation(n_eval_images)[:n_ref])
        for d in range(cfg.n_draws)
    ]


def rate_ci(k: int, n: int) -> list[float]:
    """95 % binomial (Clopper-Pearson) confidence interval of a rate ``k / n``."""
    if n == 0:
        return [float("nan"), float("nan")]
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95)
    return [float(ci.low), float(ci.high)]


def _features(pool: Pool) -> dict[str, np.ndarray]:
    return {
        "score": pool.scores,
        "entropy": predictive_entropy(pool.probs),
        "softmax": np.asarray(pool.probs, dtype=np.float64),
    }


#: ``kstwo.sf(d, n)`` by ``(d, n)``: the statistic takes few distinct values (``i/m - j/n``) and
#: SciPy's exact Kolmogorov distribution costs ~2 ms a value, so each is computed once.
_KSTWO_SF: dict[tuple[float, int], float] = {}


def _kstwo_sf(d: np.ndarray, n: int) -> np.ndarray:
    """``scipy.stats.kstwo.sf(d, n)``, elementwise, each distinct value computed once."""
    from scipy.stats import kstwo

    if len(_KSTWO_SF) > 200_000:
        _KSTWO_SF.clear()
    uniq, inverse = np.unique(d, return_inverse=True)
    missing = [v for v in uniq.tolist() if (v, n) not in _KSTWO_SF]
    if missing:
        for v, p in zip(missing, np.atleast_1d(kstwo.sf(np.array(missing), n)), strict=True):
            _KSTWO_SF[(v, n)] = float(p)
    return np.array([_KSTWO_SF[(v, n)] for v in uniq.tolist()])[inverse.reshape(d.shape)]


def _ks_batches(ref: np.ndarray, batches: np.ndarray, alternative: str) -> np.ndarray:
    """SciPy's ``ks_2samp(ref, batch, alternative, method='asymp')`` p-value of every row of
    ``batches`` — what ``KSDrift(ref, alternative=...).score(batch)`` returns — in one pass.

    SciPy's ``axis=`` runs its test row by row (1.6 ms a row here, most of the study's drift
    time); the statistic is computed here for all rows at once from one sort of the pooled
    values (the empirical CDFs evaluated after each run of equal values, as SciPy's
    ``searchsorted(..., side='right')`` does), and the p-value with SciPy's own asymptotic
    formulas. ``tests/test_harmful_drift.py`` checks both agree (ties included).
    """
    batches = np.asarray(batches, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    n_batches, n = batches.shape
    m = len(ref)
    pooled = np.concatenate([np.broadcast_to(ref, (n_batches, m)), batches], axis=1)
    order = np.argsort(pooled, axis=1, kind="stable")
    values = np.take_along_axis(pooled, order, axis=1)
    from_ref = order < m
    diff = np.cumsum(from_ref, axis=1) / m - np.cumsum(~from_ref, axis=1) / n
    last = np.ones(values.shape, dtype=bool)  # the last of each run of equal values
    last[:, :-1] = values[:, 1:] != values[:, :-1]
    max_s = np.where(last, diff, -np.inf).max(axis=1)
    min_s = np.clip(-np.where(last, diff, np.inf).min(axis=1), 0, 1)
    big, small = sorted([float(m), float(n)], reverse=True)
    en = big * small / (big + small)
    if alternative == "two-sided":
        prob = _kstwo_sf(np.maximum(min_s, max_s), int(np.round(en)))
    elif alternative == "greater":
        z = np.sqrt(en) * max_s
        prob = np.exp(
            -2 * z**2 - 2 * z * (big + 2 * small) / np.sqrt(big * small * (big + small)) / 3.0
        )
    else:
        raise ValueError(f"alternative must be 'two-sided' or 'greater', got {alternative!r}")
    return np.clip(np.asarray(prob, dtype=np.float64), 0, 1)


class _BatchTests:
    """Every drift test of the study, fitted on one reference draw; p-values of many batches.

    The tests on the distillation score and the entropy are run through the library's
    detectors (``TailRankDrift``) or SciPy's ``ks_2samp`` with exactly ``KSDrift``'s arguments
    (vectorised over batches; ``tests/test_harmful_drift.py`` checks both agree).
    """

    def __init__(self, cfg: StudyConfig, reference: Pool) -> None:
        from ..cd import TailRankDrift

        feats = _features(reference)
        self.ref = feats
        self.tail = TailRankDrift(
            feats["score"], p_val=cfg.p_val, power=cfg.tail_power, seed=cfg.seed
        )
        self.entropy_tail = TailRankDrift(
            feats["entropy"], p_val=cfg.p_val, power=cfg.tail_power, seed=cfg.seed
        )

    def pvalues(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``batch``: feature name -> (B, n) or (B, n, k) arrays; test name -> (B,) p-values."""
        score, entropy, softmax = batch["score"], batch["entropy"], batch["softmax"]
        out = {
            "two_sided": _ks_batches(self.ref["score"], score, "two-sided"),
            "one_sided": _ks_batches(self.ref["score"], score, "greater"),
            "tail_rank": np.array([self.tail.score(b, preprocessed=True)[0][0] for b in score]),
            "entropy": _ks_batches(self.ref["entropy"], entropy, "greater"),
            "entropy_tail_rank": np.array(
                [self.entropy_tail.score(b, preprocessed=True)[0][0] for b in entropy]
            ),
        }
        k = softmax.shape[2]
        per_class = np.stack(
            [
                _ks_batches(self.ref["softmax"][:, c], softmax[:, :, c], "two-sided")
                for c in range(k)
            ],
            axis=1,
        )
        # one p-value per batch: the Bonferroni-adjusted minimum (KSDrift's batch decision)
        out["bbsd"] = np.minimum(1.0, per_class.min(axis=1) * k)
        return out


def batch_pvalues(cfg: StudyConfig, reference: Pool, batches: dict[str, np.ndarray]) -> dict:
    """p-values of every study test for ``batches`` against ``reference`` (for tests/tools)."""
    return _BatchTests(cfg, reference).pvalues(batches)


def _draw_batches(
    rng: np.random.Generator,
    clean_idx: np.ndarray,
    bad_idx: np.ndarray,
    n_batches: int,
    size: int,
    fraction: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices ``(good (B, n - k), bad (B, k))`` of batches with ``k = round(fraction * n)``
    contaminants; without replacement inside a batch (with it when the pool is too small)."""
    n_bad = int(round(fraction * size))
    good = np.stack(
        [rng.choice(clean_idx, size - n_bad, replace=False) for _ in range(n_batches)]
    ).reshape(n_batches, size - n_bad)
    if n_bad == 0:
        return good, None
    replace = len(bad_idx) < n_bad
    bad = np.stack([rng.choice(bad_idx, n_bad, replace=replace) for _ in range(n_batches)])
    return good, bad.reshape(n_batches, n_bad)


def _assemble(
    clean: dict[str, np.ndarray],
    contaminant: dict[str, np.ndarray],
    good: np.ndarray,
    bad: np.ndarray | None,
) -> dict[str, np.ndarray]:
    return {
        key: clean[key][good]
        if bad is None
        else np.concatenate([clean[key][good], contaminant[key][bad]], axis=1)
        for key in clean
    }


def _stats(pvals: list[np.ndarray], p_val: float) -> dict[str, Any]:
    """Summary of p-values of one cell, given per draw: pooled rate with its CI, draw spread."""
    allp = np.concatenate(pvals)
    flags = [int((p < p_val).sum()) for p in pvals]
    draw_rates = [f / len(p) for f, p in zip(flags, pvals, strict=True)]
    return {
        "mean_p": float(allp.mean()),
        "std_p": float(allp.std()),
        "min_p": float(allp.min()),
        "max_p": float(allp.max()),
        "detection_rate": sum(flags) / len(allp),
        "ci": rate_ci(sum(flags), len(allp)),
        "draw_rates": draw_rates,
        "draw_std": float(np.std(draw_rates)),
    }


_STAT_KEYS = ("mean_p", "std_p", "min_p", "max_p", "detection_rate", "ci", "draw_rates", "draw_std")


def drift_stage(
    cfg: StudyConfig,
    severity: int,
    teacher: Teacher,
    detector: Detector,
    contaminants: dict[str, Pool],
    draws: list[np.ndarray],
    notes: list[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage 5: drift detection at one severity, every test on the same batches.

    For each reference draw: the reference is the clean scores of the draw's rows; batches mix
    clean evaluation images outside the reference with a fraction of harmful (resp. harmless)
    corrupted instances whose clean image is not in the reference either. Returns the
    ``drift`` entry (per contamination fraction) and the power-by-batch-size table.
    """
    n_eval_images = len(detector.clean_scores)
    everything = Pool(detector.clean_scores, teacher.probs_eval, np.arange(n_eval_images))
    clean_feats = _features(everything)
    pool_feats = {kind: _features(pool) for kind, pool in contaminants.items()}
    fractions = [float(f) for f in cfg.fractions]
    sizes = [int(n) for n in cfg.power_batch_sizes]
    pv: dict[str, dict[str, list[list[np.ndarray]]]] = {
        kind: {d: [[] for _ in fractions] for d in DETECTORS} for kind in contaminants
    }
    cells = [("clean", "harmful", 0.0), *POWER_CELLS]
    pw: dict[str, dict[str, list[list[np.ndarray]]]] = {
        name: {d: [[] for _ in sizes] for d in DETECTORS} for name, _, _ in cells
    }
    total = len(draws) * (len(contaminants) * len(fractions) + len(cells) * len(sizes))
    bar = tqdm(
        total=total, desc=f"Severity {severity}: drift", disable=not cfg.verbose, leave=False
    )
    for d, ref_rows in enumerate(draws):
        rng = np.random.default_rng([cfg.seed, 100 + severity, d])
        in_ref = np.zeros(n_eval_images, bool)
        in_ref[ref_rows] = True
        clean_idx = np.flatnonzero(~in_ref)
        tests = _BatchTests(cfg, everything.take(ref_rows))
        allowed = {kind: np.flatnonzero(~in_ref[pool.rows]) for kind, pool in contaminants.items()}
        for kind in contaminants:
            if len(allowed[kind]) == 0:
                bar.update(len(fractions))
                continue
            for i, fraction in enumerate(fractions):
                good, bad = _draw_batches(
                    rng, clean_idx, allowed[kind], cfg.n_batches, cfg.batch_size, fraction
                )
                batch = _assemble(clean_feats, pool_feats[kind], good, bad)
                for name, p in tests.pvalues(batch).items():
                    pv[kind][name][i].append(p)
                bar.update(1)
        for name, kind, fraction in cells:
            for j, size in enumerate(sizes):
                if fraction > 0 and len(allowed[kind]) == 0:
                    bar.update(1)
                    continue
                good, bad = _draw_batches(
                    rng, clean_idx, allowed[kind], cfg.n_batches, size, fraction
                )
                batch = _assemble(clean_feats, pool_feats[kind], good, bad)
                for test, p in tests.pvalues(batch).items():
                    pw[name][test][j].append(p)
                bar.update(1)
    bar.close()

    def summarise(cell_pvals: list[list[np.ndarray]]) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in _STAT_KEYS}
        for pvals in cell_pvals:
            stats = _stats(pvals, cfg.p_val) if pvals else None
            for key in _STAT_KEYS:
                if stats is None:  # no contaminants at all: NaN (null in results.json)
                    nan = float("nan")
                    out[key].append(
                        [nan, nan] if key == "ci" else [] if key == "draw_rates" else nan
                    )
                else:
                    out[key].append(stats[key])
        return out

    drift: dict[str, Any] = {"contamination": fractions, "n_draws": len(draws)}
    for kind in contaminants:
        drift[kind] = {name: summarise(pv[kind][name]) for name in DETECTORS}
    power: dict[str, Any] = {"batch_sizes": sizes, "n_batches": cfg.n_batches * len(draws)}
    for test in DETECTORS:
        entry: dict[str, Any] = {"ci": {}}
        for name, _, _ in cells:
            summary = summarise(pw[name][test])
            entry[name] = summary["detection_rate"]
            entry["ci"][name] = summary["ci"]
        power[test] = entry
    max_bad = int(round(max(fractions) * cfg.batch_size))
    for kind, pool in contaminants.items():
        n_free = (
            len(pool) if not draws else min(int((~np.isin(pool.rows, ref)).sum()) for ref in draws)
        )
        if len(pool) == 0:
            notes.append(
                f"severity {severity}: no {kind} instances; its drift rows are empty (null)"
            )
        elif n_free < max(max_bad, max(sizes)):
            notes.append(
                f"severity {severity}: only {n_free} {kind} instances outside a reference for "
                f"batches needing up to {max(max_bad, max(sizes))}; they were drawn with "
                "replacement"
            )
    return drift, power
