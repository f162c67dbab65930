"""KSDrift: SciPy's p-values, corrections, alternatives, reference updates, preprocessing, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from scipy.stats import ks_2samp

from distilldetect import __version__
from distilldetect.cd import KSDrift, fdr
from distilldetect.cd.ks import ALTERNATIVES, KS_METHOD

P_VAL = 0.05


def scipy_ks(x_ref: np.ndarray, x: np.ndarray, alternative: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference: one ks_2samp call per flattened feature, called as KSDrift documents."""
    x_ref = x_ref.reshape(len(x_ref), -1)
    x = x.reshape(len(x), -1)
    res = [
        ks_2samp(x_ref[:, f], x[:, f], alternative=alternative, method="asymp")
        for f in range(x_ref.shape[1])
    ]
    return np.array([r.pvalue for r in res]), np.array([r.statistic for r in res])


def with_p_values(cd: KSDrift, p_vals: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``cd`` see hand-built p-values (the decisions are then checked in isolation)."""
    p = np.asarray(p_vals, dtype=np.float64)
    monkeypatch.setattr(cd, "_ks", lambda x_ref, x: (p, np.zeros_like(p)))


# --------------------------------------------------------------------------- SciPy equality
@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize(
    "ref_shape, x_shape",
    [((1000,), (100,)), ((300, 1), (40, 1)), ((500, 5), (80, 5)), ((200, 2, 3), (50, 2, 3))],
    ids=["1d", "one-column", "multivariate", "images"],
)
def test_score_equals_scipy(ref_shape, x_shape, alternative):
    rng = np.random.default_rng(0)
    x_ref = rng.normal(size=ref_shape)
    x = rng.normal(loc=0.2, scale=1.1, size=x_shape)
    cd = KSDrift(x_ref, alternative=alternative)
    p_vals, dists = cd.score(x)
    p_ref, d_ref = scipy_ks(x_ref, x, alternative)
    assert p_vals.dtype == dists.dtype == np.float64
    assert p_vals.shape == dists.shape == (cd.n_features,)
    assert cd.n_features == int(np.prod(ref_shape[1:]))
    assert_array_equal(p_vals, p_ref)
    assert_array_equal(dists, d_ref)


def test_method_is_asymp_not_exact():
    """Small samples: the p-values are SciPy's asymptotic ones, which differ from 'exact'."""
    assert KS_METHOD == "asymp"
    rng = np.random.default_rng(1)
    x_ref, x = rng.normal(size=20), rng.normal(loc=0.8, size=15)
    p = KSDrift(x_ref).score(x)[0][0]
    assert p == ks_2samp(x_ref, x, method="asymp").pvalue
    assert p != ks_2samp(x_ref, x, method="exact").pvalue


def test_integer_features_and_ties():
    rng = np.random.default_rng(2)
    x_ref, x = rng.integers(0, 5, size=(400, 3)), rng.integers(0, 6, size=(60, 3))
    p_vals, dists = KSDrift(x_ref).score(x)
    p_ref, d_ref = scipy_ks(x_ref, x, "two-sided")
    assert_array_equal(p_vals, p_ref)
    assert_array_equal(dists, d_ref)


# --------------------------------------------------------------------------- alternatives
def test_alternative_greater_flags_test_values_larger_than_reference():
    rng = np.random.default_rng(3)
    x_ref = rng.normal(size=1000)
    larger, smaller = rng.normal(loc=0.5, size=100), rng.normal(loc=-0.5, size=100)
    p = {alt: KSDrift(x_ref, alternative=alt) for alt in ALTERNATIVES}
    # test values larger than the reference: 'greater' (and 'two-sided') reject, 'less' does not
    assert p["greater"].score(larger)[0][0] < 1e-3
    assert p["two-sided"].score(larger)[0][0] < 1e-3
    assert p["less"].score(larger)[0][0] > 0.5
    # smaller: the mirror image
    assert p["less"].score(smaller)[0][0] < 1e-3
    assert p["two-sided"].score(smaller)[0][0] < 1e-3
    assert p["greater"].score(smaller)[0][0] > 0.5
    # for the same positive shift the one-sided p-value is the smaller one
    assert p["greater"].score(larger)[0][0] < p["two-sided"].score(larger)[0][0]


def test_one_sided_distance_is_the_signed_sup():
    """'greater' measures sup(F_ref - F_test): the reference's CDF above the test's."""
    x_ref = np.arange(10.0)
    x = x_ref + 3.0
    d_greater = KSDrift(x_ref, alternative="greater").score(x)[1][0]
    d_less = KSDrift(x_ref, alternative="less").score(x)[1][0]
    assert d_greater == pytest.approx(0.3)
    assert d_less == 0.0


# --------------------------------------------------------------------------- decisions
def test_predict_output_and_meta():
    rng = np.random.default_rng(4)
    cd = KSDrift(rng.normal(size=(500, 2)), data_type="tabular")
    out = cd.predict(rng.normal(size=(50, 2)))
    assert set(out) == {"meta", "data"}
    assert set(out["data"]) == {"is_drift", "distance", "p_val", "threshold"}
    assert out["meta"] == {
        "name": "KSDrift",
        "detector_type": "drift",
        "online": False,
        "data_type": "tabular",
        "version": __version__,
    }
    assert out["data"]["is_drift"] in (0, 1) and isinstance(out["data"]["is_drift"], int)
    quiet = cd.predict(rng.normal(size=(50, 2)), return_p_val=False, return_distance=False)
    assert quiet["data"]["p_val"] is None
    assert quiet["data"]["threshold"] is None
    assert quiet["data"]["distance"] is None
    assert quiet["data"]["is_drift"] in (0, 1)


def test_bonferroni_batch_decision(monkeypatch):
    cd = KSDrift(np.zeros((10, 4)) + np.arange(10)[:, None], p_val=P_VAL)
    with_p_values(cd, [0.02, 0.3, 0.5, 0.9], monkeypatch)
    data = cd.predict(np.ones((5, 4)))["data"]
    assert data["threshold"] == pytest.approx(P_VAL / 4)
    assert data["is_drift"] == 0  # 0.02 > 0.0125
    with_p_values(cd, [0.3, 0.012, 0.5, 0.9], monkeypatch)
    assert cd.predict(np.ones((5, 4)))["data"]["is_drift"] == 1
    with_p_values(cd, [0.3, 0.0125, 0.5, 0.9], monkeypatch)  # equal is not below
    assert cd.predict(np.ones((5, 4)))["data"]["is_drift"] == 0


def test_fdr_batch_decision(monkeypatch):
    cd = KSDrift(np.zeros((10, 3)) + np.arange(10)[:, None], p_val=P_VAL, correction="fdr")
    # sorted 0.02, 0.03, 0.5 against levels 0.0167, 0.0333, 0.05: the second is below
    with_p_values(cd, [0.5, 0.03, 0.02], monkeypatch)
    data = cd.predict(np.ones((5, 3)))["data"]
    assert data["is_drift"] == 1
    assert data["threshold"] == pytest.approx(P_VAL * 2 / 3)
    # Bonferroni on the same p-values does not reject (0.02 > 0.05 / 3)
    cd.correction = "bonferroni"
    assert cd.predict(np.ones((5, 3)))["data"]["is_drift"] == 0
    # no p-value below its level: threshold is the array of levels
    cd.correction = "fdr"
    with_p_values(cd, [0.5, 0.04, 0.02], monkeypatch)
    data = cd.predict(np.ones((5, 3)))["data"]
    assert data["is_drift"] == 0
    np.testing.assert_allclose(data["threshold"], P_VAL * np.arange(1, 4) / 3)


def test_fdr_function():
    assert fdr(np.array([0.01, 0.04, 0.5]), 0.05) == (1, pytest.approx(0.05 / 3))
    assert fdr(np.array([0.001, 0.002, 0.003, 0.9]), 0.05) == (1, pytest.approx(0.0375))
    is_drift, levels = fdr(np.array([0.05 / 3, 0.9, 0.9]), 0.05)  # equal is not below
    assert is_drift == 0
    np.testing.assert_allclose(levels, [0.05 / 3, 0.1 / 3, 0.05])


def test_feature_drift_type(monkeypatch):
    cd = KSDrift(np.zeros((10, 3)) + np.arange(10)[:, None], p_val=P_VAL, correction="fdr")
    with_p_values(cd, [0.049, 0.05, 0.2], monkeypatch)
    data = cd.predict(np.ones((5, 3)), drift_type="feature")["data"]
    assert_array_equal(data["is_drift"], [1, 0, 0])
    assert data["threshold"] == P_VAL


def test_feature_drift_on_real_shift():
    rng = np.random.default_rng(5)
    cd = KSDrift(rng.normal(size=(2000, 4)))
    x = rng.normal(size=(200, 4))
    x[:, 2] += 1.0
    assert_array_equal(cd.predict(x, drift_type="feature")["data"]["is_drift"], [0, 0, 1, 0])
    assert cd.predict(x)["data"]["is_drift"] == 1


def test_single_feature_corrections_agree():
    rng = np.random.default_rng(6)
    x_ref = rng.normal(size=1000)
    for loc in (0.0, 0.3):
        x = rng.normal(loc=loc, size=100)
        p = KSDrift(x_ref).score(x)[0][0]
        for correction in ("bonferroni", "fdr"):
            data = KSDrift(x_ref, correction=correction).predict(x)["data"]
            assert data["is_drift"] == int(p < P_VAL)


# --------------------------------------------------------------------------- reference updates
def test_update_last():
    x_ref = np.arange(10.0)
    cd = KSDrift(x_ref, update_x_ref={"last": 12})
    cd.predict(np.arange(100.0, 105.0))
    assert_array_equal(cd.x_ref, np.r_[np.arange(3.0, 10.0), np.arange(100.0, 105.0)])
    assert cd.n == 15
    cd.predict(np.arange(200.0, 220.0))
    assert_array_equal(cd.x_ref, np.arange(208.0, 220.0))
    assert cd.n == 35
    big = KSDrift(x_ref, update_x_ref={"last": 100})
    big.predict(np.arange(100.0, 105.0))
    assert_array_equal(big.x_ref, np.r_[x_ref, np.arange(100.0, 105.0)])


def test_no_update_counts_seen_instances():
    cd = KSDrift(np.arange(10.0))
    cd.predict(np.arange(5.0))
    assert_array_equal(cd.x_ref, np.arange(10.0))
    assert cd.n == 15


def test_update_last_multivariate_keeps_rows():
    x_ref = np.arange(20.0).reshape(10, 2)
    cd = KSDrift(x_ref, update_x_ref={"last": 4})
    x = -np.arange(6.0).reshape(3, 2)
    cd.predict(x)
    assert_array_equal(cd.x_ref, np.r_[x_ref[-1:], x])


def test_reservoir_fills_then_samples():
    x_ref = np.arange(10.0)
    cd = KSDrift(x_ref, update_x_ref={"reservoir_sampling": 15}, seed=0)
    cd.predict(np.arange(100.0, 104.0))  # 14 seen <= 15: plain concatenation
    assert_array_equal(cd.x_ref, np.r_[x_ref, np.arange(100.0, 104.0)])
    x = np.arange(200.0, 230.0)
    cd.predict(x)
    assert cd.n == 44
    assert cd.x_ref.shape == (15,)
    assert np.isin(cd.x_ref, np.r_[x_ref, np.arange(100.0, 104.0), x]).all()
    assert len(np.unique(cd.x_ref)) == 15


def test_reservoir_same_seed_same_reference():
    rng = np.random.default_rng(7)
    x_ref = rng.normal(size=(50, 2))
    batches = [rng.normal(size=(40, 2)) for _ in range(4)]

    def run(seed):
        cd = KSDrift(x_ref, update_x_ref={"reservoir_sampling": 60}, seed=seed)
        for b in batches:
            cd.predict(b)
        return cd.x_ref

    assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))
    assert run(3).shape == (60, 2)


