"""The harmful-drift study (alibi-detect's CIFAR-10-C example), end to end, as a function.

Steps (each timed, with progress bars):

1. load train/test images (uint8) and scale them by instance;
2. train — or load from the on-disk cache, keyed by its configuration — a CNN teacher;
3. distil a much smaller student on the teacher's outputs for the unlabelled training set;
4. for every corruption type × severity, corrupt a subsample of test images, split the
   corrupted instances into *harmful* (teacher right on the clean image, wrong on the corrupted
   one) and *harmless* (right on both), and compare the distillation score with the teacher's
   own uncertainty (predictive entropy, 1 - max probability) by AUROC of harmful vs harmless;
5. drift: per severity, batches contaminated with a growing fraction of harmful (resp.
   harmless) corrupted instances against a reference of clean scores, tested with KS two-sided
   and one-sided on the score, KS on the teacher's entropy, and black-box shift detection
   (BBSD: KS on the teacher's softmax vector, Bonferroni);
6. results.json, report.md and figures in the output directory.

``run(StudyConfig(...))`` returns a :class:`StudyResults`; the CLI is a thin face on it.
The test set is never used to choose settings: ``eval_split='validation'`` runs the whole
study on a held-out part of the training data instead, for tuning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._version import __version__
from ..ad import ModelDistillation
from ..metrics import auroc, one_minus_max_prob, predictive_entropy
from ..utils import predict_batch, scale_by_instance

__all__ = [
    "DATASETS",
    "FRACTIONS",
    "StudyConfig",
    "StudyResults",
    "run",
    "quick_config",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("fashion_mnist", "cifar10")
FRACTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
DETECTORS: tuple[str, ...] = ("two_sided", "one_sided", "entropy", "bbsd")
DETECTOR_LABELS: dict[str, str] = {
    "two_sided": "distillation score, KS two-sided",
    "one_sided": "distillation score, KS one-sided (greater)",
    "entropy": "teacher entropy, KS one-sided (baseline)",
    "bbsd": "BBSD: KS on teacher softmax, Bonferroni (baseline)",
}

# Teacher and student architectures per dataset (zoo builder name, keyword arguments).
TEACHERS: dict[str, tuple[str, dict[str, Any]]] = {
    "fashion_mnist": (
        "cnn_classifier",
        {"input_shape": [28, 28], "filters": [32, 64], "dense": [128]},
    ),
    "cifar10": ("resnet", {"input_shape": [32, 32, 3], "num_blocks": 3}),
}
STUDENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fashion_mnist": (
        "distilled_model_cifar10",
        {"input_shape": [28, 28], "nb_filters1": 32, "nb_dense": 40},
    ),
    "cifar10": ("distilled_model_cifar10", {"input_shape": [32, 32, 3]}),
}


@dataclass
class StudyConfig:
    """Settings of the harmful-drift study. Validated by :meth:`validate` before any work.

    Examples
    --------
    >>> StudyConfig(dataset="fashion_mnist", corruptions=["gaussian_noise"]).validate().dataset
    'fashion_mnist'
    """

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    corruptions: Sequence[str] | str = "all"
    severities: Sequence[int] = (1, 2, 3, 4, 5)
    n_eval: int = 1000  # test images corrupted per corruption type (the same ones per severity)
    n_train: int | None = None  # subsample the training set (None: all of it)
    eval_split: str = "test"  # or 'validation': hold out part of the training set instead
    n_validation: int = 10000
    teacher_path: str | None = None
    teacher_epochs: int = 5
    teacher_lr: float = 1e-3
    student: str | None = None  # zoo builder name; None: the dataset's default
    student_kwargs: dict[str, Any] | None = None
    student_epochs: int = 10
    student_lr: float = 1e-3
    # Defaults tuned on a validation split of the training data (scripts/tune.py; README
    # "What moves the results"): cross-entropy, T=0.5 and an AugMix-trained student.
    augment: str | None = "augmix"  # robust distillation: the student sees augmented inputs
    augment_level: float = 0.5
    batch_size_fit: int = 128
    temperature: float = 0.5
    loss_type: str = "xent"
    n_ref: int = 1000
    n_batches: int = 100
    batch_size: int = 100
    fractions: Sequence[float] = FRACTIONS
    p_val: float = 0.05
    seed: int = 0
    out: str | None = None
    cache_dir: str | None = None
    verbose: bool = True
    quick: bool = False

    # ------------------------------------------------------------------ validation
    def validate(self) -> StudyConfig:
        """Check every setting; raise ValueError/TypeError with a one-line message."""
        from ..corruptions import get_corruption_names

        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {list(DATASETS)}, got {self.dataset!r}")
        names = get_corruption_names("all")
        if isinstance(self.corruptions, str):
            if self.corruptions != "all" and self.corruptions not in names:
                raise ValueError(
                    f"unknown corruption {self.corruptions!r}; valid: 'all' or {names}"
                )
        else:
            unknown = [c for c in self.corruptions if c not in names]
            if unknown or not self.corruptions:
                raise ValueError(f"unknown corruption(s) {unknown or '[]'}; valid: {names}")
        sev = list(self.severities)
        if not sev or any(
            isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5 for s in sev
        ):
            raise ValueError(f"severities must be integers in 1-5, got {sev}")
        fr = list(self.fractions)
        if not fr or any(not isinstance(f, (int, float)) or not 0 <= f < 1 for f in fr):
            raise ValueError(f"fractions must be numbers in [0, 1), got {fr}")
        for name in (
            "n_eval",
            "n_ref",
            "n_batches",
            "batch_size",
            "teacher_epochs",
            "student_epochs",
            "batch_size_fit",
            "n_validation",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.n_train is not None and (not isinstance(self.n_train, int) or self.n_train < 100):
            raise ValueError(f"n_train must be None or an integer >= 100, got {self.n_train!r}")
        if self.eval_split not in ("test", "validation"):
            raise ValueError(f"eval_split must be 'test' or 'validation', got {self.eval_split!r}")
        if not 0 < self.p_val < 1:
            raise ValueError(f"p_val must be in (0, 1), got {self.p_val}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.augment not in (None, "augmix"):
            raise ValueError(f"augment must be None or 'augmix', got {self.augment!r}")
        if not 0 < self.augment_level <= 1:
            raise ValueError(f"augment_level must be in (0, 1], got {self.augment_level!r}")
        if self.loss_type not in ("kld", "xent"):
            raise ValueError(f"loss_type must be 'kld' or 'xent', got {self.loss_type!r}")
        if self.student is not None:
            from ..models import MODEL_NAMES

            if self.student not in MODEL_NAMES:
                raise ValueError(
                    f"student must be one of {list(MODEL_NAMES)}, got {self.student!r}"
                )
        if self.teacher_path is not None and not Path(self.teacher_path).is_dir():
            raise ValueError(f"teacher_path {self.teacher_path!r} is not a directory")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ValueError(f"data_dir {self.data_dir!r} is not a directory")
        return self

    def corruption_list(self) -> list[str]:
        from ..corruptions import get_corruption_names

        if isinstance(self.corruptions, str):
            return get_corruption_names("all") if self.corruptions == "all" else [self.corruptions]
        return list(self.corruptions)

    def student_spec(self) -> tuple[str, dict[str, Any]]:
        name, kwargs = STUDENTS[self.dataset]
        if self.student is not None and self.student != name:
            name, kwargs = self.student, {"input_shape": TEACHERS[self.dataset][1]["input_shape"]}
        return name, {**kwargs, **(self.student_kwargs or {})}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["corruptions"] = self.corruption_list()
        d["severities"] = list(self.severities)
        d["fractions"] = [float(f) for f in self.fractions]
        name, kwargs = self.student_spec()
        d["student"], d["student_kwargs"] = name, kwargs
        d["teacher_arch"] = {"name": TEACHERS[self.dataset][0], "kwargs": TEACHERS[self.dataset][1]}
        return d


def quick_config(**overrides: Any) -> StudyConfig:
    """A small configuration that runs end to end in about a minute (used by the tests).

    Four corruption types, a 10 000-image training subsample, 2 teacher and 3 student epochs,
    300 corrupted images per type, 20 batches per contamination level.
    """
    settings: dict[str, Any] = {
        "corruptions": ["gaussian_noise", "motion_blur", "contrast", "pixelate"],
        "n_train": 10000,
        "teacher_epochs": 2,
        "student_epochs": 3,
        "n_eval": 300,
        "n_ref": 500,
        "n_batches": 20,
        "quick": True,
    }
    settings.update(overrides)
    return StudyConfig(**settings)


@dataclass
class StudyResults:
    """Everything the study measured; ``to_dict()`` is the content of results.json."""

    dataset: str
    teacher_accuracy: float
    student_agreement: float
    config: dict[str, Any]
    severities: dict[str, dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "teacher_accuracy": self.teacher_accuracy,
            "student_agreement": self.student_agreement,
            "config": self.config,
            "severities": self.severities,
            "timings": self.timings,
            "notes": self.notes,
            "version": __version__,
        }

    def headline(self, severity: str) -> str:
        """One line summarising a severity."""
        s = self.severities[severity]
        drift = s["drift"]
        fr = drift["contamination"]
        i20 = _nearest(fr, 0.2)
        i50 = _nearest(fr, 0.5)
        harm = drift["harmful"]["one_sided"]["detection_rate"][i20]
        quiet = drift["harmless"]["one_sided"]["detection_rate"][i50]
        harm_text = "n/a" if harm is None or harm != harm else f"{100 * harm:.0f}%"
        quiet_text = "n/a" if quiet is None or quiet != quiet else f"{100 * quiet:.0f}%"
        a = {k: float("nan") if v is None else v for k, v in s["auroc"].items()}
        return (
            f"severity {severity}: teacher acc {s['accuracy']:.3f} | harmful {s['n_harmful']} "
            f"harmless {s['n_harmless']} | AUROC distillation {a['distillation']:.3f} entropy "
            f"{a['entropy']:.3f} max_prob {a['max_prob']:.3f} | one-sided KS flags "
            f"{harm_text} of batches with {100 * fr[i20]:.0f}% harmful, "
            f"{quiet_text} with {100 * fr[i50]:.0f}% harmless"
        )


def _nearest(values: Sequence[float], target: float) -> int:
    return int(np.argmin([abs(v - target) for v in values]))


# ============================================================================ the steps
def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 images → float32 in [0, 1] → scaled by instance (the models' input)."""
    return scale_by_instance(images.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def _load_data(cfg: StudyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Train/eval uint8 images and labels; with eval_split='validation' the eval set is held out."""
    if cfg.dataset == "fashion_mnist":
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


def _cache_root(cfg: StudyConfig) -> Path:
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir)
    env = os.environ.get("DISTILLDETECT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "distilldetect"


def _teacher_key(cfg: StudyConfig) -> str:
    name, kwargs = TEACHERS[cfg.dataset]
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
    blob = json.dumps(spec, sort_keys=True).encode()
    return f"{cfg.dataset}-{hashlib.sha256(blob).hexdigest()[:16]}"


def _get_teacher(cfg: StudyConfig, x_train: np.ndarray, y_train: np.ndarray) -> tuple[Any, str]:
    """The teacher: loaded from ``teacher_path``, from the cache, or trained (and cached)."""
    from ..models import build_model, train_classifier
    from . import _teacher_cache

    if cfg.teacher_path is not None:
        return _teacher_cache.load_teacher(
            Path(cfg.teacher_path)
        ), f"loaded from {cfg.teacher_path}"
    directory = _cache_root(cfg) / "teachers" / _teacher_key(cfg)
    if _teacher_cache.exists(directory):
        return _teacher_cache.load_teacher(directory), f"cached ({directory})"
    name, kwargs = TEACHERS[cfg.dataset]
    seed_torch(cfg.seed)
    teacher = build_model(name, **kwargs)
    train_classifier(
        teacher,
        x_train,
        y_train,
        epochs=cfg.teacher_epochs,
        batch_size=cfg.batch_size_fit,
        learning_rate=cfg.teacher_lr,
        seed=cfg.seed,
        verbose=cfg.verbose,
    )
    _teacher_cache.save_teacher(teacher, directory)
    return teacher, f"trained for {cfg.teacher_epochs} epochs, cached in {directory}"


def seed_torch(seed: int) -> None:
    """Seed torch's global RNG so that a freshly built zoo model has reproducible weights."""
    from ..backends import get_backend

    get_backend("pytorch").manual_seed(seed)


def _check_sizes(cfg: StudyConfig, n_eval_images: int) -> int:
    """The reference size; ValueError if the clean pool cannot fill a batch."""
    n_ref = min(cfg.n_ref, n_eval_images // 2)
    if n_eval_images - n_ref < cfg.batch_size:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) is larger than the clean evaluation pool "
            f"({n_eval_images - n_ref} = {n_eval_images} evaluation images - {n_ref} reference); "
            "lower batch_size or n_ref"
        )
    return n_ref


def _has_real_cifar10c(cfg: StudyConfig) -> bool:
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


@dataclass
class _Pool:
    """Scores and teacher outputs of a set of instances (clean or corrupted)."""

    scores: np.ndarray
    probs: np.ndarray

    def take(self, idx: np.ndarray) -> _Pool:
        return _Pool(self.scores[idx], self.probs[idx])


def _score(
    ad: ModelDistillation, x: np.ndarray, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    probs = predict_batch(x, ad.model, batch_size=batch_size)
    return ad.score(x, batch_size=batch_size, teacher_probs=probs), probs


def _drift_features(pool: _Pool) -> dict[str, np.ndarray]:
    return {
        "score": pool.scores[:, None],
        "entropy": predictive_entropy(pool.probs)[:, None],
        "softmax": pool.probs,
    }


def _drift_study(
    cfg: StudyConfig,
    reference: _Pool,
    clean: _Pool,
    contaminants: dict[str, _Pool],
    rng: np.random.Generator,
    desc: str,
) -> dict[str, Any]:
    """p-values of the four detectors on contaminated batches, per contamination fraction."""
    from ..cd import KSDrift

    ref = _drift_features(reference)
    detectors: dict[str, tuple[KSDrift, str]] = {
        "two_sided": (KSDrift(ref["score"], p_val=cfg.p_val, alternative="two-sided"), "score"),
        "one_sided": (KSDrift(ref["score"], p_val=cfg.p_val, alternative="greater"), "score"),
        "entropy": (KSDrift(ref["entropy"], p_val=cfg.p_val, alternative="greater"), "entropy"),
        "bbsd": (KSDrift(ref["softmax"], p_val=cfg.p_val, correction="bonferroni"), "softmax"),
    }
    clean_feats = _drift_features(clean)
    out: dict[str, Any] = {"contamination": [float(f) for f in cfg.fractions]}
    total = len(cfg.fractions) * cfg.n_batches * len(contaminants)
    bar = tqdm(total=total, desc=desc, disable=not cfg.verbose, leave=False)
    for kind, pool in contaminants.items():
        stats: dict[str, dict[str, list[float]]] = {
            d: {"mean_p": [], "std_p": [], "min_p": [], "max_p": [], "detection_rate": []}
            for d in DETECTORS
        }
        out[kind] = stats
        if len(pool.scores) == 0:  # nothing to contaminate with: NaN (null in results.json)
            for d in DETECTORS:
                for key in stats[d]:
                    stats[d][key] = [float("nan")] * len(cfg.fractions)
            continue
        feats = _drift_features(pool)
        for fraction in cfg.fractions:
            n_bad = int(round(fraction * cfg.batch_size))
            n_good = cfg.batch_size - n_bad
            pvals: dict[str, list[float]] = {d: [] for d in DETECTORS}
            flags: dict[str, list[bool]] = {d: [] for d in DETECTORS}
            for _ in range(cfg.n_batches):
                bad = (
                    rng.choice(len(pool.scores), n_bad, replace=n_bad > len(pool.scores))
                    if n_bad
                    else None
                )
                good = rng.choice(len(clean.scores), n_good, replace=False)
                for name, (detector, key) in detectors.items():
                    parts = [clean_feats[key][good]] + (
                        [feats[key][bad]] if bad is not None else []
                    )
                    batch = np.concatenate(parts)
                    p, _ = detector.score(batch)
                    # one p-value per batch: for BBSD the Bonferroni-adjusted minimum
                    p_batch = float(min(1.0, p.min() * len(p)))
                    pvals[name].append(p_batch)
                    flags[name].append(p_batch < cfg.p_val)
                bar.update(1)
            for name in DETECTORS:
                arr = np.asarray(pvals[name])
                s = stats[name]
                s["mean_p"].append(float(arr.mean()))
                s["std_p"].append(float(arr.std()))
                s["min_p"].append(float(arr.min()))
                s["max_p"].append(float(arr.max()))
                s["detection_rate"].append(float(np.mean(flags[name])))
    bar.close()
    return out


def _summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan")}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
    }


def run(
    config: StudyConfig | None = None, *, _corruption_cache: dict | None = None, **overrides: Any
) -> StudyResults:
    """Run the harmful-drift study and write its outputs.

    Parameters
    ----------
    config
        A :class:`StudyConfig`; keyword ``overrides`` replace its fields.

    Returns
    -------
    StudyResults
        Also written to ``<out>/results.json`` with ``report.md`` and the figures.

    Examples
    --------
    >>> results = run(quick_config(out="results/quick"))  # doctest: +SKIP
    >>> results.severities["3"]["auroc"]["distillation"]  # doctest: +SKIP
    """
    cfg = dataclasses.replace(config or StudyConfig(), **overrides).validate()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    out_dir = prepare_output_dir(cfg)
    corruptions = cfg.corruption_list()
    log = logger.info

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 2)
        return now

    # 1. data ---------------------------------------------------------------------------
    t = time.perf_counter()
    x_train_u8, y_train, x_eval_u8, y_eval, split = _load_data(cfg)
    x_train = to_model_input(x_train_u8)
    x_eval = to_model_input(x_eval_u8)
    log(
        f"data: {cfg.dataset}, {len(x_train)} training and {len(x_eval)} evaluation images ({split})"
    )
    t = lap("data", t)

    # 2. teacher ------------------------------------------------------------------------
    teacher, how = _get_teacher(cfg, x_train, y_train)
    probs_eval = predict_batch(x_eval, teacher, batch_size=512)
    teacher_acc = float((probs_eval.argmax(1) == y_eval).mean())
    log(f"teacher: {how}; accuracy on the {cfg.eval_split} set {teacher_acc:.4f}")
    t = lap("teacher", t)

    # 3. student ------------------------------------------------------------------------
    from ..models import build_model

    student_name, student_kwargs = cfg.student_spec()
    seed_torch(cfg.seed + 1)
    student = build_model(student_name, **student_kwargs)
    ad = ModelDistillation(
        distilled_model=student,
        model=teacher,
        loss_type=cfg.loss_type,
        temperature=cfg.temperature,
        data_type="image",
    )
    augment_fn = None
    if cfg.augment is not None:
        from ..augment import make_augment_fn

        augment_fn = make_augment_fn(cfg.augment, level=cfg.augment_level)
    ad.fit(
        x_train,
        epochs=cfg.student_epochs,
        batch_size=cfg.batch_size_fit,
        verbose=cfg.verbose,
        seed=cfg.seed,
        learning_rate=cfg.student_lr,
        augment_fn=augment_fn,
    )
    clean_scores = ad.score(x_eval, batch_size=512, teacher_probs=probs_eval)
    student_probs = predict_batch(x_eval, student, batch_size=512)
    agreement = float((student_probs.argmax(1) == probs_eval.argmax(1)).mean())
    n_params = sum(p.numel() for p in student.parameters())
    log(
        f"student: {student_name} ({n_params} parameters), agreement with the teacher {agreement:.4f}"
    )
    t = lap("student", t)

    # reference / clean pool / images to corrupt: disjoint parts of the evaluation set
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(x_eval))
    n_ref = _check_sizes(cfg, len(x_eval))
    ref_idx, pool_idx = order[:n_ref], order[n_ref:]
    clean_ok = probs_eval.argmax(1) == y_eval
    reference = _Pool(clean_scores[ref_idx], probs_eval[ref_idx])
    clean_pool = _Pool(clean_scores[pool_idx], probs_eval[pool_idx])
    n_eval = min(cfg.n_eval, len(pool_idx))
    if n_eval < cfg.n_eval:
        notes.append(
            f"n_eval reduced to {n_eval}: only {len(pool_idx)} evaluation images outside the reference"
        )
    rows_per_type = {
        c: np.sort(np.random.default_rng([cfg.seed, i]).choice(pool_idx, n_eval, replace=False))
        for i, c in enumerate(corruptions)
    }

    # 4.-5. corruptions × severities ------------------------------------------------------
    real = _has_real_cifar10c(cfg)
    corruption_source = "CIFAR-10-C files" if real else "generated (distilldetect.corruptions)"
    log(f"corruptions: {len(corruptions)} types, {corruption_source}, {n_eval} images each")
    severities: dict[str, dict[str, Any]] = {}
    for severity in cfg.severities:
        harmful_parts: list[_Pool] = []
        harmless_parts: list[_Pool] = []
        per_corruption: dict[str, Any] = {}
        n_correct = n_total = 0
        bar = tqdm(
            corruptions,
            desc=f"Severity {severity}: corrupt + score",
            disable=not cfg.verbose,
            leave=False,
        )
        for corruption in bar:
            rows = rows_per_type[corruption]
            key = (cfg.dataset, cfg.eval_split, cfg.seed, n_eval, corruption, severity)
            if _corruption_cache is not None and key in _corruption_cache:
                x_c = _corruption_cache[key]
            else:
                x_c = to_model_input(_corrupted(cfg, x_eval_u8, rows, corruption, severity, real))
                if _corruption_cache is not None:
                    _corruption_cache[key] = x_c
            scores, probs = _score(ad, x_c)
            correct = probs.argmax(1) == y_eval[rows]
            harmful = clean_ok[rows] & ~correct
            harmless = clean_ok[rows] & correct
            n_correct += int(correct.sum())
            n_total += len(rows)
            pool = _Pool(scores, probs)
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
        harmful_pool = _Pool(
            np.concatenate([p.scores for p in harmful_parts]),
            np.concatenate([p.probs for p in harmful_parts]),
        )
        harmless_pool = _Pool(
            np.concatenate([p.scores for p in harmless_parts]),
            np.concatenate([p.probs for p in harmless_parts]),
        )
        entry: dict[str, Any] = {
            "accuracy": n_correct / n_total,
            "n_harmful": len(harmful_pool.scores),
            "n_harmless": len(harmless_pool.scores),
            "score_mean": {
                "clean": float(clean_scores.mean()),
                "harmless": _summary(harmless_pool.scores)["mean"],
                "harmful": _summary(harmful_pool.scores)["mean"],
            },
            "score_std": {
                "clean": float(clean_scores.std()),
                "harmless": _summary(harmless_pool.scores)["std"],
                "harmful": _summary(harmful_pool.scores)["std"],
            },
            "auroc": _aurocs(
                np.concatenate([harmful_pool.scores, harmless_pool.scores]),
                np.concatenate([harmful_pool.probs, harmless_pool.probs]),
                np.r_[
                    np.ones(len(harmful_pool.scores), bool),
                    np.zeros(len(harmless_pool.scores), bool),
                ],
                np.r_[
                    np.zeros(len(harmful_pool.scores), bool),
                    np.ones(len(harmless_pool.scores), bool),
                ],
            ),
            "per_corruption": per_corruption,
        }
        max_bad = int(round(max(cfg.fractions) * cfg.batch_size))
        for kind, pool in (("harmful", harmful_pool), ("harmless", harmless_pool)):
            if 0 < len(pool.scores) < max_bad:
                notes.append(
                    f"severity {severity}: only {len(pool.scores)} {kind} instances for batches needing "
                    f"up to {max_bad}; they were drawn with replacement"
                )
        contaminants = {"harmful": harmful_pool, "harmless": harmless_pool}
        for kind, pool in contaminants.items():
            if len(pool.scores) == 0:
                notes.append(
                    f"severity {severity}: no {kind} instances; its drift rows are empty (null)"
                )
        drift_rng = np.random.default_rng([cfg.seed, 100 + severity])
        entry["drift"] = _drift_study(
            cfg, reference, clean_pool, contaminants, drift_rng, f"Severity {severity}: drift"
        )
        severities[str(severity)] = entry
        results_so_far = StudyResults(cfg.dataset, teacher_acc, agreement, {}, severities)
        log(results_so_far.headline(str(severity)))
    t = lap("corruptions_and_drift", t)

    results = StudyResults(
        dataset=cfg.dataset,
        teacher_accuracy=teacher_acc,
        student_agreement=agreement,
        config={
            **cfg.to_dict(),
            "student_parameters": n_params,
            "teacher": how,
            "eval_split": split,
            "corruption_source": corruption_source,
        },
        severities=severities,
        timings=timings,
        notes=notes,
        out=str(out_dir),
    )
    from .report import write_outputs

    write_outputs(results, out_dir)
    lap("outputs", t)
    timings["total"] = round(time.perf_counter() - t_start, 2)
    (out_dir / "results.json").write_text(json.dumps(_jsonable(results.to_dict()), indent=2))
    log(f"done in {timings['total']:.0f} s; results in {out_dir}")
    return results


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


def preflight(cfg: StudyConfig) -> None:
    """Every check that needs no long work: settings, output directory, data files, teacher.

    Raises ValueError / TypeError / OSError with a one-line message.
    """
    cfg.validate()
    prepare_output_dir(cfg)
    _, _, x_eval, _, _ = _load_data(dataclasses.replace(cfg, verbose=False))
    _check_sizes(cfg, len(x_eval))
    if not _has_real_cifar10c(cfg) and cfg.dataset == "cifar10":
        logger.info("no CIFAR-10-C files found: the corruptions will be generated")


def default_out_dir(dataset: str) -> Path:
    """``results/<dataset>-<timestamp>``."""
    return Path("results") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_output_dir(cfg: StudyConfig) -> Path:
    """Create the output directory and check that it can be written; raise ValueError if not."""
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg.dataset)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"output directory {str(out)!r} cannot be written: {err.strerror or err}"
        ) from err
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj
