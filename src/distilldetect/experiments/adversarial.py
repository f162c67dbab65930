"""The adversarial-detection study: attack the teacher, score the attacks, and attack the detector.

Stages (each timed, with progress bars unless ``verbose=False``):

1. ``data``: the harmful-drift study's images (:func:`~.stages.load_data`), scaled by instance;
2. ``detector``: the teacher and its distilled student. For Fashion-MNIST on the test split with
   no ``teacher_path`` and the shipped settings, the pretrained detector
   (:func:`distilldetect.fetching.pretrained`); a saved detector folder as ``teacher_path``;
   otherwise the study's cached teacher (:func:`~.stages.get_teacher`) and a student fitted
   with the study's settings (:func:`~.stages.fit_detector`);
3. ``split``: the evaluation images are split (seeded) into a *held-out* clean set, which only
   sets the thresholds flagging ``fpr`` (5 %) of clean data, and the attack pool, from which the
   first ``n_eval`` images that the teacher classifies correctly are attacked;
4. ``attacks``: FGSM, PGD-L-inf, Carlini-Wagner L2 and SimBA (query-only) at every ``eps``;
   AUROC of successful adversarials against the same images clean, for the distillation score
   and the teacher's uncertainty (entropy, 1 - max probability), and TPR at the held-out
   thresholds;
5. ``adaptive``: PGD on ``min(margin, kappa) - lambda * score`` (:func:`~distilldetect.attacks.
   adaptive_pgd`) at every (eps, lambda); the attacker's
   real success is ``undetected_success_rate``: fooled teacher AND score under the threshold;
6. ``defence``: an ensemble of students with secret seeds (score = mean of their scores),
   attacked gray-box (the attacker trains surrogate students of the same architecture with
   other seeds and attacks those) and white-box (the attacker attacks the real students);
7. ``outputs``: results.json, report.md and PNG figures (:mod:`.adversarial_report`).

No framework is imported here: attacks go through :mod:`distilldetect.attacks`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import attacks as attack_lib
from ..ad import ModelDistillation
from ..metrics import auroc, one_minus_max_prob, predictive_entropy
from ..utils import predict_batch
from . import stages
from .config import DATASETS, StudyConfig, _is_int, _is_number, jsonable
from .outputs import OutputDir, lap_timer, prepare_output_dir

__all__ = [
    "AdversarialConfig",
    "quick_adversarial_config",
    "preflight",
    "run",
    "default_out_dir",
    "SCORES",
]

logger = logging.getLogger(__name__)

#: The per-instance scores compared: the detector's and the teacher's own uncertainty.
SCORES: tuple[str, ...] = ("distillation", "entropy", "max_prob")
_NON_ADAPTIVE = ("fgsm", "pgd", "cw", "blackbox")


def default_out_dir(dataset: str) -> Path:
    """``results/adversarial-<dataset>-<timestamp>``."""
    return Path("results") / f"adversarial-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class AdversarialConfig:
    """Settings of the adversarial study; :meth:`validate` checks them before any work.

    Examples
    --------
    >>> AdversarialConfig(attacks=["fgsm"], eps=[0.3]).validate().attacks
    ['fgsm']
    """

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    attacks: Sequence[str] = attack_lib.ATTACKS
    eps: Sequence[float] = (0.1, 0.2, 0.3, 0.5)  # L-inf budgets in the scaled input space
    n_eval: int = 1000
    n_holdout: int = 2000  # clean evaluation images that set the thresholds only
    fpr: float = 0.05
    teacher_path: str | None = None
    loss_type: str | None = None  # None: the detector's (the study's: xent)
    temperature: float | None = None  # None: the detector's (the study's: 0.5)
    eval_split: str = "test"
    n_train: int | None = None  # training subsample when a student must be fitted
    student_epochs: int | None = None
    pgd_steps: int = 20
    cw_steps: int = 50
    cw_binary_steps: int = 3
    blackbox_steps: int = 1000
    adaptive_steps: int = 40
    adaptive_eps: Sequence[float] | None = None  # None: the same as eps
    lambdas: Sequence[float] = (0.0, 0.01, 0.1, 1.0, 10.0)
    n_students: int = 3  # ensemble defence: secret students (0: no defence section)
    n_surrogates: int = 3  # the gray-box attacker's own students
    ensemble_n_train: int = 20000
    ensemble_epochs: int = 5
    ensemble_reduce: str = "mean"
    defence_eps: float | None = None  # None: the largest adaptive eps
    defences: Sequence[str] = ("ensemble",)  # "ensemble" and/or "robust" (adversarial student)
    robust_eps: float | None = None  # training budget of the robust student; None: defence eps
    robust_steps: int = 5  # PGD steps of the robust student's training perturbation
    robust_p_adv: float = 0.5  # fraction of each training batch perturbed
    robust_epochs: int | None = None  # None: ensemble_epochs
    robust_extra_lambdas: Sequence[float] = (100.0, 1000.0)  # attacker tuned to the defence
    n_examples: int = 4
    batch_size: int = 256
    seed: int = 0
    out: str | None = None
    cache_dir: str | None = None
    verbose: bool = True
    quick: bool = False

    def validate(self) -> AdversarialConfig:
        """Check every setting; raise ValueError/TypeError with a one-line message."""
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {list(DATASETS)}, got {self.dataset!r}")
        self.attacks = attack_lib.check_attack_names(self.attacks)
        for name in ("eps", "lambdas", "adaptive_eps"):
            values = getattr(self, name)
            if values is None:
                continue
            values = list(values)
            if not values:
                raise ValueError(f"{name} must hold at least one value, got []")
            if name == "lambdas":
                bad = [v for v in values if not (_is_number(v) and math.isfinite(v) and v >= 0)]
                if bad:
                    raise ValueError(f"lambdas must be finite numbers >= 0, got {bad}")
            else:
                for v in values:
                    attack_lib.check_eps(v, name)
            setattr(self, name, [float(v) for v in values])
        for name in ("defence_eps", "robust_eps"):
            if getattr(self, name) is not None:
                attack_lib.check_eps(getattr(self, name), name)
        defences = [self.defences] if isinstance(self.defences, str) else self.defences
        if not isinstance(defences, (list, tuple)) or not all(
            d in ("ensemble", "robust") for d in defences
        ):
            raise ValueError(
                f"defences must be a list of 'ensemble' and/or 'robust', got {self.defences!r}"
            )
        self.defences = list(dict.fromkeys(defences))
        p = self.robust_p_adv
        if not (_is_number(p) and 0 < p <= 1):
            raise ValueError(f"robust_p_adv must be a number in (0, 1], got {p!r}")
        if self.robust_epochs is not None and not (
            _is_int(self.robust_epochs) and self.robust_epochs >= 1
        ):
            raise ValueError(f"robust_epochs must be an integer >= 1, got {self.robust_epochs!r}")
        extra = list(self.robust_extra_lambdas)
        bad = [v for v in extra if not (_is_number(v) and math.isfinite(v) and v >= 0)]
        if bad:
            raise ValueError(f"robust_extra_lambdas must be finite numbers >= 0, got {bad}")
        self.robust_extra_lambdas = [float(v) for v in extra]
        for name in (
            "n_eval",
            "n_holdout",
            "pgd_steps",
            "cw_steps",
            "cw_binary_steps",
            "blackbox_steps",
            "adaptive_steps",
            "robust_steps",
            "ensemble_n_train",
            "ensemble_epochs",
            "batch_size",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("n_students", "n_surrogates", "n_examples"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.n_students > 0 and self.n_surrogates < 1:
            raise ValueError("n_surrogates must be >= 1 when n_students > 0 (gray-box attacker)")
        if not (_is_number(self.fpr) and 0 < self.fpr < 1):
            raise ValueError(f"fpr must be a number in (0, 1), got {self.fpr!r}")
        if self.loss_type not in (None, "kld", "xent"):
            raise ValueError(f"loss_type must be 'kld' or 'xent', got {self.loss_type!r}")
        if self.temperature is not None:
            t = self.temperature
            if not (_is_number(t) and math.isfinite(t) and t > 0):
                raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        if self.ensemble_reduce not in ("mean", "max"):
            raise ValueError(
                f"ensemble_reduce must be 'mean' or 'max', got {self.ensemble_reduce!r}"
            )
        self.study_config().validate()  # data, split, seed, paths, n_train, student_epochs
        return self

    def study_config(self) -> StudyConfig:
        """The harmful-drift study's settings this study shares (data, teacher, student)."""
        kw: dict[str, Any] = {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "eval_split": self.eval_split,
            "teacher_path": self.teacher_path,
            "n_train": self.n_train,
            "seed": self.seed,
            "cache_dir": self.cache_dir,
            "verbose": self.verbose,
            "corruptions": ["gaussian_noise"],
        }
        for name in ("loss_type", "temperature", "student_epochs"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        return StudyConfig(**kw)

    def adaptive_budgets(self) -> list[float]:
        return list(self.adaptive_eps if self.adaptive_eps is not None else self.eps)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("attacks", "eps", "lambdas", "defences", "robust_extra_lambdas"):
            d[name] = list(getattr(self, name))
        d["adaptive_eps"] = self.adaptive_budgets()
        return d


def quick_adversarial_config(**overrides: Any) -> AdversarialConfig:
    """Small settings that run end to end in well under two minutes on two cores (the tests').

    The shipped pretrained Fashion-MNIST detector; 100 attacked images, 500 held-out; one eps
    (0.5); short attacks; lambdas 0 and 10; an ensemble of 2 secret students and 1 surrogate
    distilled for one epoch on 3000 training images.
    """
    settings: dict[str, Any] = {
        "eps": [0.5],
        "n_eval": 100,
        "n_holdout": 500,
        "n_train": 3000,
        "student_epochs": 1,
        "pgd_steps": 10,
        "cw_steps": 30,
        "cw_binary_steps": 2,
        "blackbox_steps": 150,
        "adaptive_steps": 10,
        "lambdas": [0.0, 0.1],
        "n_students": 2,
        "n_surrogates": 1,
        "ensemble_n_train": 3000,
        "ensemble_epochs": 1,
        "quick": True,
    }
    settings.update(overrides)
    return AdversarialConfig(**settings)


# ============================================================================ preflight
def _check_teacher_gradients(cfg: AdversarialConfig, teacher: Any, student: Any = None) -> None:
    """The attacks asked for can differentiate through ``teacher`` (and, for the adaptive
    attack, through the students it attacks: ``student``, the detector's own, None for the
    torch student the study fits; the defences' students are of its architecture and
    framework)."""
    from ..backends import framework_of

    framework = framework_of(teacher)
    needs = [a for a in cfg.attacks if a in attack_lib.GRADIENT_ATTACKS]
    if framework == "callable":
        if needs:
            raise ValueError(
                f"the teacher is a black-box callable: attacks {needs} need its gradients (a "
                f"torch or tf.keras model); only {list(attack_lib.QUERY_ATTACKS)} work on it "
                "(--attacks blackbox)"
            )
        return
    robust = "robust" in cfg.defences  # its white-box attack is the adaptive PGD too
    if "adaptive" not in cfg.attacks and not robust:
        return
    students = "pytorch" if student is None else framework_of(student)
    if students != framework:
        raise ValueError(
            f"the adaptive attack differentiates through the teacher and the students together: "
            f"the teacher is a {framework} model, so its students must be too (the detector's "
            f"student is a {students} model; the defences' students are copies of it)"
        )
    builds = robust or (cfg.n_students > 0 and "ensemble" in cfg.defences)
    if builds and student is not None:
        from ..backends import get_backend

        try:  # the defences' students are fresh copies of it: find out now, not after the attacks
            get_backend(framework).fresh_copy(student, 0)
        except ValueError as err:
            raise ValueError(
                f"the defences build students like the detector's: {err} (or --students 0 "
                "--defence '')"
            ) from None


def preflight(cfg: AdversarialConfig, teacher: Any = None) -> None:
    """Every check that needs no long work; ValueError / TypeError / OSError, one line.

    ``teacher``: a model given in Python (instead of ``teacher_path``), checked for gradients.
    """
    cfg.validate()
    scfg = cfg.study_config()
    stages.check_teacher_path(scfg)
    data = stages.load_data(dataclasses.replace(scfg, verbose=False), raw_only=True)
    pool = len(data.x_eval_u8) - cfg.n_holdout
    if pool < 1:
        raise ValueError(
            f"n_holdout ({cfg.n_holdout}) leaves no evaluation image to attack "
            f"({len(data.x_eval_u8)} evaluation images)"
        )
    if cfg.n_eval > pool:
        raise ValueError(
            f"n_eval ({cfg.n_eval}) is larger than the attack pool ({pool} = "
            f"{len(data.x_eval_u8)} evaluation images - {cfg.n_holdout} held out)"
        )
    student = None
    if teacher is None and cfg.teacher_path is not None:
        teacher, given = _load_given(Path(cfg.teacher_path))
        student = None if given is None else given.distilled_model
    if teacher is not None:
        _check_teacher_gradients(cfg, teacher, student)
    prepare_output_dir(cfg.out if cfg.out else default_out_dir(cfg.dataset))


# ============================================================================ models
def _load_given(path: Path) -> tuple[Any, ModelDistillation | None]:
    """(teacher, detector or None) from a cached-teacher or saved-detector folder."""
    if (path / "config.json").is_file() and not (path / "teacher.json").is_file():
        from ..saving import load_detector

        try:
            detector = load_detector(path)
        except (ValueError, TypeError, OSError) as err:
            raise ValueError(f"teacher {str(path)!r}: {str(err).splitlines()[0]}") from None
        if isinstance(detector, ModelDistillation):
            return detector.model, detector
    return stages._load_teacher_folder(path), None


def _saved_student_spec(path: Path) -> tuple[str, dict[str, Any]] | None:
    """The zoo builder and arguments of a saved detector's student (None if not a zoo model:
    the defences' students are then fresh copies of the detector's own)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        entry = config["detector"]["config"]["distilled_model"]["$model"]["entry"]
        arch = entry["architecture"]
        if arch.get("kind") == "zoo":
            return str(arch["builder"]), dict(arch["kwargs"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _uses_pretrained(cfg: AdversarialConfig) -> bool:
    """Whether the shipped Fashion-MNIST teacher is the study's teacher."""
    return cfg.dataset == "fashion_mnist" and cfg.eval_split == "test" and cfg.teacher_path is None


#: The adversarial preset (``--loss-type kld --temperature 1``), chosen on the validation
#: split (scripts/tune_adversarial.py): alibi's KL score at T = 1, no augmentation.
ADVERSARIAL_PRESET: dict[str, Any] = {"loss_type": "kld", "temperature": 1.0, "augment": None}


@dataclass
class _Models:
    teacher: Any
    ad: ModelDistillation
    how: str
    #: zoo builder and arguments of the detector's student; None: not a zoo model
    student_spec: tuple[str, dict[str, Any]] | None
    augment: str | None

    def new_student(self, seed: int) -> Any:
        """A student of the detector's architecture and framework, weights drawn from ``seed``:
        a torch zoo model is built by name, any other model is a fresh copy of the detector's
        student (its backend's ``fresh_copy``)."""
        from ..backends import framework_of, get_backend
        from ..models import build_model

        framework = framework_of(self.ad.distilled_model)
        if framework == "pytorch" and self.student_spec is not None:
            name, kwargs = self.student_spec
            return build_model(name, seed=seed, **kwargs)
        return get_backend(framework).fresh_copy(self.ad.distilled_model, seed)

    def architecture(self) -> dict[str, Any]:
        """The students' architecture as JSON data (``results.json``)."""
        from ..backends import framework_of

        student = self.ad.distilled_model
        if self.student_spec is not None:
            return {
                "name": self.student_spec[0],
                "framework": framework_of(student),
                "kwargs": self.student_spec[1],
            }
        return {
            "name": f"fresh copies of the detector's student ({type(student).__name__})",
            "framework": framework_of(student),
            "kwargs": {},
        }


def _models(cfg: AdversarialConfig, data: stages.StudyData, probs_eval: Any = None) -> _Models:
    scfg = cfg.study_config()
    if _uses_pretrained(cfg):
        from ..fetching import pretrained, pretrained_info, pretrained_path

        ad = pretrained("fashion_mnist")
        recipe = pretrained_info("fashion_mnist")["recipe"]["student"]
        spec = _saved_student_spec(pretrained_path("fashion_mnist"))
        if cfg.loss_type in (None, ad.loss_type) and cfg.temperature in (None, ad.temperature):
            return _Models(
                ad.model,
                ad,
                "the shipped pretrained Fashion-MNIST detector (distilldetect.fetching.pretrained)",
                spec,
                recipe.get("augment"),
            )
        # another score: the shipped teacher, a student of the shipped architecture refitted
        loss = cfg.loss_type or ad.loss_type
        temperature = cfg.temperature or ad.temperature
        epochs = cfg.student_epochs or 5
        models = _Models(ad.model, ad, "", spec, None)
        (student,) = _fit_students(
            cfg, data, models, [cfg.seed + 1], loss, temperature, epochs, len(data.x_train)
        )
        refit = ModelDistillation(
            distilled_model=student, model=ad.model, loss_type=loss, temperature=temperature
        )
        how = (
            "the shipped pretrained Fashion-MNIST teacher; its student's architecture "
            f"refitted with loss {loss}, T={temperature:g}, no augmentation, {epochs} epochs on "
            f"{len(data.x_train)} training images"
        )
        return _Models(ad.model, refit, how, spec, None)
    if cfg.teacher_path is not None:
        teacher, ad = _load_given(Path(cfg.teacher_path))
        same_loss = cfg.loss_type in (None, getattr(ad, "loss_type", None))
        same_t = cfg.temperature in (None, getattr(ad, "temperature", None))
        if ad is not None and same_loss and same_t:
            spec = _saved_student_spec(Path(cfg.teacher_path))
            return _Models(teacher, ad, f"saved detector {cfg.teacher_path}", spec, scfg.augment)
        probs = predict_batch(data.x_eval, teacher, batch_size=512)
        t = stages.Teacher(teacher, f"loaded from {cfg.teacher_path}", probs, float("nan"))
    else:
        t = stages.get_teacher(scfg, data)
    det = stages.fit_detector(scfg, data, t)
    how = f"teacher {t.how}; student {det.student_name} fitted ({scfg.student_epochs} epochs)"
    return _Models(t.model, det.ad, how, scfg.student_spec(), scfg.augment)


def _fit_students(
    cfg: AdversarialConfig,
    data: stages.StudyData,
    models: _Models,
    seeds: Sequence[int],
    loss_type: str | None = None,
    temperature: float | None = None,
    epochs: int | None = None,
    n_train: int | None = None,
    augment_factory: Callable[[Any], Callable] | None = None,
) -> list[Any]:
    """Students of the detector's architecture and recipe, one per seed (build + fit).

    ``augment_factory(student) -> augment_fn`` replaces the recipe's augmentation (the robust
    student's adversarial augmenter needs the student it trains)."""
    rng = np.random.default_rng(cfg.seed + 4242)
    n = min(n_train or cfg.ensemble_n_train, len(data.x_train))
    x_fit = data.x_train[np.sort(rng.choice(len(data.x_train), n, replace=False))]
    teacher_probs = predict_batch(x_fit, models.teacher, batch_size=512)
    augment_fn = None
    if models.augment is not None:
        from ..augment import make_augment_fn

        augment_fn = make_augment_fn(models.augment, level=0.5)
    students = []
    for seed in seeds:
        student = models.new_student(seed)
        ad = ModelDistillation(
            distilled_model=student,
            model=models.teacher,
            loss_type=loss_type or models.ad.loss_type,
            temperature=temperature or models.ad.temperature,
        )
        ad.fit(
            x_fit,
            epochs=epochs or cfg.ensemble_epochs,
            batch_size=128,
            verbose=cfg.verbose,
            seed=seed,
            teacher_probs=teacher_probs,
            augment_fn=augment_fn if augment_factory is None else augment_factory(student),
        )
        students.append(student)
    return students


# ============================================================================ scoring
class _Scorer:
    """Distillation score (one student, or the mean / max over an ensemble) and baselines."""

    def __init__(self, teacher: Any, detectors: Sequence[ModelDistillation], reduce: str) -> None:
        self.teacher, self.detectors, self.reduce = teacher, list(detectors), reduce

    def __call__(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        probs = predict_batch(x, self.teacher, batch_size=512)
        per = np.stack([d.score(x, batch_size=512, teacher_probs=probs) for d in self.detectors])
        dist = per.mean(0) if self.reduce == "mean" else per.max(0)
        return (
            {
                "distillation": dist,
                "entropy": predictive_entropy(probs),
                "max_prob": one_minus_max_prob(probs),
            },
            probs,
        )


def _norms(delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return np.linalg.norm(flat, axis=1), np.abs(flat).max(axis=1)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _entry(
    eps: float,
    x_clean: np.ndarray,
    x_adv: np.ndarray,
    y: np.ndarray,
    clean: dict[str, np.ndarray],
    thresholds: dict[str, float],
    scorer: _Scorer,
) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
    scores, probs = scorer(x_adv)
    success = probs.argmax(1) != y
    l2, linf = _norms(x_adv - x_clean)
    entry = {
        "eps": eps,
        "attack_success_rate": float(success.mean()),
        "n_adversarial": int(success.sum()),
        "auroc": {k: auroc(scores[k][success], clean[k][success]) for k in SCORES},
        "tpr_at_fpr": {
            k: _mean((scores[k][success] > thresholds[k]).astype(float)) for k in SCORES
        },
        "mean_l2": _mean(l2[success]),
        "mean_linf": _mean(linf[success]),
    }
    return entry, scores, success


def _adaptive_entry(
    eps: float,
    lam: float,
    y: np.ndarray,
    x_adv: np.ndarray,
    clean: dict[str, np.ndarray],
    threshold: float,
    scorer: _Scorer,
    undetected: dict[float, np.ndarray] | None = None,
) -> dict[str, Any]:
    """One adaptive run's figures; ``undetected[eps]`` (if given) accumulates, per image,
    whether any lambda so far fooled the teacher undetected (see :func:`_any_lambda`)."""
    scores, probs = scorer(x_adv)
    success = probs.argmax(1) != y
    s = scores["distillation"]
    if undetected is not None:
        hit = success & (s <= threshold)
        undetected[eps] = hit | undetected.get(eps, np.zeros(len(y), dtype=bool))
    return {
        "eps": eps,
        "lambda": lam,
        "attack_success_rate": float(success.mean()),
        "undetected_success_rate": float((success & (s <= threshold)).mean()),
        "auroc": auroc(s[success], clean["distillation"][success]),
    }


def _any_lambda(undetected: dict[float, np.ndarray]) -> list[dict[str, Any]]:
    """Per eps, the fraction of images that at least one lambda fooled undetected: the attacker
    who tries every lambda on every image and keeps what works (at least the best single
    lambda's rate).

    Examples
    --------
    >>> _any_lambda({0.3: np.array([True, False, False, True])})
    [{'eps': 0.3, 'undetected_success_rate': 0.5}]
    """
    return [
        {"eps": eps, "undetected_success_rate": float(hit.mean())}
        for eps, hit in sorted(undetected.items())
    ]


# ============================================================================ the study
def run(config: AdversarialConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the adversarial study and write results.json, report.md and figures into ``out``.

    Returns
    -------
    dict
        The content of results.json (NaN where a rate has no instance).

    Examples
    --------
    >>> results = run(quick_adversarial_config(out="results/adv-quick"))  # doctest: +SKIP
    >>> results["attacks"]["pgd"][0]["auroc"]["distillation"]  # doctest: +SKIP
    """
    cfg = dataclasses.replace(config or AdversarialConfig(), **overrides).validate()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    out = OutputDir(cfg.out if cfg.out else default_out_dir(cfg.dataset))
    log = logger.info
    lap = lap_timer(timings)

    t = time.perf_counter()
    data = stages.load_data(cfg.study_config())
    t = lap("data", t)
    models = _models(cfg, data)
    _check_teacher_gradients(cfg, models.teacher, models.ad.distilled_model)
    teacher = models.teacher
    probs_eval = predict_batch(data.x_eval, teacher, batch_size=512)
    accuracy = float((probs_eval.argmax(1) == data.y_eval).mean())
    log(f"detector: {models.how}; teacher accuracy {accuracy:.4f} ({data.split})")
    t = lap("detector", t)

    # held-out clean images set the thresholds; the attack pool is the rest
    order = np.random.default_rng(cfg.seed + 31).permutation(len(data.x_eval))
    held, pool = order[: cfg.n_holdout], order[cfg.n_holdout :]
    correct = pool[probs_eval[pool].argmax(1) == data.y_eval[pool]]
    rows = np.sort(correct[: cfg.n_eval])
    if len(rows) < cfg.n_eval:
        notes.append(f"n_eval reduced to {len(rows)}: the teacher is right on only that many")
    x, y = data.x_eval[rows], data.y_eval[rows].astype(np.int64)
    scorer = _Scorer(teacher, [models.ad], "mean")
    held_scores, _ = scorer(data.x_eval[held])
    q = 1.0 - cfg.fpr
    thresholds = {k: float(np.quantile(held_scores[k], q)) for k in SCORES}
    clean, _ = scorer(x)
    t = lap("clean_scores", t)

    common = {"batch_size": cfg.batch_size, "verbose": cfg.verbose}
    runners = {
        "fgsm": lambda e: attack_lib.fgsm(teacher, x, y, e, **common),
        "pgd": lambda e: attack_lib.pgd(
            teacher, x, y, e, steps=cfg.pgd_steps, seed=cfg.seed, **common
        ),
        "cw": lambda e: attack_lib.carlini_wagner_l2(
            teacher,
            x,
            y,
            e,
            steps=cfg.cw_steps,
            binary_search_steps=cfg.cw_binary_steps,
            seed=cfg.seed,
            **common,
        ),
        "blackbox": lambda e: attack_lib.simba(
            teacher, x, y, e, steps=cfg.blackbox_steps, seed=cfg.seed, **common
        ),
    }
    results_attacks: dict[str, list[dict[str, Any]]] = {}
    roc: dict[str, dict[str, Any]] = {}
    examples: dict[str, Any] = {}
    x_attacks: dict[tuple, np.ndarray] = {}  # kept for the robust defence
    for name in [a for a in cfg.attacks if a in _NON_ADAPTIVE]:
        t0 = time.perf_counter()
        results_attacks[name] = []
        roc[name] = {}
        for eps in cfg.eps:
            x_adv = runners[name](eps)
            if "robust" in cfg.defences:
                x_attacks[(name, eps)] = x_adv
            entry, scores, success = _entry(eps, x, x_adv, y, clean, thresholds, scorer)
            results_attacks[name].append(entry)
            roc[name][str(eps)] = {
                k: stages.roc_curve(scores[k][success], clean[k][success]) for k in SCORES
            }
            if eps == max(cfg.eps) and success.any() and cfg.n_examples:
                idx = np.flatnonzero(success)[: cfg.n_examples]
                examples[name] = {"eps": eps, "clean": x[idx], "adversarial": x_adv[idx]}
            a = entry["auroc"]
            log(
                f"{name} eps={eps:g}: success {entry['attack_success_rate']:.3f}, AUROC "
                f"distillation {a['distillation']:.3f} entropy {a['entropy']:.3f} max_prob "
                f"{a['max_prob']:.3f}"
            )
        timings[f"attack_{name}"] = round(time.perf_counter() - t0, 2)
    t = time.perf_counter()

    adaptive: list[dict[str, Any]] = []
    adaptive_any: dict[float, np.ndarray] = {}
    defence: dict[str, Any] | None = None
    if "adaptive" in cfg.attacks:
        student = models.ad.distilled_model
        for eps in cfg.adaptive_budgets():
            for lam in cfg.lambdas:
                x_adv = _adaptive(cfg, teacher, [student], models.ad, x, y, eps, lam)
                if "robust" in cfg.defences:
                    x_attacks[("adaptive", eps, lam)] = x_adv
                entry = _adaptive_entry(
                    eps, lam, y, x_adv, clean, thresholds["distillation"], scorer, adaptive_any
                )
                adaptive.append(entry)
                log(
                    f"adaptive eps={eps:g} lambda={lam:g}: success "
                    f"{entry['attack_success_rate']:.3f}, undetected "
                    f"{entry['undetected_success_rate']:.3f}"
                )
        t = lap("adaptive", t)
        if cfg.n_students > 0 and "ensemble" in cfg.defences:
            defence = _defence(cfg, data, models, x, y, held)
            t = lap("defence", t)
    robust: dict[str, Any] | None = None
    if "robust" in cfg.defences:
        t = time.perf_counter()
        robust = _robust_defence(cfg, data, models, x, y, held, x_attacks)
        t = lap("defence_robust", t)

    results = {
        "dataset": cfg.dataset,
        "teacher_accuracy": accuracy,
        "config": {
            **cfg.to_dict(),
            "detector": models.how,
            "detector_loss_type": models.ad.loss_type,
            "detector_temperature": models.ad.temperature,
            "student": models.architecture(),
            "eval_split": data.split,
            "n_attacked": int(len(rows)),
            "thresholds": thresholds,
            "pgd": {"norm": "linf", "steps": cfg.pgd_steps, "step_size": "2.5 * eps / steps"},
            "blackbox": "SimBA, pixel basis, L-inf (distilldetect.attacks.simba)",
            "cw": "Carlini-Wagner L2 with |d| <= eps per pixel (distilldetect.attacks)",
            "adaptive_objective": "min(max_{j!=y} Z_j - Z_y, 2) - lambda * score, PGD L-inf",
        },
        "fpr": cfg.fpr,
        "attacks": results_attacks,
        "adaptive": adaptive,
        "adaptive_any_lambda": _any_lambda(adaptive_any),
    }
    if defence is not None:
        results["defence"] = defence
    if robust is not None:
        results["defence_robust"] = robust
    results["roc"] = roc
    results["notes"] = notes
    results["timings"] = timings
    from .._version import __version__

    results["version"] = __version__
    data_json = jsonable(results)
    from .adversarial_report import write_outputs

    write_outputs(data_json, out, examples)
    timings["outputs"] = round(time.perf_counter() - t, 2)
    timings["total"] = round(time.perf_counter() - t_start, 2)
    data_json["timings"] = timings
    out.write("results.json", json.dumps(data_json, indent=2))
    out.finish()
    log(f"done in {timings['total']:.0f} s; results in {out.path}")
    data_json["out"] = str(out.path)
    return data_json


def _adaptive(
    cfg: AdversarialConfig,
    teacher: Any,
    students: Sequence[Any],
    ad: ModelDistillation,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    lam: float,
    reduce: str | None = None,
) -> np.ndarray:
    """Adaptive PGD against ``students``, their scores combined by ``reduce`` (default: the
    ensemble defence's ``cfg.ensemble_reduce``)."""
    return attack_lib.adaptive_pgd(
        teacher,
        list(students),
        x,
        y,
        eps,
        lam=lam,
        temperature=ad.temperature,
        loss_type=ad.loss_type,
        reduce=cfg.ensemble_reduce if reduce is None else reduce,
        steps=cfg.adaptive_steps,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        verbose=cfg.verbose,
    )


def _defence(
    cfg: AdversarialConfig,
    data: stages.StudyData,
    models: _Models,
    x: np.ndarray,
    y: np.ndarray,
    held: np.ndarray,
) -> dict[str, Any]:
    """The ensemble of secret-seed students against the gray-box and white-box attacker."""
    base = 1_000_003 * (cfg.seed + 1)
    secret = _fit_students(cfg, data, models, [base + i for i in range(cfg.n_students)])
    surrogate = _fit_students(
        cfg, data, models, [base + 10_007 + i for i in range(cfg.n_surrogates)]
    )

    def detectors(students: Sequence[Any]) -> list[ModelDistillation]:
        return [
            ModelDistillation(
                distilled_model=s,
                model=models.teacher,
                loss_type=models.ad.loss_type,
                temperature=models.ad.temperature,
            )
            for s in students
        ]

    ens = _Scorer(models.teacher, detectors(secret), cfg.ensemble_reduce)
    held_scores, _ = ens(data.x_eval[held])
    threshold = float(np.quantile(held_scores["distillation"], 1.0 - cfg.fpr))
    clean, _ = ens(x)
    eps = cfg.defence_eps if cfg.defence_eps is not None else max(cfg.adaptive_budgets())
    oblivious = attack_lib.pgd(
        models.teacher,
        x,
        y,
        eps,
        steps=cfg.pgd_steps,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        verbose=cfg.verbose,
    )
    scores, probs = ens(oblivious)
    success = probs.argmax(1) != y
    gray, white = [], []
    gray_any: dict[float, np.ndarray] = {}
    white_any: dict[float, np.ndarray] = {}
    for lam in cfg.lambdas:
        x_gray = _adaptive(cfg, models.teacher, surrogate, models.ad, x, y, eps, lam)
        gray.append(_adaptive_entry(eps, lam, y, x_gray, clean, threshold, ens, gray_any))
        x_white = _adaptive(cfg, models.teacher, secret, models.ad, x, y, eps, lam)
        white.append(_adaptive_entry(eps, lam, y, x_white, clean, threshold, ens, white_any))
        logger.info(
            f"defence eps={eps:g} lambda={lam:g}: undetected success gray-box "
            f"{gray[-1]['undetected_success_rate']:.3f}, white-box "
            f"{white[-1]['undetected_success_rate']:.3f}"
        )
    return {
        "eps": eps,
        "n_students": cfg.n_students,
        "n_surrogates": cfg.n_surrogates,
        "reduce": cfg.ensemble_reduce,
        "students": {
            "architecture": models.architecture(),
            "n_train": int(min(cfg.ensemble_n_train, len(data.x_train))),
            "epochs": cfg.ensemble_epochs,
            "augment": models.augment,
        },
        "threshold": threshold,
        "pgd": {
            "attack_success_rate": float(success.mean()),
            "undetected_success_rate": float(
                (success & (scores["distillation"] <= threshold)).mean()
            ),
            "auroc": auroc(scores["distillation"][success], clean["distillation"][success]),
        },
        "gray_box": gray,
        "white_box": white,
        "gray_box_any_lambda": _any_lambda(gray_any),
        "white_box_any_lambda": _any_lambda(white_any),
    }


def _robust_defence(
    cfg: AdversarialConfig,
    data: stages.StudyData,
    models: _Models,
    x: np.ndarray,
    y: np.ndarray,
    held: np.ndarray,
    x_attacks: dict[Any, np.ndarray],
) -> dict[str, Any]:
    """A robust (adversarially distilled) student as the detector's student, alone and paired
    with the plain detector's student.

    The student is distilled with :func:`distilldetect.augment.adversarial_augment`: a fraction
    of every batch moved within ``robust_eps`` where the student's own output moves most, the
    teacher's clean targets kept. Two detectors are evaluated: the robust student alone, and
    the *pair* (score = mean of the plain and the robust student's scores). Each is compared on
    the very adversarial images of the oblivious attacks above (they attack the teacher only),
    and attacked by the adaptive PGD white-box (against its own students) and gray-box (the
    adversarial images made against the plain detector's student, the attacker not knowing of
    the robust training).
    """
    from ..augment import adversarial_augment

    eps = cfg.defence_eps if cfg.defence_eps is not None else max(cfg.adaptive_budgets())
    train_eps = cfg.robust_eps if cfg.robust_eps is not None else eps
    epochs = cfg.robust_epochs or cfg.ensemble_epochs
    seed = 1_000_003 * (cfg.seed + 1) + 77

    def factory(student: Any) -> Callable:
        return adversarial_augment(
            student, eps=train_eps, steps=cfg.robust_steps, p_adv=cfg.robust_p_adv
        )

    (student,) = _fit_students(cfg, data, models, [seed], epochs=epochs, augment_factory=factory)
    det = ModelDistillation(
        distilled_model=student,
        model=models.teacher,
        loss_type=models.ad.loss_type,
        temperature=models.ad.temperature,
    )
    lambdas = list(dict.fromkeys([*cfg.lambdas, *cfg.robust_extra_lambdas]))
    out = _evaluate_defence(
        cfg, models, data, x, y, held, x_attacks, [det], [student], lambdas, "robust defence"
    )
    pair = _evaluate_defence(
        cfg, models, data, x, y, held, x_attacks, [models.ad, det],
        [models.ad.distilled_model, student], lambdas, "robust + plain pair",
    )  # fmt: skip
    return {
        "eps": eps,
        "student": {
            "architecture": models.architecture(),
            "n_train": int(min(cfg.ensemble_n_train, len(data.x_train))),
            "epochs": epochs,
            "train_eps": train_eps,
            "steps": cfg.robust_steps,
            "step_size": 2.5 * train_eps / cfg.robust_steps,
            "p_adv": cfg.robust_p_adv,
            "objective": "PGD L-inf maximising KL(student(x) || student(x')); teacher target "
            "on the clean x",
        },
        **out,
        "lambdas": lambdas,
        "gray_box_attacker": "adaptive PGD against the plain detector's student (the attacker "
        "does not know of the robust training)",
        "pair": {"reduce": "mean", **pair},
    }


def _evaluate_defence(
    cfg: AdversarialConfig,
    models: _Models,
    data: stages.StudyData,
    x: np.ndarray,
    y: np.ndarray,
    held: np.ndarray,
    x_attacks: dict[Any, np.ndarray],
    detectors: list[ModelDistillation],
    students: list[Any],
    lambdas: list[float],
    what: str,
) -> dict[str, Any]:
    """Thresholds, rescored oblivious attacks, white-box and gray-box adaptive attacks of one
    defending detector (the mean score of ``detectors``, which the white-box attacker also
    attacks)."""
    scorer = _Scorer(models.teacher, detectors, "mean")
    held_scores, _ = scorer(data.x_eval[held])
    thresholds = {k: float(np.quantile(held_scores[k], 1.0 - cfg.fpr)) for k in SCORES}
    threshold = thresholds["distillation"]
    clean, _ = scorer(x)
    attacks_out: dict[str, list[dict[str, Any]]] = {}
    for key, x_adv in x_attacks.items():
        if key[0] == "adaptive":
            continue
        name, e = key
        entry, _, _ = _entry(e, x, x_adv, y, clean, thresholds, scorer)
        attacks_out.setdefault(name, []).append(entry)
        logger.info(f"{what}: {name} eps={e:g}: AUROC {entry['auroc']['distillation']:.3f}")
    white: list[dict[str, Any]] = []
    gray: list[dict[str, Any]] = []
    white_any: dict[float, np.ndarray] = {}
    gray_any: dict[float, np.ndarray] = {}
    for e in cfg.adaptive_budgets():
        for lam in lambdas:
            x_white = _adaptive(
                cfg, models.teacher, students, detectors[-1], x, y, e, lam, reduce="mean"
            )
            white.append(_adaptive_entry(e, lam, y, x_white, clean, threshold, scorer, white_any))
            x_gray = x_attacks.get(("adaptive", e, lam))
            if x_gray is not None:
                gray.append(_adaptive_entry(e, lam, y, x_gray, clean, threshold, scorer, gray_any))
            logger.info(
                f"{what} eps={e:g} lambda={lam:g}: undetected success white-box "
                f"{white[-1]['undetected_success_rate']:.3f}"
                + (
                    f", gray-box {gray[-1]['undetected_success_rate']:.3f}"
                    if x_gray is not None
                    else ""
                )
            )
    worst = max(white, key=lambda r: r["undetected_success_rate"]) if white else None
    return {
        "thresholds": thresholds,
        "clean_score_mean": float(clean["distillation"].mean()),
        "attacks": attacks_out,
        "white_box": white,
        "gray_box": gray,
        "worst_white_box": worst,
        "white_box_any_lambda": _any_lambda(white_any),
        "gray_box_any_lambda": _any_lambda(gray_any),
    }
