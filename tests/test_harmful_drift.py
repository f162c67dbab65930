"""Harmful drift on real data: the one-sided KS test on distillation scores.

Fashion-MNIST (gzipped IDX files, parsed here), a small torch MLP teacher (~83 % test accuracy),
a smaller MLP student distilled on unlabelled training images, and Gaussian pixel noise as the
corruption. Corrupted test images are *harmful* when the teacher is right on the clean image and
wrong on the corrupted one, *harmless* when it is right on both. Test batches of 100 scores mix
clean held-out images with a fraction of corrupted ones; the reference is the scores of 1000
other clean held-out images (never seen by either model).

Every rate is measured over ``N_SPLITS`` random reference/pool splits of the test set with
``N_BATCHES`` batches each: with a fixed reference of 1000 the false-positive rate *given that
reference* varies a lot (for the one-sided test at 0.05 over 200 random references: mean 0.048,
standard deviation 0.027, 5th-95th percentiles 0.01-0.10; the KS test is distribution-free, so
this holds for any continuous scores), so a single split would test the luck of one reference.

Findings (numbers in the tests): the one-sided test (``ad.drift_detector``'s default) detects
harmful contamination at lower fractions than the two-sided one, and clean batches respect
p_val. With alibi's settings (KL, T=1, a plain student) harmless contamination is flagged far
less often than harmful contamination, but *more* often than p_val once it is large:
corruption raises the scores of instances the teacher still gets right, too (the xfail test).
With the study's recipe (cross-entropy, T=0.5, an AugMix-trained student) harmless
contamination stays at p_val even at 100 % of the batch and harmful contamination is detected
earlier. Measured one-sided rates over the same 1000 batches per level:

================  ===========================  ====================  =====
settings          harmless 10 / 20 / 30 / 100 %  harmful 10 / 20 / 30 %  clean
================  ===========================  ====================  =====
KL, T=1           0.061 / 0.079 / 0.124 / 0.428  0.263 / 0.601 / 0.899  0.045
recipe            0.043 / 0.034 / 0.025 / 0.020  0.376 / 0.911 / 1.000  0.049
================  ===========================  ====================  =====
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from distilldetect import ModelDistillation
from distilldetect.cd import KSDrift

torch = pytest.importorskip("torch")

# ~10-25 s on 2 cores: training two small MLPs and ~25,000 KS tests.
pytestmark = pytest.mark.slow

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}

P_VAL = 0.05
BATCH = 100
N_REF = 1000
N_SPLITS = 40
N_BATCHES = 25  # per split: N_SPLITS * N_BATCHES = 1000 batches per rate
NOISE_SIGMA = 0.2
HARMFUL_FRACTIONS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40)
HARMLESS_FRACTIONS = (0.10, 0.20, 0.30)
HIGH_POWER = 0.8
# Standard deviation of the one-sided test's false-positive rate over random references of
# 1000 against batches of 100 (measured 0.027 over 200 references; rounded up).
SD_REFERENCE = 0.03


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (big-endian header: magic with the number of axes, then sizes)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fpr_bound(n_splits: int, n_batches: int) -> float:
    """Upper bound of a false-positive rate measured over ``n_splits`` x ``n_batches`` batches.

    Three standard deviations above ``P_VAL``: the variance of the mean over splits is the
    spread of the per-reference rate over ``n_splits`` plus binomial noise over all batches.
    """
    var = SD_REFERENCE**2 / n_splits + P_VAL * (1 - P_VAL) / (n_splits * n_batches)
    return P_VAL + 3 * float(np.sqrt(var))


def mlp(hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(28 * 28, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
        torch.nn.Softmax(dim=-1),
    )


def train_teacher(X: np.ndarray, y: np.ndarray, epochs: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = mlp(256)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(Xt), generator=g)
        for i in range(0, len(Xt), 128):
            idx = perm[i : i + 128]
            log_p = torch.log(model(Xt[idx]).clamp_min(1e-7))
            loss = torch.nn.functional.nll_loss(log_p, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def predict_labels(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(X)).argmax(dim=1).numpy()


def gaussian_noise(X: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=X.shape).astype(np.float32)
    return np.clip(X + noise, 0.0, 1.0)


@pytest.fixture(scope="module")
def study():
    """Trained teacher and student, clean and corrupted test images, their scores and labels."""
    if not all((DATA_DIR / f).is_file() for f in FILES.values()):
        pytest.skip(f"Fashion-MNIST IDX files not found in {DATA_DIR}")
    data = {k: read_idx(DATA_DIR / f) for k, f in FILES.items()}
    x_train = data["x_train"][:20000].astype(np.float32) / 255
    y_train = data["y_train"][:20000].astype(np.int64)
    x_test = data["x_test"].astype(np.float32) / 255
    y_test = data["y_test"].astype(np.int64)

    # One thread: as fast for these small MLPs, much faster on a busy machine (no spinning
    # threads), and the results do not depend on the number of cores.
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher = train_teacher(x_train[:10000], y_train[:10000])
        torch.manual_seed(1)
        ad = ModelDistillation(distilled_model=mlp(32), model=teacher)
        ad.fit(x_train[10000:], epochs=5, verbose=False, seed=0)  # labels unused

        x_corrupt = gaussian_noise(x_test, NOISE_SIGMA, seed=1)
        right_clean = predict_labels(teacher, x_test) == y_test
        right_corrupt = predict_labels(teacher, x_corrupt) == y_test
        s_clean, s_corrupt = ad.score(x_test), ad.score(x_corrupt)
    finally:
        torch.set_num_threads(n_threads)
    return {
        "ad": ad,
        "x_test": x_test,
        "x_corrupt": x_corrupt,
        "s_clean": s_clean,
        "s_corrupt": s_corrupt,
        "accuracy": float(right_clean.mean()),
        "harmful": right_clean & ~right_corrupt,
        "harmless": right_clean & right_corrupt,
    }


def splits(n: int, seed: int):
    """``N_SPLITS`` random (reference, pool) splits of ``range(n)`` and a batch generator."""
    rng = np.random.default_rng(seed)
    for _ in range(N_SPLITS):
        perm = rng.permutation(n)
        yield perm[:N_REF], perm[N_REF:], rng


def detection_flags(study, kind: str | None, fractions, alternatives, seed: int = 0):
    """Flags ``{alternative: int array (len(fractions), N_SPLITS * N_BATCHES)}``; same batches
    for every alternative (paired). ``kind`` is 'harmful', 'harmless' or None (clean only)."""
    s_clean, s_corrupt = study["s_clean"], study["s_corrupt"]
    flags = {
        alt: np.zeros((len(fractions), N_SPLITS * N_BATCHES), dtype=int) for alt in alternatives
    }
    for j, (ref, pool, rng) in enumerate(splits(len(s_clean), seed)):
        detectors = {
            alt: KSDrift(s_clean[ref], p_val=P_VAL, alternative=alt) for alt in alternatives
        }
        source = pool[study[kind][pool]] if kind is not None else pool[:0]
        for i, fraction in enumerate(fractions):
            k = round(fraction * BATCH)
            for b in range(N_BATCHES):
                batch = np.concatenate(
                    [
                        s_clean[rng.choice(pool, BATCH - k, replace=False)],
                        s_corrupt[rng.choice(source, k, replace=False)],
                    ]
                )
                for alt, cd in detectors.items():
                    flags[alt][i, j * N_BATCHES + b] = cd.predict(batch)["data"]["is_drift"]
    return flags


def power_crossing(fractions, rates, level: float) -> float:
    """The contamination at which the detection rate first reaches ``level`` (interpolated)."""
    fractions, rates = np.asarray(fractions), np.asarray(rates)
    above = np.flatnonzero(rates >= level)
    if not above.size:
        return np.inf
    i = above[0]
    if i == 0:
        return float(fractions[0])
    f0, f1, r0, r1 = fractions[i - 1], fractions[i], rates[i - 1], rates[i]
    return float(f0 + (level - r0) * (f1 - f0) / (r1 - r0))


@pytest.fixture(scope="module")
def harmful_rates(study):
    flags = detection_flags(study, "harmful", HARMFUL_FRACTIONS, ("greater", "two-sided"))
    return flags


def test_setup_is_meaningful(study):
    assert study["accuracy"] > 0.8
    n_harmful, n_harmless = study["harmful"].sum(), study["harmless"].sum()
    assert n_harmful > 500 and n_harmless > 5000
    # harm shows as larger scores: most harmful corrupted instances score above the clean median
    median_clean = np.median(study["s_clean"])
    assert np.mean(study["s_corrupt"][study["harmful"]] > median_clean) > 0.8


def test_recipe_is_the_one_sided_test_on_scores(study):
    """``ad.drift_detector(x_ref)`` is KSDrift(alternative='greater') on the detector's scores."""
    ad, x_test, x_corrupt = study["ad"], study["x_test"], study["x_corrupt"]
    ref, pool, rng = next(splits(len(x_test), seed=0))
    cd = ad.drift_detector(x_test[ref], p_val=P_VAL)
    assert cd.alternative == "greater"
    assert cd.n_features == 1
    on_scores = KSDrift(study["s_clean"][ref], p_val=P_VAL, alternative="greater")
    harmful = pool[study["harmful"][pool]]
    clean_idx, bad_idx = rng.choice(pool, 70, replace=False), rng.choice(harmful, 30, replace=False)
    x_batch = np.concatenate([x_test[clean_idx], x_corrupt[bad_idx]])
    s_batch = np.concatenate([study["s_clean"][clean_idx], study["s_corrupt"][bad_idx]])
    images, scores = cd.predict(x_batch)["data"], on_scores.predict(s_batch)["data"]
    assert images["p_val"][0] == pytest.approx(scores["p_val"][0], rel=1e-6)
    assert images["is_drift"] == scores["is_drift"] == 1  # 30 % harmful contamination


