"""TailRankDrift: the one-sided tail-weighted rank test for harmful drift on 1-D scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest, mannwhitneyu

from distilldetect import KSDrift, ModelDistillation, load_detector, save_detector
from distilldetect.cd import TailRankDrift
from distilldetect.cd.tail_rank import tail_rank_statistic
from distilldetect.saving import detector_parts


# ------------------------------------------------------------------ the statistic and its null
def test_statistic_is_the_mean_weighted_reference_position():
    cd = TailRankDrift(np.arange(10.0), power=2)
    # 4.5 has 5 reference values below (0..4), 9.5 all 10, -1 none
    assert cd.statistic(np.array([4.5, 9.5, -1.0])) == pytest.approx((0.25 + 1 + 0) / 3)
    # ties count as "not below" (conservative): 4.0 has 4 below it
    assert cd.statistic(np.array([4.0])) == pytest.approx(0.16)


def test_power_one_is_the_mann_whitney_statistic():
    """With power=1 the statistic is the Mann-Whitney U of batch vs reference, rescaled."""
    rng = np.random.default_rng(0)
    ref, x = rng.normal(size=300), rng.normal(0.3, size=40)
    cd = TailRankDrift(ref, power=1)
    u = mannwhitneyu(x, ref).statistic
    assert cd.statistic(x) == pytest.approx(u / (len(x) * len(ref)))


def test_null_matches_a_direct_simulation_of_exchangeable_samples():
    """The multinomial-gap simulation gives the same null as drawing reference and batch."""
    m, n, power = 200, 20, 8.0
    cd = TailRankDrift(np.arange(float(m)), power=power, n_null=20000, seed=3)
    fast = cd.null_distribution(n)
    rng = np.random.default_rng(1)
    direct = np.array(
        [
            tail_rank_statistic(np.searchsorted(np.sort(rng.random(m)), rng.random(n)), m, power)
            for _ in range(4000)
        ]
    )
    for q in (0.5, 0.9, 0.95, 0.99):
        assert np.quantile(fast, q) == pytest.approx(np.quantile(direct, q), rel=0.06, abs=2e-3)
    assert not fast.flags.writeable
    assert cd.null_distribution(n) is fast  # cached


@pytest.mark.parametrize("n", [10, 100])
def test_level_holds_over_reference_draws(n):
    """1000 clean batches, each against a fresh reference of skewed scores: the flagged count
    is within binomial error of p_val (the test is distribution-free)."""
    rng = np.random.default_rng(n)
    flags = sum(
        TailRankDrift(rng.exponential(size=500), n_null=5000).predict(rng.exponential(size=n))[
            "data"
        ]["is_drift"]
        for _ in range(1000)
    )
    assert binomtest(flags, 1000, 0.05).pvalue > 0.001, flags


def test_one_sided_and_more_powerful_than_ks_on_tail_contamination():
    """10 % of the batch far in the upper tail: flagged more often than by one-sided KS;
    a batch shifted to smaller values is never flagged."""
    rng = np.random.default_rng(0)
    hits_tail = hits_ks = 0
    for _ in range(200):
        ref = rng.normal(size=1000)
        batch = np.r_[rng.normal(size=90), rng.normal(2.5, 0.5, size=10)]
        hits_tail += TailRankDrift(ref).predict(batch)["data"]["is_drift"]
        hits_ks += KSDrift(ref, alternative="greater").predict(batch)["data"]["is_drift"]
    assert hits_tail > hits_ks + 30, (hits_tail, hits_ks)
    cd = TailRankDrift(rng.normal(size=1000))
    assert cd.predict(rng.normal(-2.0, size=100))["data"]["is_drift"] == 0


def test_same_seed_same_pvalues_and_minimum_pvalue():
    ref = np.random.default_rng(0).normal(size=400)
    x = np.random.default_rng(1).normal(0.2, size=50)
    a = TailRankDrift(ref, seed=5, n_null=3000).score(x)[0]
    b = TailRankDrift(ref, seed=5, n_null=3000).score(x)[0]
    assert a == b
    far = TailRankDrift(ref, n_null=999).score(np.full(50, 100.0))[0][0]
    assert far == pytest.approx(1 / 1000)


# ------------------------------------------------------------------ the KSDrift call contract
def test_prediction_dict_matches_ksdrift():
    rng = np.random.default_rng(0)
    ref, x = rng.normal(size=500), rng.normal(size=60)
    ours = TailRankDrift(ref).predict(x)
    theirs = KSDrift(ref, alternative="greater").predict(x)
    assert set(ours) == set(theirs) == {"meta", "data"}
    assert set(ours["data"]) == set(theirs["data"])
    assert isinstance(ours["data"]["is_drift"], int)
    assert ours["data"]["p_val"].shape == theirs["data"]["p_val"].shape == (1,)
    assert ours["data"]["p_val"].dtype == np.float64
    assert ours["data"]["threshold"] == 0.05
    assert ours["meta"]["name"] == "TailRankDrift" and ours["meta"]["detector_type"] == "drift"
    feature = TailRankDrift(ref).predict(x, drift_type="feature", return_distance=False)
    assert feature["data"]["is_drift"].shape == (1,) and feature["data"]["distance"] is None
    # (n, 1) scores are the same as (n,)
    assert TailRankDrift(ref[:, None]).score(x[:, None])[0] == TailRankDrift(ref).score(x)[0]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"p_val": 1.5}, ValueError, "p_val must be in"),
        ({"p_val": "0.05"}, TypeError, "p_val must be a number"),
        ({"power": 0.5}, ValueError, "power must be a finite number in"),
        ({"power": float("nan")}, ValueError, "power"),
        ({"n_null": 10}, ValueError, "n_null must be an integer >= 100"),
        ({"seed": None}, TypeError, "seed must be a non-negative integer"),
        ({"seed": -1}, ValueError, "seed"),
        ({"preprocess_fn": 3}, TypeError, "preprocess_fn must be callable"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, message):
    with pytest.raises(error, match=message):
        TailRankDrift(np.arange(10.0), **kwargs)


def test_bad_inputs_are_refused_at_the_boundary():
    with pytest.raises(ValueError, match="one score per instance"):
        TailRankDrift(np.zeros((10, 3)))
    cd = TailRankDrift(np.arange(10.0))
    with pytest.raises(ValueError, match="must be finite"):
        cd.predict(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        cd.predict(np.zeros(0))
    with pytest.raises(TypeError, match="preprocessed must be True or False"):
        cd.predict(np.ones(3), preprocessed="yes")
    with pytest.raises(ValueError, match="drift_type"):
        cd.predict(np.ones(3), drift_type="all")


# ------------------------------------------------------------------ with a ModelDistillation
@pytest.fixture(scope="module")
def fitted(digits, digits_teacher):
    import torch

    from distilldetect.backends.torch.models import mlp

    X_train, _, X_test, _ = digits
    torch.manual_seed(1)
    ad = ModelDistillation(distilled_model=mlp((8, 8), 10, (16,)), model=digits_teacher)
    ad.fit(X_train, epochs=2, verbose=False, seed=0)
    return ad, X_test


def test_drift_detector_keyword_keeps_ks_by_default(fitted):
    ad, X = fitted
    assert type(ad.drift_detector(X[:200])) is KSDrift
    assert ad.drift_detector(X[:200]).alternative == "greater"
    cd = ad.drift_detector(X[:200], test="tail_rank", power=4)
    assert type(cd) is TailRankDrift and cd.power == 4
    with pytest.raises(ValueError, match="one-sided"):
        ad.drift_detector(X[:200], test="tail_rank", alternative="two-sided")
    with pytest.raises(ValueError, match="test must be 'ks' or 'tail_rank'"):
        ad.drift_detector(X[:200], test="ad")


def test_precomputed_scores_give_the_same_decision(fitted):
    """predict(scores, preprocessed=True) is predict(batch) when the scores are the batch's."""
    ad, X = fitted
    cd = ad.drift_detector(X[:300], test="tail_rank")
    batch = X[300:360]
    raw = cd.predict(batch)["data"]
    pre = cd.predict(ad.score(batch), preprocessed=True)["data"]
    assert raw["p_val"][0] == pre["p_val"][0] and raw["is_drift"] == pre["is_drift"]
    assert cd.score(ad.score(batch), preprocessed=True)[0] == cd.score(batch)[0]


def test_save_and_load_round_trip(fitted, tmp_path):
    ad, X = fitted
    cd = ad.drift_detector(X[:300], test="tail_rank", p_val=0.01, power=5, seed=7)
    save_detector(cd, tmp_path / "drift")
    config = json.loads((tmp_path / "drift" / "config.json").read_text())
    assert config["detector"]["class"] == "TailRankDrift"
    saved = config["detector"]["config"]
    assert {k: saved[k] for k in ("p_val", "power", "n_null", "seed")} == {
        k: cd.get_config()[k] for k in ("p_val", "power", "n_null", "seed")
    }
    loaded = load_detector(tmp_path / "drift")
    assert type(loaded) is TailRankDrift
    settings = ("p_val", "power", "n_null", "seed", "x_ref_preprocessed", "data_type")
    assert {k: loaded.get_config()[k] for k in settings} == {
        k: cd.get_config()[k] for k in settings
    }
    np.testing.assert_array_equal(loaded.x_ref, cd.x_ref)
    batch = X[300:400]
    assert loaded.predict(batch)["data"]["p_val"][0] == cd.predict(batch)["data"]["p_val"][0]
    md, drift = detector_parts(loaded)
    assert isinstance(md, ModelDistillation) and drift is loaded
    # without a preprocess_fn: scores only
    plain = TailRankDrift(ad.score(X[:300]))
    save_detector(plain, tmp_path / "plain")
    again = load_detector(tmp_path / "plain")
    assert (
        again.preprocess_fn is None
        and again.score(ad.score(batch))[0] == plain.score(ad.score(batch))[0]
    )


def test_edited_settings_are_refused_on_load(fitted, tmp_path):
    from distilldetect.files import manifest_checksum

    ad, X = fitted
    save_detector(TailRankDrift(ad.score(X[:100])), tmp_path / "d")
    path = tmp_path / "d" / "config.json"
    config = json.loads(path.read_text())
    config["detector"]["config"]["power"] = -2
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="edited or damaged"):  # not resealed: refused
        load_detector(tmp_path / "d")
    config["checksum"] = manifest_checksum(config)  # resealed: the constructor refuses it
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="settings are invalid.*power"):
        load_detector(tmp_path / "d")
    config["detector"]["config"]["power"] = 8.0
    config["detector"]["config"]["bogus"] = 1
    config["checksum"] = manifest_checksum(config)
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown keys"):
        load_detector(tmp_path / "d")


def test_from_config_goes_through_init():
    cd = TailRankDrift(np.arange(20.0), p_val=0.1, power=3, n_null=500, seed=2)
    again = TailRankDrift.from_config(cd.get_config())
    config = again.get_config()
    assert np.array_equal(config.pop("x_ref"), cd.x_ref)
    assert config == {k: v for k, v in cd.get_config().items() if k != "x_ref"}
    with pytest.raises(ValueError, match="p_val"):
        TailRankDrift.from_config({**cd.get_config(), "p_val": 2.0})
    with pytest.raises(TypeError, match="config must be a dict"):
        TailRankDrift.from_config([])