def test_reservoir_is_uniform():
    """Every instance seen ends up in the reservoir with probability size / seen."""
    size, n_ref, n_new, runs = 20, 20, 60, 1000
    counts = np.zeros(n_ref + n_new)
    stream = np.arange(float(n_ref + n_new))
    for seed in range(runs):
        cd = KSDrift(stream[:n_ref], update_x_ref={"reservoir_sampling": size}, seed=seed)
        cd.predict(stream[n_ref : n_ref + 25])
        cd.predict(stream[n_ref + 25 :])
        counts[cd.x_ref.astype(int)] += 1
    freq = counts / runs
    expected = size / (n_ref + n_new)  # 0.25
    # each frequency ~ Binomial(1000, 0.25) / 1000, sd 0.0137: 5 sd allows for 80 of them
    assert np.abs(freq - expected).max() < 5 * np.sqrt(expected * (1 - expected) / runs)
    # old and new instances alike (group means, sd ~ 0.003)
    assert abs(freq[:n_ref].mean() - expected) < 0.02
    assert abs(freq[n_ref:].mean() - expected) < 0.02


def test_reservoir_smaller_than_reference():
    cd = KSDrift(np.arange(100.0), update_x_ref={"reservoir_sampling": 30}, seed=0)
    cd.predict(np.arange(1000.0, 1010.0))
    assert cd.x_ref.shape == (30,)
    assert cd.n == 110
    assert len(np.unique(cd.x_ref)) == 30