def test_one_sided_detects_harmful_drift_at_lower_contamination(harmful_rates):
    one, two = harmful_rates["greater"], harmful_rates["two-sided"]
    rate_one, rate_two = one.mean(axis=1), two.mean(axis=1)
    table = dict(
        zip(HARMFUL_FRACTIONS, zip(rate_one.round(3), rate_two.round(3), strict=True), strict=True)
    )
    # paired batches: the one-sided test is at least as powerful at every contamination...
    assert np.all(rate_one >= rate_two), table
    # ... and strictly more at 10 %: exact McNemar test on the discordant batches
    i = HARMFUL_FRACTIONS.index(0.10)
    only_one = int(np.sum((one[i] == 1) & (two[i] == 0)))
    only_two = int(np.sum((one[i] == 0) & (two[i] == 1)))
    assert rate_one[i] > rate_two[i], table
    assert binomtest(only_two, only_one + only_two, 0.5, alternative="less").pvalue < 1e-3, (
        only_one,
        only_two,
        table,
    )
    # it reaches high power at a lower contamination
    f_one = power_crossing(HARMFUL_FRACTIONS, rate_one, HIGH_POWER)
    f_two = power_crossing(HARMFUL_FRACTIONS, rate_two, HIGH_POWER)
    assert f_one < f_two, (f_one, f_two, table)
    assert f_one <= 0.35, table


