# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Model distillation as a harmful-drift detector: Fashion-MNIST
#
# This tutorial follows alibi-detect's CIFAR-10 model-distillation example step by step, on
# Fashion-MNIST and with distilldetect:
#
# 1. load the data,
# 2. load the classifier to protect (the *teacher*),
# 3. define and fit the distilled model (the *student*) — or load the pretrained detector,
# 4. score clean and corrupted images at increasing severity, and compare with the
#    teacher's accuracy,
# 5. detect drift on batches of *harmful* and *harmless* instances,
# 6. save and load the detector.
#
# By default it uses the detector shipped with the package (`distilldetect.fetching.pretrained()`:
# teacher and student trained on all 60 000 training images), so it runs in well under a minute
# on two CPU cores. Set the environment variable `DISTILLDETECT_TUTORIAL_TRAIN=1` to train a
# teacher and a student here instead (3 min 24 s in one run on a shared 2-core machine). The
# script is a [Jupytext](https://jupytext.readthedocs.io) percent-format file: run it with
# `python docs/tutorial/fashion_mnist.py`, or open it as a notebook with
# `jupytext --to notebook docs/tutorial/fashion_mnist.py`.

# %%
import os
import tempfile
import time

import numpy as np

from distilldetect import ModelDistillation, load_detector, save_detector, scale_by_instance
from distilldetect.corruptions import corrupt
from distilldetect.datasets import load_fashion_mnist

TRAIN = os.environ.get("DISTILLDETECT_TUTORIAL_TRAIN", "0") == "1"  # False: pretrained detector
SEED = 0
started = time.perf_counter()

# %% [markdown]
# ## Load the data
#
# `load_fashion_mnist` returns uint8 images `(n, 28, 28)` and labels, like keras'
# `load_data()`; it reads the Debian package's copy in `/usr/share/datasets/fashion-mnist/`
# when it is there and downloads (checksummed) otherwise. The models take images scaled to
# [0, 1] and standardised per instance, as in the reference example.

# %%
(x_train, y_train), (x_test, y_test) = load_fashion_mnist(verbose=False)


def prep(images):
    """uint8 images -> float32, scaled to [0, 1], then standardised per instance."""
    return scale_by_instance(images.astype("float32") / 255)


print("train:", x_train.shape, x_train.dtype, " test:", x_test.shape)

# Parts of the test set: images 0-999 are the drift detector's clean reference; 1000-4999 set
# the threshold when training here (the pretrained detector's came from 0-4999); 5000-6999
# are corrupted below.
X_ref = prep(x_test[:1000])
x_eval, y_eval = x_test[5000:7000], y_test[5000:7000]
X_eval = prep(x_eval)

# %% [markdown]
# ## Load the classifier and the detector
#
# The reference example fetches a pretrained ResNet-32 and, optionally, a pretrained detector.
# Here the shipped Fashion-MNIST detector holds both: its `model` is the teacher (a CNN,
# 91 % test accuracy) and its `distilled_model` the student (16 k parameters, trained with
# cross-entropy, temperature 0.5 and AugMix augmentations of the student's inputs: the
# harmful-drift study's recipe).
#
# With `TRAIN`, a teacher is trained on 20 000 images and a student is distilled from it:
# `ModelDistillation.fit` needs no labels, only the teacher's outputs on the data.

# %%
if not TRAIN:
    from distilldetect.fetching import pretrained

    ad = pretrained("fashion_mnist")
else:
    from distilldetect.augment import make_augment_fn
    from distilldetect.models import build_model, train_classifier

    X_train = prep(x_train[:20000])
    teacher = build_model("cnn_classifier", input_shape=(28, 28))
    train_classifier(teacher, X_train, y_train[:20000], epochs=3, seed=SEED, verbose=False)

    # the student: the reference's distilled model, smaller (32 first-layer filters)
    student = build_model("distilled_model_cifar10", input_shape=(28, 28), nb_filters1=32)
    ad = ModelDistillation(
        distilled_model=student, model=teacher, loss_type="xent", temperature=0.5
    )
    ad.fit(X_train, epochs=3, seed=SEED, augment_fn=make_augment_fn(), verbose=False)
    ad.infer_threshold(prep(x_test[1000:5000]), threshold_perc=95)

