"""TailRankDrift: a one-sided, tail-weighted rank test for *harmful* drift on 1-D scores.

Harmful drift puts a fraction of a batch into the upper tail of the clean score distribution
(the teacher is pushed into errors that the student does not share). The Kolmogorov-Smirnov
test looks at the single largest gap between two CDFs and spends its power on the bulk; this
test weights each batch score by how far up the reference distribution it lies, so that a few
scores far in the tail count more than many slightly raised ones. It is the weighted-AUC idea
of D-SOS ("dataset shift with outlier scores": a test for *adverse* shift on per-instance
outlier scores; Kamulete, "Test for non-negligible adverse shifts", UAI 2022,
arXiv:2107.02990) as a linear rank statistic with a Monte-Carlo null distribution.

numpy and SciPy only; no deep-learning framework is imported.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from ..base import (
    BaseDetector,
    check_array,
    check_callable,
    check_finite,
    check_json,
    check_keys,
    check_positive_int,
    check_seed,
    describe,
)

__all__ = ["TailRankDrift", "tail_rank_statistic"]

#: Largest number of simulated values held in memory at once while building a null.
_CHUNK_VALUES = 2_000_000


def tail_rank_statistic(below: np.ndarray, m: int, power: float) -> np.ndarray:
    """The test statistic from reference counts: ``mean_j (below_j / m) ** power``.

    Parameters
    ----------
    below
        ``(..., n)`` integer array: for each batch value, how many of the ``m`` reference
        values are strictly below it.
    m
        Size of the reference.
    power
        Weight exponent (``1``: the Mann-Whitney / rank-sum statistic, rescaled).

    Examples
    --------
    >>> tail_rank_statistic(np.array([[0, 5, 10]]), 10, 1.0)
    array([0.5])
    """
    return np.mean((np.asarray(below, dtype=np.float64) / m) ** power, axis=-1)


class TailRankDrift(BaseDetector):
    """Harmful-drift detector: a one-sided tail-weighted rank test of 1-D scores.

    Every score ``x_j`` of a test batch of ``n`` is placed in the reference distribution:
    ``v_j`` is the fraction of the ``m`` reference scores strictly below it (its position in
    the reference's empirical CDF). The statistic is ``T = mean_j v_j ** power``: with
    ``power = 1`` it is the Mann-Whitney statistic (rescaled), with a larger ``power`` it
    weights the upper tail — a batch score above 99 % of the reference weighs 0.89 with
    ``power=12``, one at the reference median 0.0002. This is the weighted AUC of D-SOS
    (Kamulete, UAI 2022, arXiv:2107.02990), whose weights ``F_ref(t) ** 2`` on the thresholds
    make the statistic a rank statistic with cubic weights (``power=3``); the default
    ``power=12`` was chosen on a validation split of the harmful-drift study (README, "What
    moves the results"; ``scripts/tune_drift.py``): against 8 (the first
    choice) it flagged as many harmful batches and fewer harmless ones. Detectors saved with
    another ``power`` keep theirs.

    **Hypotheses.** H0: the batch and the reference are samples from the same continuous
    distribution (exchangeable). H1 (one-sided): the batch has more mass in the upper tail
    of the reference distribution — larger scores, i.e. harmful drift for distillation
    scores. Batches whose scores are *smaller* than the reference are never flagged.

    **p-values.** Under H0 the statistic depends only on ranks, so its null distribution is
    the same for every continuous score: it is simulated once per batch size (``n_null``
    exchangeable samples of sizes ``m`` and ``n``, drawn with ``seed``), and the p-value of
    a batch is ``(1 + #{T_null >= T}) / (1 + n_null)``. The test's level therefore holds
    unconditionally — averaged over the draw of the reference, as for any two-sample test;
    given one fixed reference the rate of false alarms varies around ``p_val`` (as it does
    for the Kolmogorov-Smirnov test). p-values are never below ``1 / (1 + n_null)``. Ties
    with reference values count as "not below", which can only make the test conservative.

    Parameters
    ----------
    x_ref
        Reference data: clean data held out from the student's training (scores of training
        data are lower, which inflates false alarms). Scores ``(m,)`` or ``(m, 1)``, or raw
        instances when ``preprocess_fn`` maps them to one score each.
    p_val
        Significance level, in (0, 1).
    x_ref_preprocessed
        ``x_ref`` already holds the scores: ``preprocess_fn`` is then applied to test
        batches only.
    preprocess_fn
        Optional function from a batch of instances to one score per instance, e.g.
        ``functools.partial(ad.score, batch_size=128)`` (made by ``ad.drift_detector(x_ref,
        test='tail_rank')``). The reference is preprocessed once, here.
    power
        Weight exponent of the statistic, a number >= 1.
    n_null
        Number of simulated null statistics per batch size (p-value resolution
        ``1 / (1 + n_null)``).
    data_type
        Optional free-form description of the data, kept in ``meta``.
    seed
        (keyword) Seed of the null simulation: the same seed gives the same p-values.

    Attributes
    ----------
    x_ref : numpy.ndarray
        The reference scores, sorted, float64, shape ``(m,)``.
    n_features : int
        Always 1: one score per instance.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cd = TailRankDrift(rng.normal(size=1000), p_val=0.05, seed=0)
    >>> cd.predict(rng.normal(size=100))["data"]["is_drift"]
    0
    >>> batch = np.r_[rng.normal(size=90), rng.normal(loc=3.0, size=10)]  # 10 % in the tail
    >>> cd.predict(batch)["data"]["is_drift"]
    1
    >>> cd.predict(rng.normal(loc=-3.0, size=100))["data"]["is_drift"]  # smaller: not harm
    0
    """

    meta_name = "TailRankDrift"
    detector_type = "drift"
    online = False

    def __init__(
        self,
        x_ref: np.ndarray,
        p_val: float = 0.05,
        x_ref_preprocessed: bool = False,
        preprocess_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        power: float = 12.0,
        n_null: int = 20000,
        data_type: str | None = None,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(data_type)
        self.p_val = _check_p_val(p_val)
        self.x_ref_preprocessed = _check_bool(x_ref_preprocessed, "x_ref_preprocessed")
        self.preprocess_fn = check_callable(preprocess_fn, "preprocess_fn")
        self.power = _check_power(power)
        self.n_null = check_positive_int(n_null, "n_null", minimum=100)
        seed = check_seed(seed)
        if seed is None:
            raise TypeError("seed must be a non-negative integer (the null is simulated), got None")
        self.seed = seed
        if self.preprocess_fn is not None and not self.x_ref_preprocessed:
            x_ref = self._preprocess(self._check_raw(x_ref, "x_ref"), "x_ref")
        self.x_ref = np.sort(self._as_scores(x_ref, "x_ref"))
        if len(self.x_ref) < 2:
            raise ValueError(f"x_ref must hold at least 2 reference scores, got {len(self.x_ref)}")
        self.n_features = 1
        self.input_shape = None

    # -------------------------------------------------------------- config
    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments: the (sorted) reference scores, ``preprocess_fn`` and the
        settings; :meth:`from_config` rebuilds the detector without preprocessing again.

        Examples
        --------
        >>> cd = TailRankDrift(np.arange(10.0), power=3)
        >>> TailRankDrift.from_config(cd.get_config()).power
        3.0
        """
        return {
            "x_ref": self.x_ref,
            "p_val": self.p_val,
            "x_ref_preprocessed": True,  # x_ref is stored as scores
            "preprocess_fn": self.preprocess_fn,
            "power": self.power,
            "n_null": self.n_null,
            "data_type": self.meta["data_type"],
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TailRankDrift:
        """Build a detector from :meth:`get_config`'s dict, through ``__init__`` (its checks)."""
        optional = {
            "p_val",
            "x_ref_preprocessed",
            "preprocess_fn",
            "power",
            "n_null",
            "data_type",
            "seed",
        }
        config = check_keys(config, {"x_ref"}, optional, "config")
        return cls(**config)

    def get_state(self) -> dict[str, Any]:
        """What changes after construction, as JSON: ``meta``."""
        return {"meta": dict(self.meta)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s dict (validated)."""
        state = check_keys(state, {"meta"}, set(), "state")
        meta = state["meta"]
        if not isinstance(meta, dict) or meta.get("name") != self.meta_name:
            raise ValueError(f"state['meta'] must be a dict whose 'name' is {self.meta_name!r}")
        check_json(meta, "state['meta']")
        self.meta = dict(meta)

    # -------------------------------------------------------------- checks
    def _check_raw(self, x: Any, name: str) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {describe(x)}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {x.shape}); at least one instance is needed")
        check_finite(x, name)
        return x

    def _preprocess(self, x: np.ndarray, name: str) -> np.ndarray:
        assert self.preprocess_fn is not None
        out = self.preprocess_fn(x)
        if not isinstance(out, np.ndarray):
            raise TypeError(
                f"preprocess_fn must return a numpy array, got {describe(out)} for {name}"
            )
        if out.ndim == 0 or len(out) != len(x):
            raise ValueError(
                f"preprocess_fn must return one score per instance: {len(x)} for {name}, "
                f"got an array of shape {out.shape}"
            )
        return out

    @staticmethod
    def _as_scores(x: Any, name: str) -> np.ndarray:
        x = check_array(x, name, min_ndim=1)
        if x.ndim > 2 or (x.ndim == 2 and x.shape[1] != 1):
            raise ValueError(
                f"{name} must hold one score per instance, shape (n,) or (n, 1), got shape "
                f"{x.shape}; TailRankDrift tests 1-D scores (use KSDrift for several features)"
            )
        return x.reshape(len(x)).astype(np.float64)

    def _batch(self, x: Any, preprocessed: Any) -> np.ndarray:
        preprocessed = _check_bool(preprocessed, "preprocessed")
        if self.preprocess_fn is not None and not preprocessed:
            x = self._preprocess(self._check_raw(x, "x"), "x")
            return self._as_scores(x, "preprocess_fn(x)")
        return self._as_scores(x, "x")

    # -------------------------------------------------------------- the test
    def null_distribution(self, n: int) -> np.ndarray:
        """The sorted simulated null statistics for batches of ``n`` (read-only).

        They depend only on the reference size, ``n``, ``power``, ``n_null`` and ``seed``,
        and are cached for the process (detectors with the same settings share them).
        """
        n = check_positive_int(n, "n")
        return _simulate_null(self.seed, len(self.x_ref), n, self.power, self.n_null)

    def statistic(self, scores: np.ndarray) -> float:
        """``T = mean_j v_j ** power`` for a batch of (already computed) scores."""
        scores = self._as_scores(scores, "scores")
        below = np.searchsorted(self.x_ref, scores, side="left")
        return float(tail_rank_statistic(below, len(self.x_ref), self.power))

    def score(self, x: np.ndarray, *, preprocessed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """p-value and statistic of the batch ``x`` against the reference.

        Parameters
        ----------
        x
            Test batch: raw instances (with ``preprocess_fn``) or scores.
        preprocessed
            (keyword) ``x`` already holds the scores (``preprocess_fn(batch)``, e.g. scores
            logged or computed elsewhere): it is tested as it is.

        Returns
        -------
        p_vals, distances : numpy.ndarray
            Float64 arrays of length 1: the Monte-Carlo p-value and the statistic ``T``.

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> cd = TailRankDrift(rng.normal(size=500))
        >>> p_vals, dists = cd.score(rng.normal(loc=1.0, size=50))
        >>> bool(p_vals[0] < 0.05)
        True
        """
        scores = self._batch(x, preprocessed)
        t = self.statistic(scores)
        null = self.null_distribution(len(scores))
        n_ge = len(null) - np.searchsorted(null, t, side="left")
        p = (1.0 + n_ge) / (1.0 + len(null))
        return np.array([p], dtype=np.float64), np.array([t], dtype=np.float64)

    def predict(
        self,
        x: np.ndarray,
        drift_type: str = "batch",
        return_p_val: bool = True,
        return_distance: bool = True,
        *,
        preprocessed: bool = False,
    ) -> dict[str, Any]:
        """Test ``x`` for harmful drift.

        Parameters
        ----------
        x
            Test batch: raw instances (with ``preprocess_fn``) or scores.
        drift_type
            ``'batch'`` or ``'feature'``; the same decision for one score per instance
            (accepted for the call signature of :class:`~distilldetect.cd.KSDrift`).
        return_p_val
            Return the p-value and the threshold it was compared with.
        return_distance
            Return the statistic ``T``.
        preprocessed
            (keyword) ``x`` already holds the scores.

        Returns
        -------
        dict
            ``{'meta': meta, 'data': {'is_drift', 'distance', 'p_val', 'threshold'}}`` as
            :class:`~distilldetect.cd.KSDrift` returns it: ``is_drift`` an int (``'batch'``)
            or an int array of length 1 (``'feature'``), ``p_val`` and ``distance`` float64
            arrays of length 1, ``threshold`` the float ``p_val``. Values not asked for are
            None.

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> cd = TailRankDrift(rng.normal(size=1000))
        >>> cd.predict(rng.normal(size=100))["data"]["is_drift"]
        0
        """
        if drift_type not in ("batch", "feature"):
            raise ValueError(f"drift_type must be one of ('batch', 'feature'), got {drift_type!r}")
        return_p_val = _check_bool(return_p_val, "return_p_val")
        return_distance = _check_bool(return_distance, "return_distance")
        p_vals, dists = self.score(x, preprocessed=preprocessed)
        flag = int(p_vals[0] < self.p_val)
        is_drift: int | np.ndarray = flag if drift_type == "batch" else np.array([flag])
        return self._prediction(
            {
                "is_drift": is_drift,
                "distance": dists if return_distance else None,
                "p_val": p_vals if return_p_val else None,
                "threshold": self.p_val if return_p_val else None,
            }
        )


@functools.lru_cache(maxsize=64)
def _simulate_null(seed: int, m: int, n: int, power: float, n_null: int) -> np.ndarray:
    """Sorted null statistics of batches of ``n`` against references of ``m``.

    Under H0 the ``m + n`` values are exchangeable, so the counts of reference values below
    the sorted batch values are distributed as for uniforms: ``m`` reference values fall
    into the ``n + 1`` gaps between ``n`` sorted uniforms with the gaps' lengths as
    probabilities (a multinomial), and the counts below are its cumulative sums.
    """
    rng = np.random.default_rng([seed, m, n])
    rows = max(1, _CHUNK_VALUES // (n + 1))
    parts = []
    done = 0
    while done < n_null:
        k = min(rows, n_null - done)
        u = np.sort(rng.random((k, n)), axis=1)
        edges = np.concatenate([np.zeros((k, 1)), u, np.ones((k, 1))], axis=1)
        counts = rng.multinomial(m, np.diff(edges, axis=1))
        parts.append(tail_rank_statistic(np.cumsum(counts[:, :n], axis=1), m, power))
        done += k
    null = np.sort(np.concatenate(parts))
    null.flags.writeable = False
    return null


def _check_p_val(p_val: Any) -> float:
    if isinstance(p_val, bool) or not isinstance(p_val, numbers.Real):
        raise TypeError(f"p_val must be a number in (0, 1), got {describe(p_val)}")
    if not 0 < p_val < 1:
        raise ValueError(f"p_val must be in (0, 1), got {p_val}")
    return float(p_val)


def _check_power(power: Any) -> float:
    if isinstance(power, bool) or not isinstance(power, numbers.Real):
        raise TypeError(f"power must be a number >= 1, got {describe(power)}")
    if not (np.isfinite(power) and 1 <= power <= 100):
        raise ValueError(f"power must be a finite number in [1, 100], got {power}")
    return float(power)


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)
