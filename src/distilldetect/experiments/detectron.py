"""A Detectron-style baseline for the harmful-drift study (issue 15).

Detectron (Ginsberg et al., ICLR 2023, "A Learning Based Hypothesis Test for Harmful Covariate
Shift") trains, for each unlabelled batch ``Q``, a *constrained disagreement classifier* (CDC):
a copy of the teacher trained to stay right on labelled training data ``P`` while disagreeing
with the teacher on ``Q``. Its disagreement rate on ``Q`` is the test statistic; the null
distribution comes from the same procedure on clean held-out batches (calibration), and the
p-value is the rank of the statistic among the calibration statistics.

:class:`DetectronBaseline` is the test; :func:`run_baseline` runs it, and the study's own tests
(``TailRankDrift`` on the distillation score, and the other study tests) on the *same* batches,
which are the study's kind: clean evaluation images outside a clean reference, mixed with a
fraction of harmful (teacher right on the clean image, wrong on the corrupted one) or harmless
(right on both) corrupted images whose clean image is outside the reference too. The CDCs are
trained in :mod:`distilldetect.backends.torch.detectron`; nothing here imports a framework.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..base import check_array, check_positive_int, check_seed, describe
from . import stages
from .config import StudyConfig

__all__ = ["DetectronBaseline", "rank_pvalue", "run_baseline", "CELLS"]

#: The batches of the comparison: (name, kind of contamination, fraction).
CELLS: tuple[tuple[str, str, float], ...] = (
    ("clean", "harmful", 0.0),
    ("harmful_100", "harmful", 1.0),
    ("harmful_50", "harmful", 0.5),
    ("harmless_100", "harmless", 1.0),
)


def rank_pvalue(statistic: float, calibration: Sequence[float] | np.ndarray) -> float:
    """The p-value of ``statistic`` by its rank among the calibration (null) statistics:
    ``(1 + #{c >= statistic}) / (1 + len(calibration))`` — exact for exchangeable statistics,
    ties counted against rejection.

    Examples
    --------
    >>> rank_pvalue(0.5, [0.1, 0.2, 0.3, 0.5])
    0.4
    >>> rank_pvalue(0.9, [0.1, 0.2, 0.3, 0.5])
    0.2
    """
    cal = np.asarray(calibration, dtype=np.float64)
    if cal.ndim != 1 or len(cal) == 0:
        raise ValueError(
            f"calibration must be a non-empty 1-D sequence of statistics, got shape {cal.shape}"
        )
    if not np.isfinite(cal).all() or not np.isfinite(statistic):
        raise ValueError("statistic and calibration must be finite numbers")
    return float((1 + np.count_nonzero(cal >= statistic)) / (1 + len(cal)))


class DetectronBaseline:
    """Detectron's test of harmful covariate shift: calibrate on clean batches, then p-values.

    Parameters
    ----------
    teacher
        The classifier to protect (a ``torch.nn.Module`` returning probabilities); never changed.
    x_p, y_p
        Labelled training data ``P`` (model input) and its class labels.
    members, epochs, lr, lambda_, batch_size
        The CDC ensemble and its training (see
        :func:`distilldetect.backends.torch.detectron.train_cdc`).
    seed
        Base seed: calibration batch ``i`` uses ``seed + i * members``, tested batches
        ``seed + 1_000_003 + j * members`` for the ``j``-th call of :meth:`pvalue`.

    Examples
    --------
    >>> import torch  # doctest: +SKIP
    >>> base = DetectronBaseline(teacher, x_train[:1000], y_train[:1000])  # doctest: +SKIP
    >>> base.calibrate([x_clean[i : i + 10] for i in range(0, 300, 10)])  # doctest: +SKIP
    >>> base.pvalue(x_batch)  # doctest: +SKIP
    """

    def __init__(
        self,
        teacher: Any,
        x_p: np.ndarray,
        y_p: np.ndarray,
        *,
        members: int = 1,
        epochs: int = 3,
        lr: float = 1e-3,
        lambda_: float | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        from ..backends import framework_of

        try:
            framework = framework_of(teacher)
        except TypeError:
            framework = "none"
        if framework != "pytorch":
            raise TypeError(
                f"teacher must be a torch.nn.Module (Detectron's CDCs are trained in PyTorch), "
                f"got {describe(teacher)}"
            )
        self.teacher = teacher
        self.x_p = check_array(x_p, "x_p", min_ndim=2)
        self.y_p = check_array(y_p, "y_p")
        if self.y_p.ndim != 1 or len(self.y_p) != len(self.x_p):
            raise ValueError(
                f"y_p must hold one label per instance of x_p ({len(self.x_p)}), got shape "
                f"{self.y_p.shape}"
            )
        self.members = check_positive_int(members, "members")
        seed = check_seed(seed)
        if seed is None:
            raise TypeError("seed must be an integer (the CDCs are seeded), got None")
        self.seed = seed
        self.train_kwargs = {
            "members": self.members,
            "epochs": epochs,
            "lr": lr,
            "lambda_": lambda_,
            "batch_size": batch_size,
        }
        self.calibration: np.ndarray | None = None
        self.seconds: list[float] = []
        self._n_tested = 0

    def _check_batch(self, batch: Any, name: str) -> np.ndarray:
        batch = check_array(batch, name, min_ndim=2)
        if batch.shape[1:] != self.x_p.shape[1:]:
            raise ValueError(
                f"{name} must hold instances of shape {self.x_p.shape[1:]} (those of x_p), got "
                f"{batch.shape[1:]}"
            )
        return batch

    def statistic(self, batch: np.ndarray, seed: int) -> float:
        """The ensemble's disagreement rate on ``batch`` (at least one instance)."""
        from ..backends import get_backend

        get_backend("pytorch")  # a clear ImportError naming the extra when torch is missing
        from ..backends.torch import detectron as torch_detectron

        batch = self._check_batch(batch, "batch")
        start = time.perf_counter()
        rate = torch_detectron.disagreement(
            self.teacher, self.x_p, self.y_p, batch, seed=seed, **self.train_kwargs
        )
        self.seconds.append(time.perf_counter() - start)
        return rate

    def calibrate(self, clean_batches: Sequence[np.ndarray]) -> np.ndarray:
        """Statistics of clean batches (the null distribution); kept for :meth:`pvalue`."""
        if isinstance(clean_batches, np.ndarray) and clean_batches.ndim >= 3:
            clean_batches = list(clean_batches)
        if not isinstance(clean_batches, Sequence) or len(clean_batches) == 0:
            raise ValueError(
                f"clean_batches must be a non-empty sequence of batches, got {describe(clean_batches)}"
            )
        stats = [
            self.statistic(
                self._check_batch(b, f"clean_batches[{i}]"), self.seed + i * self.members
            )
            for i, b in enumerate(clean_batches)
        ]
        self.calibration = np.array(stats, dtype=np.float64)
        return self.calibration

    def pvalue(self, batch: np.ndarray) -> tuple[float, float]:
        """``(p-value, statistic)`` of ``batch`` against the calibration."""
        if self.calibration is None:
            raise ValueError("call calibrate(clean_batches) before pvalue(batch)")
        seed = self.seed + 1_000_003 + self._n_tested * self.members
        self._n_tested += 1
        stat = self.statistic(batch, seed)
        return rank_pvalue(stat, self.calibration), stat


# ============================================================================ the study's batches
def _contaminant_pools(
    cfg: StudyConfig,
    severity: int,
    data: stages.StudyData,
    teacher: stages.Teacher,
    detector: stages.Detector,
) -> dict[str, dict[str, np.ndarray]]:
    """Harmful and harmless corrupted instances at ``severity`` (as the study splits them):
    model input, distillation score, teacher probabilities and evaluation row of each."""
    clean_ok = teacher.probs_eval.argmax(1) == data.y_eval
    rows_per_type = stages.corruption_rows(cfg, len(data.x_eval))
    real = stages.has_real_cifar10c(cfg)
    parts: dict[str, list[dict[str, np.ndarray]]] = {"harmful": [], "harmless": []}
    for corruption, rows in rows_per_type.items():
        x_c = stages.to_model_input(
            stages._corrupted(cfg, data.x_eval_u8, rows, corruption, severity, real),
            cfg.preprocess,
        )
        scores, probs = stages._score(detector.ad, x_c)
        correct = probs.argmax(1) == data.y_eval[rows]
        for kind, mask in (
            ("harmful", clean_ok[rows] & ~correct),
            ("harmless", clean_ok[rows] & correct),
        ):
            parts[kind].append(
                {"x": x_c[mask], "score": scores[mask], "probs": probs[mask], "rows": rows[mask]}
            )
    return {
        kind: {key: np.concatenate([p[key] for p in pieces]) for key in pieces[0]}
        for kind, pieces in parts.items()
    }


def _rate(pvals: np.ndarray, p_val: float) -> dict[str, Any]:
    k, n = int((pvals < p_val).sum()), len(pvals)
    return {"rate": k / n if n else float("nan"), "k": k, "n": n, "ci": stages.rate_ci(k, n)}


def run_baseline(
    cfg: StudyConfig,
    *,
    severities: Sequence[int] = (5,),
    sizes: Sequence[int] = (10, 100),
    n_calibration: int = 30,
    n_batches: int = 25,
    n_p: int = 1000,
    members: int = 1,
    epochs: int = 3,
    lr: float = 1e-3,
    lambda_: float | None = None,
    seed: int = 0,
    log: Any = print,
) -> dict[str, Any]:
    """Detectron and the study's tests on the same study-style batches.

    The clean reference is the study's first reference draw (``stages.reference_draws``): its
    clean evaluation images calibrate Detectron (``n_calibration`` batches of each size drawn
    from them) and are the reference of the study's tests. Tested batches (``n_batches`` per
    cell, size and severity; the cells of :data:`CELLS`) are drawn as the study draws them
    (``stages._draw_batches``) from evaluation images outside the reference. ``P`` is a fixed
    random subset of ``n_p`` training images with their real labels.

    Returns
    -------
    dict
        ``config``, ``calibration`` (statistics per size), ``severities`` (severity -> size ->
        cell -> test -> rate, k, n, 95 % Clopper-Pearson ``ci``; Detectron's mean statistic),
        ``timings`` (seconds; seconds per Detectron batch).
    """
    n_calibration = check_positive_int(n_calibration, "n_calibration")
    n_batches = check_positive_int(n_batches, "n_batches")
    n_p = check_positive_int(n_p, "n_p")
    sizes = [check_positive_int(s, "sizes") for s in sizes]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = stages.load_data(cfg)
    teacher = stages.get_teacher(cfg, data)
    detector = stages.fit_detector(cfg, data, teacher)
    timings["setup"] = time.perf_counter() - t0
    log(f"teacher {teacher.how}, accuracy {teacher.accuracy:.4f}")

    rng = np.random.default_rng([seed, 15])
    p_idx = np.sort(rng.choice(len(data.x_train), min(n_p, len(data.x_train)), replace=False))
    base = DetectronBaseline(
        teacher.model,
        data.x_train[p_idx],
        np.asarray(data.y_train[p_idx], dtype=np.int64),
        members=members,
        epochs=epochs,
        lr=lr,
        lambda_=lambda_,
        seed=seed,
    )
    n_images = len(data.x_eval)
    ref_rows = stages.reference_draws(cfg, n_images)[0]
    in_ref = np.zeros(n_images, bool)
    in_ref[ref_rows] = True
    clean_idx = np.flatnonzero(~in_ref)
    everything = stages.Pool(detector.clean_scores, teacher.probs_eval, np.arange(n_images))
    reference = everything.take(ref_rows)
    clean_feats = stages._features(everything)

    t = time.perf_counter()
    calibration: dict[int, np.ndarray] = {}
    for size in sizes:
        cal_batches = [
            data.x_eval[np.sort(rng.choice(ref_rows, size, replace=False))]
            for _ in range(n_calibration)
        ]
        calibration[size] = base.calibrate(cal_batches).copy()
        log(f"calibration n={size}: mean disagreement {calibration[size].mean():.3f}")
    timings["calibration"] = time.perf_counter() - t

    results: dict[str, Any] = {}
    for severity in severities:
        t = time.perf_counter()
        pools = _contaminant_pools(cfg, severity, data, teacher, detector)
        timings[f"corrupt_severity_{severity}"] = time.perf_counter() - t
        allowed = {kind: np.flatnonzero(~in_ref[p["rows"]]) for kind, p in pools.items()}
        log(
            f"severity {severity}: {len(allowed['harmful'])} harmful, "
            f"{len(allowed['harmless'])} harmless instances outside the reference"
        )
        t = time.perf_counter()
        per_size: dict[str, Any] = {}
        for size in sizes:
            base.calibration = calibration[size]
            per_cell: dict[str, Any] = {}
            for name, kind, fraction in CELLS:
                pool = pools[kind]
                if fraction > 0 and len(allowed[kind]) == 0:
                    log(f"severity {severity}: no {kind} instances; {name} skipped")
                    continue
                draw_rng = np.random.default_rng(
                    [seed, 100 + severity, size, CELLS.index((name, kind, fraction))]
                )
                good, bad = stages._draw_batches(
                    draw_rng, clean_idx, allowed[kind], n_batches, size, fraction
                )
                pool_feats = stages._features(
                    stages.Pool(pool["score"], pool["probs"], pool["rows"])
                )
                feats = stages._assemble(clean_feats, pool_feats, good, bad)
                study = stages.batch_pvalues(cfg, reference, feats)
                det_p, det_stat = [], []
                for b in range(n_batches):
                    x = data.x_eval[good[b]]
                    if bad is not None:
                        x = np.concatenate([x, pool["x"][bad[b]]])
                    p, s = base.pvalue(x)
                    det_p.append(p)
                    det_stat.append(s)
                entry = {"detectron": _rate(np.array(det_p), cfg.p_val)}
                entry["detectron"]["mean_statistic"] = float(np.mean(det_stat))
                for test, pv in study.items():
                    entry[test] = _rate(np.asarray(pv), cfg.p_val)
                per_cell[name] = entry
                log(
                    f"severity {severity} n={size} {name}: detectron "
                    f"{entry['detectron']['rate']:.2f}, tail_rank {entry['tail_rank']['rate']:.2f}"
                )
            per_size[str(size)] = per_cell
        timings[f"batches_severity_{severity}"] = time.perf_counter() - t
        results[str(severity)] = per_size
    timings["total"] = time.perf_counter() - t0
    timings["seconds_per_detectron_batch"] = float(np.mean(base.seconds))
    return {
        "config": {
            "study": {
                "pretrained": cfg.pretrained,
                "dataset": cfg.dataset,
                "n_ref": len(ref_rows),
                "n_eval": cfg.n_eval,
                "p_val": cfg.p_val,
                "tail_power": cfg.tail_power,
                "seed": cfg.seed,
            },
            "severities": [int(s) for s in severities],
            "sizes": sizes,
            "n_calibration": n_calibration,
            "n_batches": n_batches,
            "n_p": len(p_idx),
            "p_labels": "real training labels",
            "members": members,
            "epochs": epochs,
            "lr": lr,
            "lambda_": "1 / (n + 1) (the paper's)" if lambda_ is None else lambda_,
            "cdc_batch_size": 256,
            "seed": seed,
        },
        "calibration": {str(s): calibration[s].tolist() for s in sizes},
        "severities": results,
        "timings": timings,
    }