print(ad.meta["name"], "loss:", ad.loss_type, "temperature:", ad.temperature)
print(f"threshold: {ad.threshold:.3f}")

# %% [markdown]
# `score(X, return_predictions=True)` returns the scores and both models' probabilities, so the
# teacher's accuracy comes from the same forward pass as the scores.

# %%
clean_scores, p_clean, q_clean = ad.score(X_eval, return_predictions=True)
clean_right = p_clean.argmax(1) == y_eval
print(f"teacher accuracy on clean images: {clean_right.mean():.3f}")
print(f"student agrees with the teacher on {(q_clean.argmax(1) == p_clean.argmax(1)).mean():.3f}")
print(f"clean images flagged: {ad.predict(X_eval)['data']['is_adversarial'].mean():.3f}")

# %% [markdown]
# ## Harmfulness scores on corrupted data
#
# The reference example scores CIFAR-10-C. `distilldetect.corruptions.corrupt` applies the
# same 19 corruptions at severities 1-5 to any image batch (spatial parameters scaled to the
# image size). Below, four of them, one per family: as the severity grows, the teacher's
# accuracy falls and the mean harmfulness score rises.

# %%
CORRUPTIONS = ["gaussian_noise", "motion_blur", "fog", "contrast"]
SEVERITIES = [1, 2, 3, 4, 5]

results = {}  # severity -> arrays over all corruptions
for severity in SEVERITIES:
    scores, right = [], []
    for i, name in enumerate(CORRUPTIONS):
        x_c = corrupt(x_eval, name, severity=severity, seed=SEED + i)  # uint8, like x_eval
        s, p, _ = ad.score(prep(x_c), return_predictions=True)
        scores.append(s)
        right.append(p.argmax(1) == y_eval)
        results[(name, severity)] = x_c
    scores, right = np.concatenate(scores), np.concatenate(right)
    results[severity] = {"scores": scores, "right": right}

print("severity  teacher acc.  mean score  median score  flagged")
print(
    f"clean     {clean_right.mean():12.3f}  {clean_scores.mean():10.3f}"
    f"  {np.median(clean_scores):12.3f}  {(clean_scores > ad.threshold).mean():7.3f}"
)
for severity in SEVERITIES:
    r = results[severity]
    print(
        f"{severity:<8}  {r['right'].mean():12.3f}  {r['scores'].mean():10.3f}"
        f"  {np.median(r['scores']):12.3f}  {(r['scores'] > ad.threshold).mean():7.3f}"
    )

mean_score = {s: float(results[s]["scores"].mean()) for s in SEVERITIES}
mean_score["clean"] = float(clean_scores.mean())

# %% [markdown]
# One run with the pretrained detector (`python docs/tutorial/fashion_mnist.py` on a shared
# 2-core machine; the numbers depend only on the seeds, up to float rounding) printed:
#
# ```text
# severity  teacher acc.  mean score  median score  flagged
# clean            0.906       0.222         0.007    0.051
# 1                0.901       0.239         0.008    0.056
# 2                0.895       0.270         0.012    0.067
# 3                0.883       0.312         0.021    0.078
# 4                0.876       0.355         0.027    0.092
# 5                0.849       0.490         0.058    0.132
# ```

# %% [markdown]
# ### Harmful and harmless instances
#
# A corrupted image is *harmful* when the teacher classified the clean image correctly and the
# corrupted one wrongly, *harmless* when it is right on both. The score separates them: the
# AUROC is the probability that a random harmful instance scores above a random harmless one.

# %%
from distilldetect.metrics import auroc  # noqa: E402