def test_clean_batches_respect_p_val(study):
    flags = detection_flags(study, None, (0.0,), ("greater", "two-sided"), seed=1)
    bound = fpr_bound(N_SPLITS, N_BATCHES)
    for alt, f in flags.items():
        assert f.mean() <= bound, (alt, f.mean(), bound)


@pytest.fixture(scope="module")
def harmless_rates(study):
    flags = detection_flags(study, "harmless", (*HARMLESS_FRACTIONS, 1.0), ("greater",), seed=2)
    return flags["greater"].mean(axis=1)


def test_harmless_contamination_is_flagged_far_less_than_harmful(harmless_rates, harmful_rates):
    """The one-sided test is specific to harm: at every shared contamination, harmless corrupted
    instances (the teacher stays right) are flagged far less often than harmful ones."""
    harmful_one = harmful_rates["greater"].mean(axis=1)
    for fraction, rate in zip(HARMLESS_FRACTIONS, harmless_rates[:-1], strict=True):
        harmful = harmful_one[HARMFUL_FRACTIONS.index(fraction)]
        assert rate < harmful / 2, (fraction, rate, harmful)
    # batches of harmless corrupted images only: flagged in well under half of the cases
    # (measured 0.42), whereas 30 % harmful contamination is detected in > 80 %
    assert harmless_rates[-1] < 0.6, harmless_rates


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known limitation of alibi's settings (KL, T=1, plain student), measured: harmless "
        "corrupted instances shift the distillation scores up too, so the one-sided test at "
        "p_val=0.05 flags 6.1/7.9/12.4 % of batches with 10/20/30 % harmless contamination "
        "(clean batches: 4.5 %), above the bound of 7.5 %; the study's recipe passes "
        "(test_robust_recipe_keeps_harmless_contamination_at_p_val)"
    ),
)
def test_harmless_contamination_respects_p_val(harmless_rates):
    """Wanted: harmless contamination is not flagged more often than p_val. Not met (see xfail);
    kept strict so that a detector that achieves it makes this test fail loudly."""
    bound = fpr_bound(N_SPLITS, N_BATCHES)
    for fraction, rate in zip(HARMLESS_FRACTIONS, harmless_rates[:-1], strict=True):
        assert rate <= bound, (fraction, rate, bound)


