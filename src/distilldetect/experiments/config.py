"""Settings and results of the harmful-drift study: :class:`StudyConfig`, :class:`StudyResults`.

No framework, no data: this module only describes a study, so that the stages
(:mod:`~distilldetect.experiments.stages`), the report
(:mod:`~distilldetect.experiments.report`) and the orchestrator
(:mod:`~distilldetect.experiments.harmful_drift`) can all import it without importing each other.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .._version import __version__

__all__ = [
    "DATASETS",
    "DETECTORS",
    "DETECTOR_LABELS",
    "DRIFT_TESTS",
    "FRACTIONS",
    "POWER_CELLS",
    "STUDENTS",
    "TEACHERS",
    "StudyConfig",
    "StudyResults",
    "quick_config",
]

#: ``'user'``: the user's own data (``StudyConfig.data``), with architectures sized to it.
DATASETS: tuple[str, ...] = ("fashion_mnist", "cifar10", "user")
FRACTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
#: The drift tests run on every batch (the same batches for all: paired comparisons).
DETECTORS: tuple[str, ...] = (
    "two_sided",
    "one_sided",
    "tail_rank",
    "entropy",
    "entropy_tail_rank",
    "bbsd",
)
DETECTOR_LABELS: dict[str, str] = {
    "two_sided": "distillation score, KS two-sided",
    "one_sided": "distillation score, KS one-sided (greater)",
    "tail_rank": "distillation score, tail-weighted rank test (TailRankDrift)",
    "entropy": "teacher entropy, KS one-sided (baseline)",
    "entropy_tail_rank": "teacher entropy, tail-weighted rank test (baseline)",
    "bbsd": "BBSD: KS on teacher softmax, Bonferroni (baseline)",
}
#: Tests on the distillation score that can be the study's harmful-drift test.
DRIFT_TESTS: tuple[str, ...] = ("tail_rank", "one_sided")
#: Batches of the power-by-batch-size table: (name, kind of contamination, fraction).
POWER_CELLS: tuple[tuple[str, str, float], ...] = (
    ("harmful_100", "harmful", 1.0),
    ("harmful_50", "harmful", 0.5),
    ("harmless_100", "harmless", 1.0),
)
_MAX_SEED = 2**32 - 1

# Teacher and student architectures per dataset (zoo builder name, keyword arguments).
TEACHERS: dict[str, tuple[str, dict[str, Any]]] = {
    "fashion_mnist": (
        "cnn_classifier",
        {"input_shape": [28, 28], "filters": [32, 64], "dense": [128]},
    ),
    "cifar10": ("resnet", {"input_shape": [32, 32, 3], "num_blocks": 3}),
    # input_shape and num_classes are filled in from the user's data
    "user": ("cnn_classifier", {"filters": [32, 64], "dense": [128]}),
}
STUDENTS: dict[str, tuple[str, dict[str, Any]]] = {
    # chosen on the validation split (scripts/tune_drift.py): a CNN student with the
    # teacher's convolutions and half its dense layer (220 k parameters; the teacher has 420 k)
    "fashion_mnist": (
        "cnn_classifier",
        {"input_shape": [28, 28], "filters": [32, 64], "dense": [64]},
    ),
    "cifar10": ("distilled_model_cifar10", {"input_shape": [32, 32, 3]}),
    "user": ("cnn_classifier", {"filters": [32, 64], "dense": [64]}),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass
class StudyConfig:
    """Settings of the harmful-drift study. Validated by :meth:`validate` before any work.

    Examples
    --------
    >>> StudyConfig(dataset="fashion_mnist", corruptions=["gaussian_noise"]).validate().dataset
    'fashion_mnist'
    """

    dataset: str | None = None  # None: 'user' when ``data`` is given, else 'fashion_mnist'
    data_dir: str | None = None
    data: str | Sequence[str] | None = None  # the user's own data (see datasets.load_user_data)
    corruptions: Sequence[str] | str = "all"
    severities: Sequence[int] = (1, 2, 3, 4, 5)
    n_eval: int = 1000  # evaluation images corrupted per corruption type (the same per severity)
    n_train: int | None = None  # subsample the training set (None: all of it)
    eval_split: str = "test"  # or 'validation': hold out part of the training set instead
    n_validation: int = 10000
    # a cached teacher / saved detector folder, a .keras or .onnx file, or module:factory
    teacher_path: str | None = None
    teacher_weights: str | None = None  # safetensors / .weights.h5 for a module:factory teacher
    pretrained: bool = False  # the shipped Fashion-MNIST teacher and student: no training
    # how uint8 images become the models' input: 'scale_by_instance' (x / 255 scaled by
    # instance, the study's), 'unit' (x / 255) or 'raw' (0-255): a teacher of your own needs
    # the preprocessing it was trained with
    preprocess: str = "scale_by_instance"
    teacher_epochs: int = 5
    teacher_lr: float = 1e-3
    student: str | None = None  # zoo builder name; None: the dataset's default
    student_kwargs: dict[str, Any] | None = None
    student_epochs: int = 10
    student_lr: float = 1e-3
    # Defaults tuned on a validation split of the training data (scripts/tune.py,
    # scripts/tune_drift.py; README "What moves the results"): cross-entropy, T=0.5, an
    # AugMix-trained student, and the tail-weighted rank test.
    augment: str | None = "augmix"  # robust distillation: the student sees augmented inputs
    augment_level: float = 0.5
    batch_size_fit: int = 128
    temperature: float = 0.5
    loss_type: str = "xent"
    drift_test: str = "tail_rank"  # the study's harmful-drift test (one of DRIFT_TESTS)
    tail_power: float = 12.0  # TailRankDrift's weight exponent
    n_ref: int = 1000
    n_batches: int = 100  # batches per contamination level and reference draw
    n_draws: int = 20  # reference draws: the drift part is repeated for each (a 5 % rate
    # moves by ~3 points from one reference draw to the next: the mean of 20 draws has a standard
    # error near 0.7 points, the mean of 5 near 1.5)
    batch_size: int = 100
    fractions: Sequence[float] = FRACTIONS
    power_batch_sizes: Sequence[int] = (10, 20, 50, 100)
    p_val: float = 0.05
    seed: int = 0
    out: str | None = None
    cache_dir: str | None = None
    verbose: bool = True
    quick: bool = False

    def __post_init__(self) -> None:
        if self.dataset is None:
            self.dataset = "user" if self.data is not None else "fashion_mnist"

    # ------------------------------------------------------------------ validation
    def validate(self) -> StudyConfig:
        """Check every setting; raise ValueError/TypeError with a one-line message."""
        from ..corruptions import get_corruption_names

        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {list(DATASETS)}, got {self.dataset!r}")
        if self.data is not None and self.dataset != "user":
            raise ValueError(
                f"data gives the study your own data, so dataset must be 'user' (or left out), "
                f"got dataset={self.dataset!r}"
            )
        if self.dataset == "user" and self.data is None:
            raise ValueError("dataset 'user' needs data: a folder or the four .npy files")
        if self.data is not None and self.data_dir is not None:
            raise ValueError("give data (your own data) or data_dir (a known data set), not both")
        if self.teacher_weights is not None and self.teacher_path is None:
            raise ValueError("teacher_weights needs teacher_path (a module:factory teacher)")
        if self.preprocess not in ("scale_by_instance", "unit", "raw"):
            raise ValueError(
                "preprocess must be one of ['scale_by_instance', 'unit', 'raw'], got "
                f"{self.preprocess!r}"
            )
        if self.pretrained:
            self._check_pretrained()
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
        if not sev or any(not _is_int(s) or not 1 <= s <= 5 for s in sev):
            raise ValueError(f"severities must be integers in 1-5, got {sev}")
        fr = list(self.fractions)
        if not fr or any(not _is_number(f) or not 0 <= f < 1 for f in fr):
            raise ValueError(f"fractions must be numbers in [0, 1), got {fr}")
        for name in (
            "n_eval",
            "n_ref",
            "n_batches",
            "n_draws",
            "batch_size",
            "teacher_epochs",
            "student_epochs",
            "batch_size_fit",
            "n_validation",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        sizes = list(self.power_batch_sizes)
        if any(not _is_int(n) or n < 2 for n in sizes):
            raise ValueError(f"power_batch_sizes must be integers >= 2, got {sizes}")
        if self.n_train is not None and (not _is_int(self.n_train) or self.n_train < 100):
            raise ValueError(f"n_train must be None or an integer >= 100, got {self.n_train!r}")
        if self.eval_split not in ("test", "validation"):
            raise ValueError(f"eval_split must be 'test' or 'validation', got {self.eval_split!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= _MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")
        for name, check, what in (
            ("p_val", lambda v: 0 < v < 1, "in (0, 1)"),
            ("temperature", lambda v: v > 0, "> 0"),
            ("augment_level", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("teacher_lr", lambda v: v > 0, "> 0"),
            ("student_lr", lambda v: v > 0, "> 0"),
        ):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and check(value)):
                raise ValueError(f"{name} must be a finite number {what}, got {value!r}")
        if self.augment not in (None, "augmix"):
            raise ValueError(f"augment must be None or 'augmix', got {self.augment!r}")
        if self.loss_type not in ("kld", "xent"):
            raise ValueError(f"loss_type must be 'kld' or 'xent', got {self.loss_type!r}")
        if self.drift_test not in DRIFT_TESTS:
            raise ValueError(
                f"drift_test must be one of {list(DRIFT_TESTS)}, got {self.drift_test!r}"
            )
        power = self.tail_power
        if not (_is_number(power) and math.isfinite(power) and 1 <= power <= 100):
            raise ValueError(f"tail_power must be a number in [1, 100], got {power!r}")
        if self.student is not None:
            from ..models import MODEL_NAMES

            if self.student not in MODEL_NAMES:
                raise ValueError(
                    f"student must be one of {list(MODEL_NAMES)}, got {self.student!r}"
                )
        if self.teacher_path is not None:
            _check_teacher_spec(self.teacher_path, self.teacher_weights)
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ValueError(f"data_dir {self.data_dir!r} is not a directory")
        if self.cache_dir is not None and Path(self.cache_dir).exists():
            if not Path(self.cache_dir).is_dir():
                raise ValueError(
                    f"cache_dir {self.cache_dir!r} exists and is not a directory "
                    "(teachers are cached in a folder)"
                )
        return self

    #: Settings that train the teacher or the student: unused (so refused) with ``pretrained``.
    TRAINING_FIELDS: ClassVar[tuple[str, ...]] = (
        "teacher_epochs",
        "teacher_lr",
        "student",
        "student_kwargs",
        "student_epochs",
        "student_lr",
        "augment",
        "augment_level",
        "batch_size_fit",
        "temperature",
        "loss_type",
        "n_train",
        "preprocess",
    )

    def _check_pretrained(self) -> None:
        """``pretrained`` uses the shipped detector: refuse settings it cannot honour."""
        if self.dataset != "fashion_mnist":
            raise ValueError(
                f"pretrained: the shipped detector is for fashion_mnist, got dataset "
                f"{self.dataset!r}; train one instead (pretrained=False)"
            )
        if self.teacher_path is not None:
            raise ValueError("give pretrained or teacher_path, not both")
        if self.eval_split != "test":
            raise ValueError(
                "pretrained: the shipped teacher was trained on all 60 000 training images, so a "
                "validation split of them is not held out; train instead (pretrained=False)"
            )
        defaults = StudyConfig()
        changed = [n for n in self.TRAINING_FIELDS if getattr(self, n) != getattr(defaults, n)]
        if changed:
            raise ValueError(
                f"pretrained uses the shipped teacher and student as they were trained; "
                f"{', '.join(changed)} would need training: drop them or train (pretrained=False)"
            )

    def corruption_list(self) -> list[str]:
        """The corruption names of the study (``'all'`` expanded)."""
        from ..corruptions import get_corruption_names

        if isinstance(self.corruptions, str):
            return get_corruption_names("all") if self.corruptions == "all" else [self.corruptions]
        return list(self.corruptions)

    def teacher_spec(
        self, input_shape: Sequence[int] | None = None, num_classes: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """The teacher's zoo builder name and keyword arguments (``'user'``: sized to the data)."""
        name, kwargs = TEACHERS[self.dataset]
        return name, {**kwargs, **_sized(self.dataset, input_shape, num_classes)}

    def student_spec(
        self, input_shape: Sequence[int] | None = None, num_classes: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """The student's zoo builder name and keyword arguments (``'user'``: sized to the data)."""
        name, kwargs = STUDENTS[self.dataset]
        sized = _sized(self.dataset, input_shape, num_classes)
        if self.student is not None and self.student != name:
            shape = TEACHERS[self.dataset][1].get("input_shape")
            name, kwargs = self.student, ({"input_shape": shape} if shape else {})
        return name, {**kwargs, **sized, **(self.student_kwargs or {})}

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON data (``config`` of results.json)."""
        d = dataclasses.asdict(self)
        d["corruptions"] = self.corruption_list()
        d["severities"] = list(self.severities)
        d["fractions"] = [float(f) for f in self.fractions]
        d["power_batch_sizes"] = [int(n) for n in self.power_batch_sizes]
        name, kwargs = self.student_spec()
        d["student"], d["student_kwargs"] = name, kwargs
        d["teacher_arch"] = {"name": TEACHERS[self.dataset][0], "kwargs": TEACHERS[self.dataset][1]}
        if self.data is not None:
            d["data"] = [self.data] if isinstance(self.data, str) else list(self.data)
        return d


def _sized(
    dataset: str | None, input_shape: Sequence[int] | None, num_classes: int | None
) -> dict[str, Any]:
    """For the user's data: the architectures' input shape and class count, from the data."""
    if dataset != "user" or input_shape is None:
        return {}
    sized: dict[str, Any] = {"input_shape": [int(n) for n in input_shape]}
    if num_classes is not None:
        sized["num_classes"] = int(num_classes)
    return sized


def _check_teacher_spec(spec: Any, weights: Any) -> None:
    """``teacher_path``: a folder, a ``.keras`` / ``.onnx`` file, or ``module:factory``."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"teacher_path must be a path or 'module:factory' string, got {spec!r}")
    path = Path(spec)
    if path.is_dir():
        if weights is not None:
            raise ValueError("teacher_weights is only for a module:factory teacher_path")
        return
    if path.suffix in (".keras", ".onnx"):
        if not path.is_file():
            raise ValueError(f"teacher_path {spec!r}: no such file")
        if weights is not None:
            raise ValueError("teacher_weights is only for a module:factory teacher_path")
        return
    module, _, factory = spec.partition(":")
    if not (module and factory) or path.exists():
        raise ValueError(
            f"teacher_path {spec!r} is neither a folder (a cached teacher or saved detector), a "
            ".keras or .onnx file, nor module:factory"
        )
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"teacher_weights {weights!r}: no such file")


def overrides_from_args(args: Any, fields: dict[str, str]) -> dict[str, Any]:
    """The config fields a command line set: ``{field: args.<arg>}`` for each ``arg -> field``
    of ``fields`` whose value is not None (unset flags keep the config's defaults).

    Examples
    --------
    >>> import argparse
    >>> overrides_from_args(argparse.Namespace(seed=3, out=None), {"seed": "seed", "out": "out"})
    {'seed': 3}
    """
    return {
        field: getattr(args, arg) for arg, field in fields.items() if getattr(args, arg) is not None
    }


def quick_config(**overrides: Any) -> StudyConfig:
    """A small configuration that runs end to end in about a minute (used by the tests).

    Four corruption types, a 10 000-image training subsample, 2 teacher and 3 student epochs,
    300 corrupted images per type, 20 batches per contamination level, 2 reference draws.
    """
    settings: dict[str, Any] = {
        "corruptions": ["gaussian_noise", "motion_blur", "contrast", "pixelate"],
        "n_train": 10000,
        "teacher_epochs": 2,
        "student_epochs": 3,
        "n_eval": 300,
        "n_ref": 500,
        "n_batches": 20,
        "n_draws": 2,
        "quick": True,
    }
    if overrides.get("pretrained"):  # the shipped detector: nothing is trained
        for name in StudyConfig.TRAINING_FIELDS:
            settings.pop(name, None)
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
        """The results as plain data (NaN stays NaN; :func:`jsonable` makes it JSON)."""
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
        i10, i20, i90 = _nearest(fr, 0.1), _nearest(fr, 0.2), _nearest(fr, 0.9)
        test = self.config.get("drift_test", "one_sided")

        def pct(kind: str, det: str, i: int) -> str:
            rate = drift[kind].get(det, {}).get("detection_rate", [None] * len(fr))[i]
            return "n/a" if rate is None or rate != rate else f"{100 * rate:.0f}%"

        a = {k: float("nan") if v is None else v for k, v in s["auroc"].items()}
        tests = [test] + (["one_sided"] if test != "one_sided" else [])
        flags = "; ".join(
            f"{t} flags {pct('harmful', t, i10)} / {pct('harmful', t, i20)} of batches with "
            f"{100 * fr[i10]:.0f} / {100 * fr[i20]:.0f}% harmful, {pct('harmless', t, i90)} with "
            f"{100 * fr[i90]:.0f}% harmless"
            for t in tests
        )
        return (
            f"severity {severity}: teacher acc {s['accuracy']:.3f} | harmful {s['n_harmful']} "
            f"harmless {s['n_harmless']} | AUROC distillation {a['distillation']:.3f} entropy "
            f"{a['entropy']:.3f} max_prob {a['max_prob']:.3f} | {flags}"
        )


def _nearest(values: Sequence[float], target: float) -> int:
    return int(np.argmin([abs(v - target) for v in values]))


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON data: NaN and infinities become None, numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    return obj