tiled_clean_right = np.tile(clean_right, len(CORRUPTIONS))
pools = {}
print("severity  harmful  harmless  mean score harmful / harmless  AUROC")
for severity in SEVERITIES:
    r = results[severity]
    harmful = tiled_clean_right & ~r["right"]
    harmless = tiled_clean_right & r["right"]
    pools[severity] = (np.flatnonzero(harmful), np.flatnonzero(harmless))
    auc = auroc(r["scores"][harmful], r["scores"][harmless])
    print(
        f"{severity:<8}  {harmful.sum():7d}  {harmless.sum():8d}"
        f"  {r['scores'][harmful].mean():14.3f} / {r['scores'][harmless].mean():.3f}"
        f"  {auc:5.3f}"
    )

# %% [markdown]
# The same run:
#
# ```text
# severity  harmful  harmless  mean score harmful / harmless  AUROC
# 1             101      7151           1.215 / 0.163  0.948
# 2             181      7071           1.313 / 0.178  0.942
# 3             296      6956           1.408 / 0.200  0.935
# 4             369      6883           1.603 / 0.224  0.930
# 5             601      6651           1.797 / 0.310  0.907
# ```
#
# In a notebook, a figure of the scores by severity (needs matplotlib:
# `pip install 'distilldetect[study]'`):

# %%
try:
    from matplotlib.figure import Figure
except ImportError:  # matplotlib is optional
    Figure = None

if Figure is not None:
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.boxplot(
        [clean_scores] + [results[s]["scores"] for s in SEVERITIES],
        showfliers=False,
    )
    ax.set_xticks(range(1, len(SEVERITIES) + 2), ["clean", *map(str, SEVERITIES)])
    ax.set_xlabel("severity")
    ax.set_ylabel("harmfulness score")
    ax2 = ax.twinx()
    ax2.plot(
        range(1, len(SEVERITIES) + 2),
        [clean_right.mean()] + [results[s]["right"].mean() for s in SEVERITIES],
        "o-",
        color="tab:red",
    )
    ax2.set_ylabel("teacher accuracy", color="tab:red")
    fig.tight_layout()
    fig  # noqa: B018 - shown by Jupyter

# %% [markdown]
# ## Drift detection on harmful and harmless batches
#
# The reference example wraps the scores in a Kolmogorov-Smirnov drift detector,
# `KSDrift(X_ref, preprocess_fn=partial(ad.score, batch_size=128))`.
# `ad.drift_detector(X_ref)` builds the same detector, one-sided (`alternative='greater'`):
# only scores *larger* than the reference can be harmful. The reference images must be clean
# and held out from the student's training data.
#
# Batches of 100 instances are drawn from the harmful and the harmless pools of each severity:
# the detector should flag the harmful batches and stay quiet on the harmless ones, although
# both are drifted (corrupted) data.

# %%
cd = ad.drift_detector(X_ref, p_val=0.05)
rng = np.random.default_rng(SEED)
N_BATCHES, BATCH = 20, 100
MIXES = {"harmful": 1.0, "20% harmful": 0.2, "harmless": 0.0}  # harmful fraction of a batch


def draw_batch(harmful_pool, harmless_pool, fraction):
    """Indices of a batch of BATCH instances, `fraction` of them from the harmful pool.

    A pool smaller than its share of the batch is drawn with replacement (as the study does).
    """
    k = int(round(fraction * BATCH))
    return np.concatenate(
        [
            rng.choice(harmful_pool, k, replace=k > len(harmful_pool)),
            rng.choice(harmless_pool, BATCH - k, replace=BATCH - k > len(harmless_pool)),
        ]
    )