def test_rng_state_round_trip():
    cd = KSDrift(np.arange(10.0), update_x_ref={"reservoir_sampling": 10}, seed=5)
    state = cd.rng_state
    cd.predict(np.arange(100.0, 140.0))
    first = cd.x_ref.copy()
    other = KSDrift(np.arange(10.0), update_x_ref={"reservoir_sampling": 10}, seed=99)
    other.rng_state = state
    other.predict(np.arange(100.0, 140.0))
    assert_array_equal(other.x_ref, first)
    assert cd.seed == 5 and other.seed == 99


# --------------------------------------------------------------------------- preprocessing
class Recorder:
    """A preprocess_fn that sums the features of each instance and records the batch sizes."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        return x.reshape(len(x), -1).sum(axis=1)


def test_preprocess_applied_to_both_sides():
    rng = np.random.default_rng(8)
    x_ref, x = rng.normal(size=(300, 4)), rng.normal(loc=0.3, size=(60, 4))
    pre = Recorder()
    cd = KSDrift(x_ref, preprocess_fn=pre)
    assert pre.calls == [300]
    assert cd.n_features == 1
    assert cd.input_shape == (4,)
    assert_array_equal(cd.x_ref, x_ref.sum(axis=1))
    p_vals, dists = cd.score(x)
    p_ref, d_ref = scipy_ks(x_ref.sum(axis=1), x.sum(axis=1), "two-sided")
    assert_array_equal(p_vals, p_ref)
    assert_array_equal(dists, d_ref)
    assert pre.calls == [300, 60]


def test_lazy_preprocessing():
    rng = np.random.default_rng(9)
    x_ref, x = rng.normal(size=(300, 4)), rng.normal(size=(60, 4))
    pre = Recorder()
    cd = KSDrift(x_ref, preprocess_fn=pre, preprocess_at_init=False)
    assert pre.calls == [1]  # n_features from x_ref[0:1]
    assert cd.n_features == 1
    assert cd.x_ref is x_ref
    p_vals, _ = cd.score(x)
    assert pre.calls == [1, 60, 300]
    assert_array_equal(p_vals, scipy_ks(x_ref.sum(axis=1), x.sum(axis=1), "two-sided")[0])
    # given n_features: no probe at construction
    pre2 = Recorder()
    KSDrift(x_ref, preprocess_fn=pre2, preprocess_at_init=False, n_features=1)
    assert pre2.calls == []


def test_x_ref_preprocessed():
    rng = np.random.default_rng(10)
    x_ref_scores, x = rng.normal(size=300), rng.normal(size=(60, 4))
    pre = Recorder()
    cd = KSDrift(x_ref_scores, x_ref_preprocessed=True, preprocess_fn=pre)
    assert pre.calls == []
    assert cd.x_ref is x_ref_scores
    p_vals, _ = cd.score(x)
    assert pre.calls == [60]
    assert_array_equal(p_vals, scipy_ks(x_ref_scores, x.sum(axis=1), "two-sided")[0])


@pytest.mark.parametrize(
    "kwargs, stored",
    [
        ({}, "preprocessed"),
        ({"preprocess_at_init": False}, "raw"),
        ({"x_ref_preprocessed": True, "preprocess_at_init": False}, "preprocessed"),
    ],
)
def test_update_stores_batches_like_the_reference(kwargs, stored):
    x_ref = np.arange(20.0).reshape(10, 2)
    x = 100 + np.arange(6.0).reshape(3, 2)
    if kwargs.get("x_ref_preprocessed"):
        x_ref = x_ref.sum(axis=1)
    cd = KSDrift(x_ref, preprocess_fn=Recorder(), update_x_ref={"last": 5}, **kwargs)
    cd.predict(x)
    expected = x.sum(axis=1) if stored == "preprocessed" else x
    assert_array_equal(cd.x_ref[-3:], expected)
    assert len(cd.x_ref) == 5


def test_preprocess_x_ref_deprecated_alias():
    x_ref = np.arange(20.0).reshape(10, 2)
    with pytest.warns(UserWarning, match="preprocess_x_ref is deprecated"):
        cd = KSDrift(x_ref, preprocess_fn=Recorder(), preprocess_x_ref=False)
    assert cd.preprocess_at_init is False
    assert cd.x_ref is x_ref
    with pytest.raises(ValueError, match="preprocess_x_ref.*preprocess_at_init"):
        KSDrift(x_ref, preprocess_x_ref=False, preprocess_at_init=False)
    with pytest.raises(ValueError, match="preprocess_x_ref.*preprocess_at_init"):
        KSDrift(x_ref, 0.05, False, True, preprocess_x_ref=False)


def test_attributes_for_saving():
    cd = KSDrift(
        np.arange(10.0),
        p_val=0.01,
        update_x_ref={"last": 5},
        correction="fdr",
        alternative="greater",
        input_shape=(1,),
        seed=3,
    )
    assert (cd.p_val, cd.correction, cd.alternative) == (0.01, "fdr", "greater")
    assert (cd.n_features, cd.input_shape, cd.n, cd.seed) == (1, (1,), 10, 3)
    assert cd.update_x_ref == {"last": 5}
    assert (cd.preprocess_fn, cd.x_ref_preprocessed, cd.preprocess_at_init) == (None, False, True)
    assert isinstance(cd.rng_state, dict)


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def cd2() -> KSDrift:
    return KSDrift(np.random.default_rng(11).normal(size=(100, 2)), update_x_ref={"last": 100})


def test_bad_feature_count(cd2):
    with pytest.raises(ValueError, match=r"x has 3 features.*n_features=2"):
        cd2.predict(np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"x has 1 features"):
        cd2.score(np.zeros(10))
    with pytest.raises(ValueError, match="instances of shape"):
        KSDrift(np.zeros((10, 2, 3)) + np.arange(10)[:, None, None]).score(np.zeros((4, 3, 2)))


def test_one_feature_layouts_are_equivalent():
    cd = KSDrift(np.arange(10.0))
    assert_array_equal(cd.score(np.arange(5.0))[0], cd.score(np.arange(5.0)[:, None])[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(cd2, bad):
    x = np.zeros((10, 2))
    x[3, 1] = bad
    with pytest.raises(ValueError, match="x must be finite"):
        cd2.predict(x)
    x_ref = np.zeros((10, 2))
    x_ref[0, 0] = bad
    with pytest.raises(ValueError, match="x_ref must be finite"):
        KSDrift(x_ref)
    with pytest.raises(ValueError, match=r"preprocess_fn\(x\) must be finite"):
        KSDrift(np.arange(10.0), x_ref_preprocessed=True, preprocess_fn=lambda x: x * bad).score(
            np.ones(4)
        )


def test_empty(cd2):
    with pytest.raises(ValueError, match="x is empty"):
        cd2.predict(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="x_ref is empty"):
        KSDrift(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="x is empty"):
        KSDrift(np.arange(10.0), preprocess_fn=lambda x: x).score(np.zeros(0))


def test_bad_state_unchanged_after_error(cd2):
    x_ref, n = cd2.x_ref.copy(), cd2.n
    with pytest.raises(ValueError):
        cd2.predict(np.full((10, 2), np.nan))
    with pytest.raises(ValueError):
        cd2.predict(np.zeros((10, 2)), drift_type="instance")
    assert_array_equal(cd2.x_ref, x_ref)
    assert cd2.n == n


def test_non_array_input(cd2):
    with pytest.raises(TypeError, match="x must be a numpy array, got list"):
        cd2.predict([[0.0, 1.0]])
    with pytest.raises(TypeError, match="x_ref must be a numpy array"):
        KSDrift([1.0, 2.0])
    with pytest.raises(TypeError, match="x must hold numbers"):
        KSDrift(np.arange(3.0)).score(np.array(["a", "b"]))


@pytest.mark.parametrize("correction", ["holm", None, "Bonferroni"])
def test_unknown_correction(correction):
    with pytest.raises(ValueError, match=r"correction must be one of \('bonferroni', 'fdr'\)"):
        KSDrift(np.zeros((10, 3)), correction=correction)
    with pytest.raises(ValueError, match="correction must be one of"):
        KSDrift(np.zeros(10), correction=correction)


@pytest.mark.parametrize("p_val", [0, 1, 0.0, 1.0, -0.1, 1.5, np.inf, np.nan])
def test_p_val_outside_unit_interval(p_val):
    with pytest.raises(ValueError, match=r"p_val must be in \(0, 1\)"):
        KSDrift(np.zeros(10), p_val=p_val)


@pytest.mark.parametrize("p_val", [None, "0.05", True])
def test_p_val_not_a_number(p_val):
    with pytest.raises(TypeError, match="p_val must be a number"):
        KSDrift(np.zeros(10), p_val=p_val)


def test_preprocess_fn_not_callable():
    with pytest.raises(TypeError, match="preprocess_fn must be callable or None, got str"):
        KSDrift(np.zeros(10), preprocess_fn="score")


def test_preprocess_fn_bad_output():
    with pytest.raises(TypeError, match="preprocess_fn must return a numpy array, got list"):
        KSDrift(np.zeros(10), preprocess_fn=lambda x: list(x))
    with pytest.raises(ValueError, match="one row per instance: 10 for x_ref"):
        KSDrift(np.zeros(10), preprocess_fn=lambda x: x[:5])


@pytest.mark.parametrize(
    "update, error, match",
    [
        (
            {"first": 10},
            ValueError,
            r"one of \('last', 'reservoir_sampling'\), got keys \['first'\]",
        ),
        ({"last": 10, "reservoir_sampling": 5}, ValueError, "exactly one key"),
        ({}, ValueError, "exactly one key"),
        ({"last": 0}, ValueError, r"update_x_ref\['last'\] must be an integer >= 1"),
        ({"reservoir_sampling": 2.5}, TypeError, "must be an integer"),
        ([("last", 10)], TypeError, "update_x_ref must be None or a dict"),
    ],
)
def test_bad_update_x_ref(update, error, match):
    with pytest.raises(error, match=match):
        KSDrift(np.zeros(10), update_x_ref=update)


def test_other_bad_arguments():
    x_ref = np.zeros((10, 2))
    with pytest.raises(ValueError, match="alternative must be one of"):
        KSDrift(x_ref, alternative="larger")
    with pytest.raises(ValueError, match="n_features=3 does not match"):
        KSDrift(x_ref, n_features=3)
    with pytest.raises(ValueError, match="n_features must be an integer >= 1"):
        KSDrift(x_ref, n_features=0)
    with pytest.raises(TypeError, match="input_shape must be None or a tuple"):
        KSDrift(x_ref, input_shape="2")
    with pytest.raises(TypeError, match="x_ref_preprocessed must be True or False"):
        KSDrift(x_ref, x_ref_preprocessed="yes")
    with pytest.raises(TypeError, match="seed must be None or a non-negative integer"):
        KSDrift(x_ref, seed=1.5)
    with pytest.raises(TypeError, match="data_type must be None or a string"):
        KSDrift(x_ref, data_type=3)
    cd = KSDrift(x_ref + np.arange(10)[:, None])
    with pytest.raises(ValueError, match=r"drift_type must be one of \('batch', 'feature'\)"):
        cd.predict(x_ref, drift_type="instance")
    with pytest.raises(TypeError, match="return_p_val must be True or False"):
        cd.predict(x_ref, return_p_val=None)


def test_lazy_n_features_mismatch_caught_at_score():
    cd = KSDrift(
        np.zeros((10, 2)), preprocess_fn=lambda x: x, preprocess_at_init=False, n_features=1
    )
    with pytest.raises(ValueError, match="preprocessed reference has 2 features.*n_features=1"):
        cd.score(np.zeros((5, 2)))


def test_lazy_update_needs_the_raw_layout():
    cd = KSDrift(
        np.zeros((10, 2)),
        preprocess_fn=Recorder(),
        preprocess_at_init=False,
        update_x_ref={"last": 20},
    )
    with pytest.raises(ValueError, match=r"instances of shape \(3,\).*update_x_ref cannot add"):
        cd.predict(np.zeros((5, 3)))
    assert cd.n == 10


def test_predict_preprocessed_matches_raw():
    """Scores computed elsewhere give the same decision and p-value as the raw batch."""
    rng = np.random.default_rng(3)
    x_ref = rng.normal(size=(300, 4))
    x = rng.normal(loc=0.3, size=(80, 4))
    cd = KSDrift(x_ref, preprocess_fn=Recorder(), alternative="greater", update_x_ref={"last": 400})
    twin = KSDrift(
        x_ref, preprocess_fn=Recorder(), alternative="greater", update_x_ref={"last": 400}
    )
    raw = cd.predict(x)
    pre = twin.predict(x.sum(axis=1), preprocessed=True)
    assert raw["data"]["is_drift"] == pre["data"]["is_drift"]
    np.testing.assert_array_equal(raw["data"]["p_val"], pre["data"]["p_val"])
    np.testing.assert_array_equal(cd.x_ref, twin.x_ref)
    p, d = twin.score(x.sum(axis=1), preprocessed=True)
    np.testing.assert_array_equal(p, cd.score(x)[0])


def test_predict_preprocessed_refused_for_lazy_reference():
    cd = KSDrift(np.ones((10, 3)), preprocess_fn=Recorder(), preprocess_at_init=False)
    with pytest.raises(ValueError, match="preprocessed=True needs a reference stored"):
        cd.predict(np.ones(5), preprocessed=True)
    with pytest.raises(TypeError, match="preprocessed must be True or False"):
        cd.predict(np.ones((5, 3)), preprocessed="yes")
