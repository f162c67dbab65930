"""KSDrift: feature-wise two-sample Kolmogorov-Smirnov drift detection (numpy and SciPy only).

The detector compares a batch with a reference set, one Kolmogorov-Smirnov test per feature
(SciPy's :func:`scipy.stats.ks_2samp`), and combines the per-feature p-values with a Bonferroni
or Benjamini-Hochberg (false discovery rate) correction. Fed with the scores of a
:class:`~distilldetect.ModelDistillation` detector (one feature per instance), it detects
*harmful* drift; see :class:`KSDrift` for the one-sided recipe.
"""

from __future__ import annotations

import functools
import logging
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import ks_2samp

from ..base import (
    BaseDetector,
    check_array,
    check_bool,
    check_callable,
    check_finite,
    check_json,
    check_keys,
    check_positive_int,
    check_seed,
    check_shape,
    describe,
)

__all__ = [
    "KSDrift",
    "fdr",
    "ALTERNATIVES",
    "CORRECTIONS",
    "DRIFT_TYPES",
    "UPDATE_METHODS",
    "KS_METHOD",
]

logger = logging.getLogger(__name__)

#: Alternative hypotheses, with SciPy's meaning for ``ks_2samp(reference, test)``.
ALTERNATIVES: tuple[str, ...] = ("two-sided", "less", "greater")
#: Multiple-testing corrections of the ``'batch'`` decision.
CORRECTIONS: tuple[str, ...] = ("bonferroni", "fdr")
#: ``drift_type`` values of :meth:`KSDrift.predict`.
DRIFT_TYPES: tuple[str, ...] = ("batch", "feature")
#: Keys of ``update_x_ref``.
UPDATE_METHODS: tuple[str, ...] = ("last", "reservoir_sampling")
_CONFIG_KEYS: tuple[str, ...] = (
    "x_ref",
    "p_val",
    "x_ref_preprocessed",
    "preprocess_at_init",
    "update_x_ref",
    "preprocess_fn",
    "correction",
    "alternative",
    "n_features",
    "input_shape",
    "data_type",
    "seed",
)
#: The ``method`` passed to :func:`scipy.stats.ks_2samp`: SciPy's asymptotic distribution,
#: as alibi-detect uses (its ``mode='asymp'``). ``'exact'`` gives other p-values on small samples.
KS_METHOD: str = "asymp"


def _accepts_preprocess_x_ref(init: Callable) -> Callable:
    """Accept the deprecated keyword ``preprocess_x_ref`` as an alias of ``preprocess_at_init``."""

    @functools.wraps(init)
    def wrapper(self: KSDrift, *args: Any, **kwargs: Any) -> None:
        if "preprocess_x_ref" in kwargs:
            # x_ref, p_val, x_ref_preprocessed, preprocess_at_init: 4th positional argument.
            if "preprocess_at_init" in kwargs or len(args) >= 4:
                raise ValueError(
                    "preprocess_x_ref is a deprecated alias of preprocess_at_init; give only "
                    "preprocess_at_init, got both"
                )
            warnings.warn(
                "preprocess_x_ref is deprecated and will be removed; use preprocess_at_init",
                UserWarning,
                stacklevel=2,
            )
            kwargs["preprocess_at_init"] = kwargs.pop("preprocess_x_ref")
        init(self, *args, **kwargs)

    return wrapper