flag_rate = {}
print("severity  " + "  ".join(f"flagged ({kind})" for kind in MIXES))
for severity in SEVERITIES:
    # every corrupted image of this severity, in the order of `results[severity]`
    X_all = prep(np.concatenate([results[(name, severity)] for name in CORRUPTIONS]))
    harmful_pool, harmless_pool = pools[severity]
    flag_rate[severity] = {}
    for kind, fraction in MIXES.items():
        preds = [
            cd.predict(X_all[draw_batch(harmful_pool, harmless_pool, fraction)])
            for _ in range(N_BATCHES)
        ]
        flag_rate[severity][kind] = float(np.mean([pr["data"]["is_drift"] for pr in preds]))
    print(
        f"{severity:<8}  "
        + "  ".join(f"{flag_rate[severity][kind]:{len(kind) + 10}.2f}" for kind in MIXES)
    )

# %% [markdown]
# The same run:
#
# ```text
# severity  flagged (harmful)  flagged (20% harmful)  flagged (harmless)
# 1                      1.00                   0.95                0.00
# 2                      1.00                   0.80                0.00
# 3                      1.00                   0.95                0.05
# 4                      1.00                   1.00                0.20
# 5                      1.00                   1.00                0.50
# ```
#
# Batches made only of harmful instances are flagged every time, and batches with 20 % of
# them in 80-100 % of the draws. Batches of harmless corrupted images are flagged less often:
# never at severities 1-2, but in a fifth to a half of the draws at severities 4-5. Which
# corruptions cause those false alarms? Harmless batches of one corruption at a time, at
# severity 5:

# %%
n_eval = len(x_eval)
harmless_flags = {}
for i, name in enumerate(CORRUPTIONS):
    X_c = prep(results[(name, 5)])
    # harmless images of this corruption: positions i * n_eval .. (i + 1) * n_eval - 1
    pool = pools[5][1]
    pool = pool[(pool >= i * n_eval) & (pool < (i + 1) * n_eval)] - i * n_eval
    draws = [rng.choice(pool, BATCH, replace=BATCH > len(pool)) for _ in range(N_BATCHES)]
    preds = [cd.predict(X_c[rows]) for rows in draws]
    harmless_flags[name] = float(np.mean([pr["data"]["is_drift"] for pr in preds]))
    print(f"{name:15s} harmless batches flagged: {harmless_flags[name]:.2f}")

# %% [markdown]
# One run printed 0.00 for gaussian_noise and contrast and 1.00 for motion_blur and fog. Blur
# and fog lower the teacher's confidence even on images it still classifies correctly, and the
# cross-entropy score (`loss_type='xent'`) includes the teacher's own uncertainty, so harmless
# images of these corruptions score higher than clean ones. The detector reacts to drift that
# costs accuracy far more than to drift as such, but not to it alone. The
# [study](../studies/harmful-drift.md) measures the detection rates at every contamination
# level from 0 to 90 % on all 19 corruptions, mixing the corruptions in each batch.

# %% [markdown]
# ## Save and load
#
# `save_detector` writes a folder of JSON and safetensors files (no pickle); a drift detector
# is saved together with its ModelDistillation, and `load_detector` rebuilds both.

# %%
with tempfile.TemporaryDirectory() as tmp:
    save_detector(cd, os.path.join(tmp, "fashion-drift"))
    cd2 = load_detector(os.path.join(tmp, "fashion-drift"))
batch = X_all[draw_batch(*pools[5], 0.2)]  # severity 5, 20 % harmful
p_before, p_after = cd.predict(batch)["data"]["p_val"], cd2.predict(batch)["data"]["p_val"]
assert np.allclose(p_before, p_after)
print(f"p-value before and after saving: {p_before[0]:.3g} / {p_after[0]:.3g}")
print(f"tutorial ran in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# ## What next
#
# * The whole study — all 19 corruptions, contamination levels from 0 to 90 %, baselines —
#   is one command: `distilldetect experiment` (see [Harmful drift](../studies/harmful-drift.md)).
# * Monitor a model in production with `distilldetect serve` ([Serving](../serving.md)) or score
#   files with `distilldetect score` ([Batch scoring](../batch.md)).