# ----------------------------------------------------------------------- the robust recipe
@pytest.fixture(scope="module")
def robust_study(study):
    """The same teacher and data, with the study's recipe for the student: cross-entropy,
    T=0.5 and AugMix-style augmentation of the student's inputs (teacher targets stay those of
    the clean images)."""
    from distilldetect.augment import make_augment_fn

    data = {k: read_idx(DATA_DIR / f) for k, f in FILES.items()}
    x_train = data["x_train"][10000:20000].astype(np.float32) / 255
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(1)
        ad = ModelDistillation(
            distilled_model=mlp(32), model=study["ad"].model, loss_type="xent", temperature=0.5
        )
        ad.fit(x_train, epochs=5, verbose=False, seed=0, augment_fn=make_augment_fn())
        s_clean, s_corrupt = ad.score(study["x_test"]), ad.score(study["x_corrupt"])
    finally:
        torch.set_num_threads(n_threads)
    return {**study, "ad": ad, "s_clean": s_clean, "s_corrupt": s_corrupt}


def test_robust_recipe_keeps_harmless_contamination_at_p_val(robust_study):
    """With the robust recipe, harmless contamination is flagged no more often than p_val
    (within the bound that accounts for the reference's own variability), while harmful
    contamination is still detected."""
    harmless = detection_flags(robust_study, "harmless", (*HARMLESS_FRACTIONS, 1.0), ("greater",))
    rates = harmless["greater"].mean(axis=1)
    bound = fpr_bound(N_SPLITS, N_BATCHES)
    for fraction, rate in zip((*HARMLESS_FRACTIONS, 1.0), rates, strict=True):
        assert rate <= bound, (fraction, rate, bound)
    harmful = detection_flags(robust_study, "harmful", (0.2, 0.3), ("greater",))["greater"]
    assert harmful[0].mean() > 0.8 and harmful[1].mean() > 0.95, harmful.mean(axis=1)


@pytest.mark.parametrize("alternative", ["two-sided", "greater"])
@pytest.mark.parametrize(
    "m, n, ties", [(1000, 100, False), (50, 50, True), (30, 80, True), (1000, 10, False)]
)
def test_study_ks_on_many_batches_is_ksdrifts(alternative, m, n, ties):
    """The study's vectorised KS (stages._ks_batches) gives KSDrift's p-values, ties included."""
    from distilldetect.experiments.stages import _ks_batches

    rng = np.random.default_rng(m + n)
    ref = rng.normal(size=m)
    batches = rng.normal(loc=0.3, size=(25, n))
    if ties:
        ref, batches = np.round(ref, 1), np.round(batches, 1)
    cd = KSDrift(ref, p_val=P_VAL, alternative=alternative)
    expected = np.array([cd.score(b)[0][0] for b in batches])
    np.testing.assert_array_equal(_ks_batches(ref, batches, alternative), expected)