class KSDrift(BaseDetector):
    """Drift detector: a two-sample Kolmogorov-Smirnov test per feature against a reference set.

    Every feature (a column of the flattened, optionally preprocessed instances) of a test
    batch ``x`` is compared with the same feature of the reference ``x_ref`` by
    ``scipy.stats.ks_2samp(x_ref[:, f], x[:, f], alternative=alternative, method='asymp')``:
    the p-values are SciPy's, from its asymptotic distribution (``method='asymp'``, as in
    alibi-detect; for small samples they differ from ``method='exact'``). For a batch decision
    on several features the p-values are corrected for multiple testing (Bonferroni or
    Benjamini-Hochberg false discovery rate).

    The null hypothesis of each test is that the batch and the reference come from the same
    distribution. With the reference as SciPy's first sample and the batch as its second,
    ``alternative='greater'`` is the side that flags test values *larger* than the reference
    (the reference's empirical CDF lies above the batch's); ``'less'`` flags smaller test
    values and ``'two-sided'`` both.

    **Harmful drift.** Harm shows as larger distillation scores, so the recipe is the one-sided
    test on a :class:`~distilldetect.ModelDistillation` detector's scores of clean data::

        cd = ad.drift_detector(X_clean, p_val=0.05)  # KSDrift(..., alternative='greater')
        cd.predict(X_batch)["data"]["is_drift"]

    which is ``KSDrift(X_clean, p_val=.05, preprocess_fn=functools.partial(ad.score,
    batch_size=...), alternative='greater')``. A two-sided test spends part of its power on
    shifts towards smaller scores, which cannot be harmful.

    Parameters
    ----------
    x_ref
        Reference data, instances first: a numpy array (numeric unless ``preprocess_fn`` maps
        it to numbers). The reference must be clean data *not* used to fit any model that the
        preprocessing contains (held-out data), or every batch looks drifted.
    p_val
        Significance level of the test, in (0, 1).
    x_ref_preprocessed
        ``x_ref`` is already preprocessed: ``preprocess_fn`` is then applied to test batches only.
    preprocess_at_init
        Preprocess ``x_ref`` once now (default) rather than at every :meth:`score`.
        ``preprocess_x_ref`` is accepted as a deprecated alias (with a ``UserWarning``).
    update_x_ref
        None (fixed reference), ``{'last': n}`` (keep the last ``n`` instances seen, reference
        included) or ``{'reservoir_sampling': n}`` (a uniform random sample of size ``n`` of all
        instances seen, drawn with ``seed``). Applied after each :meth:`predict`.
    preprocess_fn
        Optional function mapping a numpy batch to a numpy array with one row per instance,
        e.g. ``functools.partial(ad.score, batch_size=128)``. It should be deterministic.
    correction
        ``'bonferroni'`` or ``'fdr'`` (Benjamini-Hochberg): how ``'batch'`` predictions combine
        the p-values of several features. Irrelevant for one feature, but must still be valid.
    alternative
        ``'two-sided'``, ``'less'`` or ``'greater'`` (see above).
    n_features
        Number of features after preprocessing; computed from ``x_ref`` when None (with lazy
        preprocessing, by preprocessing ``x_ref[0:1]``).
    input_shape
        Shape of one raw instance; ``x_ref.shape[1:]`` when None.
    data_type
        Optional free-form description of the data, kept in ``meta``.
    seed
        Seed of the random generator of reservoir sampling (keyword only): the same seed and
        the same batches give the same reference set.

    Attributes
    ----------
    x_ref : numpy.ndarray
        The current reference set (preprocessed unless preprocessing is lazy).
    n : int
        Number of instances seen: ``len(x_ref)`` at construction plus every predicted batch.
    rng : numpy.random.Generator
        Generator of reservoir sampling; :attr:`rng_state` gets and sets its state.

    Notes
    -----
    p-values and distances are returned as float64, SciPy's values unrounded (alibi-detect
    casts them to float32). Errors are raised at the boundary: ``TypeError`` for the wrong kind
    of argument, ``ValueError`` for a wrong value (alibi-detect raises ``ValueError`` for a
    non-callable ``preprocess_fn`` and ``KeyError`` for an unknown ``update_x_ref`` key). An
    unknown ``correction`` is rejected for one feature too (alibi-detect accepts it there and
    fails at the first ``'batch'`` prediction). Reference updates add each batch in the form the
    reference is stored in: preprocessed, unless preprocessing is lazy (``preprocess_at_init=
    False`` with a raw ``x_ref``). The batch is preprocessed once per :meth:`predict`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cd = KSDrift(rng.normal(size=(1000, 2)), p_val=0.05)
    >>> cd.predict(rng.normal(size=(100, 2)))["data"]["is_drift"]
    0
    >>> cd.predict(rng.normal(loc=1.0, size=(100, 2)))["data"]["is_drift"]
    1
    """

    meta_name = "KSDrift"
    detector_type = "drift"
    online = False

    @_accepts_preprocess_x_ref
    def __init__(
        self,
        x_ref: np.ndarray,
        p_val: float = 0.05,
        x_ref_preprocessed: bool = False,
        preprocess_at_init: bool = True,
        update_x_ref: dict[str, int] | None = None,
        preprocess_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        correction: str = "bonferroni",
        alternative: str = "two-sided",
        n_features: int | None = None,
        input_shape: tuple[int, ...] | None = None,
        data_type: str | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(data_type)
        self.p_val = _check_p_val(p_val)
        self.x_ref_preprocessed = check_bool(x_ref_preprocessed, "x_ref_preprocessed")
        self.preprocess_at_init = check_bool(preprocess_at_init, "preprocess_at_init")
        self.update_x_ref = _check_update_x_ref(update_x_ref)
        self.preprocess_fn = check_callable(preprocess_fn, "preprocess_fn")
        self.correction = _check_choice(correction, CORRECTIONS, "correction")
        self.alternative = _check_choice(alternative, ALTERNATIVES, "alternative")
        self.seed = check_seed(seed)
        self.rng = np.random.default_rng(self.seed)

        x_ref = self._check_input(x_ref, "x_ref", raw=not self.x_ref_preprocessed)
        self.input_shape = (
            tuple(x_ref.shape[1:]) if input_shape is None else check_shape(input_shape)
        )
        if self.preprocess_fn is not None and self._ref_is_preprocessed and not x_ref_preprocessed:
            x_ref = self._preprocess(x_ref, "x_ref")
        self.x_ref = x_ref
        self.n = len(x_ref)

        if self._ref_is_preprocessed or self.preprocess_fn is None:
            width = _width(x_ref)
        elif n_features is None:  # lazy preprocessing: probe one instance
            width = _width(self._preprocess(x_ref[0:1], "x_ref[0:1]"))
        else:
            width = None  # checked against the preprocessed reference at score time
        if n_features is None:
            assert width is not None
            n_features = width
        else:
            n_features = check_positive_int(n_features, "n_features")
            if width is not None and width != n_features:
                raise ValueError(
                    f"n_features={n_features} does not match the (preprocessed) reference, "
                    f"which has {width} features per instance"
                )
        self.n_features: int = n_features

    # --------------------------------------------------------------- state
    @property
    def _ref_is_preprocessed(self) -> bool:
        """Whether ``x_ref`` is stored in preprocessed form (so updates append preprocessed x)."""
        return self.preprocess_fn is None or self.x_ref_preprocessed or self.preprocess_at_init

    @property
    def rng_state(self) -> dict[str, Any]:
        """State of the reservoir-sampling generator (a JSON-friendly dict); settable."""
        return self.rng.bit_generator.state

    @rng_state.setter
    def rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    # -------------------------------------------------------------- checks
    def _check_input(self, x: Any, name: str, *, raw: bool) -> np.ndarray:
        """Check a batch; ``raw`` batches go through ``preprocess_fn`` (if any) before testing."""
        if raw and self.preprocess_fn is not None:
            # Only preprocess_fn has to understand raw data: any dtype, checked loosely here.
            if not isinstance(x, np.ndarray):
                raise TypeError(f"{name} must be a numpy array, got {describe(x)}")
            if x.ndim == 0 or x.shape[0] == 0:
                raise ValueError(
                    f"{name} is empty (shape {x.shape}); at least one instance is needed"
                )
            check_finite(x, name)
            return x
        return check_array(x, name, min_ndim=1)

    def _preprocess(self, x: np.ndarray, name: str) -> np.ndarray:
        assert self.preprocess_fn is not None
        try:
            out = self.preprocess_fn(x)
        except (TypeError, ValueError) as err:
            raise type(err)(f"preprocess_fn could not process {name}: {err}") from err
        if not isinstance(out, np.ndarray):
            raise TypeError(
                f"preprocess_fn must return a numpy array, got {describe(out)} for {name}"
            )
        if out.ndim == 0 or len(out) != len(x):
            raise ValueError(
                f"preprocess_fn must return one row per instance: {len(x)} for {name}, "
                f"got an array of shape {out.shape}"
            )
        return check_array(out, f"preprocess_fn({name})", min_ndim=1)

    def _prepare(
        self, x: Any, preprocessed: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Check and preprocess ``x``: (reference 2-D, batch 2-D, batch as the reference stores it).

        With ``preprocessed``, ``x`` is already ``preprocess_fn(batch)`` (e.g. scores computed
        elsewhere) and is tested as it is.
        """
        preprocessed = check_bool(preprocessed, "preprocessed")
        x = self._check_input(x, "x", raw=not preprocessed)
        x_ref = self.x_ref
        if preprocessed and self.preprocess_fn is not None:
            if not self._ref_is_preprocessed:
                raise ValueError(
                    "preprocessed=True needs a reference stored preprocessed; this detector "
                    "preprocesses its raw reference lazily (preprocess_at_init=False), so the "
                    "batch must be given raw"
                )
            x_proc = x_store = x
        elif self.preprocess_fn is not None:
            x_proc = self._preprocess(x, "x")
            if not self._ref_is_preprocessed:
                x_ref = self._preprocess(x_ref, "x_ref")
            x_store = x_proc if self._ref_is_preprocessed else x
        else:
            x_proc = x_store = x
        ref_width, width = _width(x_ref), _width(x_proc)
        if ref_width != self.n_features:
            raise ValueError(
                f"the preprocessed reference has {ref_width} features per instance, but "
                f"n_features={self.n_features}"
            )
        if width != self.n_features:
            what = "preprocessed x" if self.preprocess_fn is not None else "x"
            raise ValueError(
                f"{what} has {width} features per instance (shape {x_proc.shape}), but the "
                f"reference has n_features={self.n_features} (shape {x_ref.shape})"
            )
        if self.n_features > 1 and x_proc.shape[1:] != x_ref.shape[1:]:
            raise ValueError(
                f"x has instances of shape {x_proc.shape[1:]} and the reference of shape "
                f"{x_ref.shape[1:]}: the same number of features in another layout would "
                "compare unrelated features"
            )
        if (
            self.update_x_ref is not None
            and x_store.shape[1:] != self.x_ref.shape[1:]
            and not _width(x_store) == _width(self.x_ref) == 1
        ):
            raise ValueError(
                f"x has instances of shape {x_store.shape[1:]}, but the stored reference (raw, "
                f"as preprocessing is lazy) has {self.x_ref.shape[1:]}: update_x_ref cannot add "
                "x to it"
            )
        return x_ref.reshape(len(x_ref), -1), x_proc.reshape(len(x_proc), -1), x_store

    # -------------------------------------------------------------- tests
    def _ks(self, x_ref: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.n_features == 1:
            # A 1-D call skips the axis machinery: fastest for the harmful-drift use.
            res = ks_2samp(x_ref[:, 0], x[:, 0], alternative=self.alternative, method=KS_METHOD)
        else:
            # One call, SciPy loops over the columns: faster than a Python loop of calls.
            res = ks_2samp(x_ref, x, alternative=self.alternative, method=KS_METHOD, axis=0)
        p_vals = np.asarray(res.pvalue, dtype=np.float64).reshape(self.n_features)
        dists = np.asarray(res.statistic, dtype=np.float64).reshape(self.n_features)
        return p_vals, dists

    def score(self, x: np.ndarray, *, preprocessed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Kolmogorov-Smirnov p-value and distance of every feature of ``x`` against the reference.

        Parameters
        ----------
        x
            Test batch, instances first, in the layout of the raw reference.
        preprocessed
            (keyword) ``x`` is already the output of ``preprocess_fn`` (for a detector built by
            ``ad.drift_detector``: the batch's scores), so it is not preprocessed again.

        Returns
        -------
        p_vals, distances : numpy.ndarray
            Float64 arrays of length ``n_features``: SciPy's ``ks_2samp(x_ref[:, f], x[:, f],
            alternative=alternative, method='asymp')`` p-value and statistic of each feature.

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> cd = KSDrift(rng.normal(size=500), alternative="greater")
        >>> p_vals, dists = cd.score(rng.normal(loc=0.5, size=100))
        >>> bool(p_vals[0] < 0.05)
        True
        """
        x_ref, x2d, _ = self._prepare(x, preprocessed)
        return self._ks(x_ref, x2d)

    def predict(
        self,
        x: np.ndarray,
        drift_type: str = "batch",
        return_p_val: bool = True,
        return_distance: bool = True,
        *,
        preprocessed: bool = False,
    ) -> dict[str, Any]:
        """Test ``x`` for drift, then update the reference if ``update_x_ref`` says so.

        Parameters
        ----------
        x
            Test batch, instances first.
        drift_type
            ``'batch'``: one decision for the batch, the features' p-values corrected by
            ``correction`` (Bonferroni: any ``p < p_val / n_features``; FDR: Benjamini-Hochberg
            at level ``p_val``). ``'feature'``: one decision per feature, ``p < p_val``.
        return_p_val
            Return the p-values and the threshold they were compared with.
        return_distance
            Return the Kolmogorov-Smirnov statistics.
        preprocessed
            (keyword) ``x`` is already the output of ``preprocess_fn`` (scores logged or
            computed elsewhere): it is tested, and added to an updated reference, as it is.
            The decision is the one ``predict(raw_batch)`` gives when
            ``preprocess_fn(raw_batch)`` equals ``x``.

        Returns
        -------
        dict
            ``{'meta': meta, 'data': {'is_drift', 'distance', 'p_val', 'threshold'}}``:
            ``is_drift`` is an int (batch) or an int array (feature); ``p_val`` and ``distance``
            are float64 arrays of length ``n_features``; ``threshold`` is a float (for FDR with
            no rejection, the array of the Benjamini-Hochberg levels). Values not asked for are
            None.

        Examples
        --------
        >>> rng = np.random.default_rng(1)
        >>> cd = KSDrift(rng.normal(size=(1000, 3)), correction="fdr")
        >>> x = rng.normal(size=(100, 3))
        >>> x[:, 1] += 1.0  # shift the second feature only
        >>> cd.predict(x, drift_type="feature")["data"]["is_drift"]
        array([0, 1, 0])
        >>> cd.predict(x)["data"]["is_drift"]
        1
        """
        drift_type = _check_choice(drift_type, DRIFT_TYPES, "drift_type")
        return_p_val = check_bool(return_p_val, "return_p_val")
        return_distance = check_bool(return_distance, "return_distance")
        x_ref, x2d, x_store = self._prepare(x, preprocessed)
        p_vals, dists = self._ks(x_ref, x2d)

        threshold: float | np.ndarray
        if drift_type == "feature":
            is_drift: int | np.ndarray = (p_vals < self.p_val).astype(int)
            threshold = self.p_val
        elif self.correction == "bonferroni":
            threshold = self.p_val / self.n_features
            is_drift = int((p_vals < threshold).any())
        else:
            is_drift, threshold = fdr(p_vals, self.p_val)

        if self.update_x_ref is not None:
            self.x_ref = self._updated_reference(x_store)
        self.n += len(x2d)
        return self._prediction(
            {
                "is_drift": is_drift,
                "distance": dists if return_distance else None,
                "p_val": p_vals if return_p_val else None,
                "threshold": threshold if return_p_val else None,
            }
        )

    # ------------------------------------------------------------ description
    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments: everything :meth:`from_config` needs to rebuild this.

        ``x_ref`` is the reference as stored; when it is stored preprocessed,
        ``x_ref_preprocessed`` is True, so that rebuilding does not preprocess it again (as
        alibi-detect saves it). ``preprocess_fn`` is the function itself.

        Examples
        --------
        >>> cd = KSDrift(np.zeros((10, 2)), p_val=0.01)
        >>> KSDrift.from_config(cd.get_config()).p_val
        0.01
        """
        return {
            "x_ref": self.x_ref,
            "p_val": self.p_val,
            "x_ref_preprocessed": bool(
                self.x_ref_preprocessed
                or (self.preprocess_fn is not None and self._ref_is_preprocessed)
            ),
            "preprocess_at_init": self.preprocess_at_init,
            "update_x_ref": None if self.update_x_ref is None else dict(self.update_x_ref),
            "preprocess_fn": self.preprocess_fn,
            "correction": self.correction,
            "alternative": self.alternative,
            "n_features": self.n_features,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "data_type": self.meta.get("data_type"),
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KSDrift:
        """Build a detector from :meth:`get_config`'s dict, through ``__init__`` (its checks)."""
        config = check_keys(config, {"x_ref"}, set(_CONFIG_KEYS) - {"x_ref"}, "config")
        return cls(**config)

    def get_state(self) -> dict[str, Any]:
        """What changed after construction, as JSON: instances seen, the reservoir-sampling
        generator's state and ``meta``."""
        return {"n": self.n, "rng_state": self.rng_state, "meta": dict(self.meta)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s dict (validated)."""
        state = check_keys(state, {"n", "rng_state", "meta"}, set(), "state")
        n, rng_state, meta = state["n"], state["rng_state"], state["meta"]
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"state['n'] must be an integer >= 0, got {describe(n)}")
        if not isinstance(meta, dict) or meta.get("name") != self.meta_name:
            raise ValueError(f"state['meta'] must be a dict whose 'name' is {self.meta_name!r}")
        check_json(meta, "state['meta']")
        generator = np.random.default_rng()
        try:
            generator.bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"state['rng_state'] is not a random generator state: {err}") from None
        self.n = int(n)
        self.rng = generator
        self.meta = dict(meta)

    # ------------------------------------------------------------ updates
    def _updated_reference(self, x: np.ndarray) -> np.ndarray:
        assert self.update_x_ref is not None
        ((method, size),) = self.update_x_ref.items()
        if x.shape[1:] != self.x_ref.shape[1:]:  # one feature, (n,) against (n, 1): same data
            x = x.reshape((len(x), *self.x_ref.shape[1:]))
        if method == "last":
            return np.concatenate([self.x_ref, x], axis=0)[-size:]
        return self._reservoir(x, size)

    def _reservoir(self, x: np.ndarray, size: int) -> np.ndarray:
        """Reservoir sampling (algorithm R): a uniform sample of ``size`` of the ``n + len(x)`` seen."""
        res = self.x_ref
        seen = self.n
        if len(res) > size:  # a reference larger than the reservoir: sample it down first
            keep = np.sort(self.rng.choice(len(res), size=size, replace=False))
            res = res[keep]
            logger.info(
                "reservoir_sampling: reference of %d instances sampled down to %d",
                len(self.x_ref),
                size,
            )
        n_free = max(size - len(res), 0)
        res = np.concatenate([res, x[:n_free]], axis=0)
        seen += min(n_free, len(x))
        rest = x[n_free:]
        if len(rest):
            # Item number seen+i (1-based) replaces slot r ~ U{0, ..., seen+i-1} when r < size.
            draws = self.rng.integers(0, seen + np.arange(1, len(rest) + 1))
            hits = np.flatnonzero(draws < size)
            if hits.size:
                # Later items overwrite earlier ones in the same slot: keep the last hit per slot.
                slots, last = np.unique(draws[hits][::-1], return_index=True)
                res[slots] = rest[hits[::-1][last]]
        return res


def fdr(p_vals: np.ndarray, q_val: float) -> tuple[int, float | np.ndarray]:
    """Benjamini-Hochberg false discovery rate decision on a set of p-values.

    The sorted p-values ``p_(1) <= ... <= p_(n)`` are compared with ``q_val * i / n``; drift is
    declared when any is strictly below its level.

    Parameters
    ----------
    p_vals
        The p-values of the individual tests.
    q_val
        The false discovery rate to control.

    Returns
    -------
    is_drift, threshold
        ``is_drift`` is 1 if any sorted p-value is below its level, else 0. ``threshold`` is the
        level of the largest such index, or the whole array of levels when there is none.

    Examples
    --------
    >>> fdr(np.array([0.01, 0.04, 0.5]), 0.05)
    (1, 0.016666666666666666)
    """
    p_vals = np.asarray(p_vals, dtype=np.float64).ravel()
    n = len(p_vals)
    levels = q_val * np.arange(1, n + 1) / n
    below = np.sort(p_vals) < levels
    if not below.any():
        return 0, levels
    return 1, float(levels[np.flatnonzero(below)[-1]])


# ---------------------------------------------------------------- argument checks
def _width(x: np.ndarray) -> int:
    return int(np.prod(x.shape[1:], dtype=np.int64))


def _check_p_val(p_val: Any) -> float:
    if isinstance(p_val, bool) or not isinstance(p_val, numbers.Real):
        raise TypeError(f"p_val must be a number in (0, 1), got {describe(p_val)}")
    if not 0 < p_val < 1:
        raise ValueError(f"p_val must be in (0, 1), got {p_val}")
    return float(p_val)


def _check_choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_update_x_ref(update_x_ref: Any) -> dict[str, int] | None:
    if update_x_ref is None:
        return None
    if not isinstance(update_x_ref, dict):
        raise TypeError(
            "update_x_ref must be None or a dict {'last': n} or {'reservoir_sampling': n}, "
            f"got {describe(update_x_ref)}"
        )
    if len(update_x_ref) != 1 or next(iter(update_x_ref)) not in UPDATE_METHODS:
        raise ValueError(
            f"update_x_ref must have exactly one key, one of {UPDATE_METHODS}, "
            f"got keys {list(update_x_ref)}"
        )
    ((method, size),) = update_x_ref.items()
    return {method: check_positive_int(size, f"update_x_ref[{method!r}]")}
