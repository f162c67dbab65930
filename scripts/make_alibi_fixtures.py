"""Write tests/fixtures/alibi/: small detectors saved by alibi-detect 0.13.0 itself, and its scores.

Run ONCE, with the reference venv (alibi-detect 0.13.0 on TensorFlow 2.18 with tf-keras; ``make
bench-reference`` builds it)::

    .venv-reference/bin/python scripts/make_alibi_fixtures.py

The tests (``tests/test_alibi_import.py``) read what this writes and never need alibi-detect.
Everything is small (scikit-learn's 8x8 digits, tiny Keras models) and seeded; the files are not
byte-reproducible (HDF5 and TOML carry no timestamps, but TensorFlow's kernels and dill's output
may differ across versions), which is why they are committed.

What is written (all with alibi-detect's own ``save_detector``, default arguments):

* ``md_kld/``, ``md_xent/``: ModelDistillation in alibi's legacy layout (``meta.dill``,
  ``ModelDistillation.dill``, ``model/model.h5``, ``model/distilled_model.h5``); kld with
  temperature 2 and a threshold from ``infer_threshold`` (a numpy float64), xent with
  temperature 0.5 and a threshold set by hand (a Python float), data_type 'image' / None.
* ``md_lambda/``: the same with a teacher holding a Lambda layer whose code would create the file
  ``MARKER`` if it were ever run by a loader.
* ``ks_plain/``, ``ks_options/``: KSDrift in alibi's config format (``config.toml`` +
  ``x_ref.npy``) on 3 features; the second with p_val 0.1, alternative 'greater', correction
  'fdr' and update_x_ref {'last': 150}.
* ``ks_score/``: KSDrift with ``preprocess_fn=partial(md_kld.score, batch_size=128)`` (the
  harmful-drift recipe of alibi's docs): alibi pickles the bound method, the whole detector and
  its models into ``preprocess_fn/function.dill``.
* ``ks_model/``: KSDrift with alibi's registered ``preprocess_drift`` and a Keras model
  (``preprocess_fn/model/model.h5``), batch_size 32.
* ``ks_function/``: KSDrift with a Python function as preprocess_fn (pickled by value by dill;
  its code would create ``MARKER``).
* ``inputs.npz``: the inputs (``x``: 64 clean test digits, then the same with noise; the drift
  batches are ``x[64:]`` (noisy) and ``x[:64]`` (clean)); ``expected.npz`` / ``expected.json``: alibi-detect's outputs on
  them (scores, predictions, p-values, distances) and the settings its ``load_detector`` reads
  back.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "alibi"
#: A file the hostile code in md_lambda / ks_function would create when run.
MARKER = "/tmp/distilldetect-alibi-fixture-marker"


def preprocess_with_side_effect(x):
    """A preprocess_fn that a loader would have to run as code (it leaves a marker file)."""
    open("/tmp/distilldetect-alibi-fixture-marker", "a").close()
    return x.reshape(len(x), -1)[:, :3]


def main() -> int:
    import alibi_detect
    import tensorflow as tf
    from alibi_detect.ad import ModelDistillation
    from alibi_detect.cd import KSDrift
    from alibi_detect.cd.tensorflow import preprocess_drift
    from alibi_detect.saving import load_detector, save_detector
    from sklearn.datasets import load_digits

    if alibi_detect.__version__ != "0.13.0":
        print(f"expected alibi-detect 0.13.0, got {alibi_detect.__version__}", file=sys.stderr)
        return 2
    keras = tf.keras
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    X_train, y_train, X_test = X[:1200], y[:1200], X[1200:]
    rng = np.random.default_rng(1)
    X_noisy = np.clip(X_test[:64] + rng.normal(0, 0.4, (64, 8, 8)), 0, 1).astype(np.float32)
    x_inputs = np.concatenate([X_test[:64], X_noisy])  # 128 instances: clean then noisy

    def teacher_net(lambda_layer: bool = False):
        inp = keras.Input((8, 8))
        x = inp
        if lambda_layer:
            x = keras.layers.Lambda(
                lambda t: (open("/tmp/distilldetect-alibi-fixture-marker", "a").close(), t * 2.0)[1]
            )(x)
        x = keras.layers.Reshape((8, 8, 1))(x)
        x = keras.layers.Conv2D(4, 3, activation="relu")(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(16, activation="relu")(x)
        out = keras.layers.Dense(10, activation=tf.nn.softmax)(x)
        return keras.Model(inp, out)

    def student_net():
        inp = keras.Input((8, 8))
        x = keras.layers.Flatten()(inp)
        x = keras.layers.Dense(12, activation="relu")(x)
        out = keras.layers.Dense(10, activation=tf.nn.softmax)(x)
        return keras.Model(inp, out)

    def trained_teacher(lambda_layer: bool = False):
        tf.keras.utils.set_random_seed(0)
        model = teacher_net(lambda_layer)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
        model.fit(X_train, y_train, epochs=15, batch_size=64, verbose=0)
        bare = keras.models.clone_model(model)  # the same network without optimizer state
        bare.set_weights(model.get_weights())
        return bare

    expected: dict[str, np.ndarray] = {}
    settings: dict[str, dict] = {}

    def distil(name, teacher, loss_type, temperature, threshold, data_type):
        tf.keras.utils.set_random_seed(1)
        ad = ModelDistillation(
            distilled_model=student_net(),
            model=teacher,
            loss_type=loss_type,
            temperature=temperature,
            data_type=data_type,
        )
        ad.fit(X_train, epochs=3, batch_size=64, verbose=False)
        if threshold is None:
            ad.infer_threshold(X_test[64:], threshold_perc=95, batch_size=256)
        else:
            ad.threshold = threshold
        save_detector(ad, OUT / name)
        expected[f"{name}/score"] = ad.score(x_inputs, batch_size=256)
        pred = ad.predict(x_inputs, batch_size=256)
        expected[f"{name}/is_adversarial"] = pred["data"]["is_adversarial"]
        if name == "md_kld":
            expected[f"{name}/teacher_probs"] = ad.model(x_inputs).numpy()
            expected[f"{name}/student_probs"] = ad.distilled_model(x_inputs).numpy()
        back = load_detector(OUT / name)  # what alibi itself reads back
        settings[name] = {
            "threshold": float(back.threshold),
            "threshold_type": type(ad.threshold).__name__,
            "temperature": back.temperature,
            "loss_type": back.loss_type,
            "meta": back.meta,
        }
        return ad

    teacher = trained_teacher()
    md_kld = distil("md_kld", teacher, "kld", 2.0, None, "image")
    distil("md_xent", teacher, "xent", 0.5, 0.25, None)
    distil("md_lambda", trained_teacher(lambda_layer=True), "kld", 1.0, 0.1, None)

    # --------------------------------------------------------------- KSDrift, config format
    feat_ref = rng.normal(size=(200, 3)).astype(np.float32)
    feat_test = (rng.normal(size=(100, 3)) + [0.0, 0.3, 0.6]).astype(np.float32)
    feat_test2 = (rng.normal(size=(80, 3)) + [0.5, 0.0, 0.0]).astype(np.float32)

    def drift(name, cd, batches):
        save_detector(cd, OUT / name)
        for i, batch in enumerate(batches):
            pred = cd.predict(batch, drift_type="batch", return_p_val=True, return_distance=True)
            expected[f"{name}/p_val/{i}"] = np.asarray(pred["data"]["p_val"])
            expected[f"{name}/distance/{i}"] = np.asarray(pred["data"]["distance"])
            expected[f"{name}/is_drift/{i}"] = np.asarray(pred["data"]["is_drift"])
            expected[f"{name}/threshold/{i}"] = np.asarray(pred["data"]["threshold"])
        settings[name] = {"config": (OUT / name / "config.toml").read_text()}

    drift("ks_plain", KSDrift(feat_ref, p_val=0.05), [feat_test])
    drift(
        "ks_options",
        KSDrift(
            feat_ref,
            p_val=0.1,
            alternative="greater",
            correction="fdr",
            update_x_ref={"last": 150},
        ),
        [feat_test, feat_test2],
    )
    x_ref_digits = X_test[64:124]
    drift(
        "ks_score",
        KSDrift(x_ref_digits, p_val=0.05, preprocess_fn=partial(md_kld.score, batch_size=128)),
        [X_noisy, X_test[:64]],
    )
    drift(
        "ks_model",
        KSDrift(
            x_ref_digits,
            p_val=0.05,
            preprocess_fn=partial(preprocess_drift, model=md_kld.distilled_model, batch_size=32),
        ),
        [X_noisy],
    )
    drift(
        "ks_function",
        KSDrift(x_ref_digits, p_val=0.05, preprocess_fn=preprocess_with_side_effect),
        [X_noisy],
    )

    np.savez_compressed(
        OUT / "inputs.npz",
        x=x_inputs,
        feat_ref=feat_ref,
        feat_test=feat_test,
        feat_test2=feat_test2,
        x_ref_digits=x_ref_digits,
    )
    np.savez_compressed(OUT / "expected.npz", **expected)
    info = {
        "made_by": "scripts/make_alibi_fixtures.py",
        "alibi_detect": alibi_detect.__version__,
        "tensorflow": tf.__version__,
        "tf_keras": __import__("tf_keras").__version__,
        "numpy": np.__version__,
        "dill": __import__("dill").__version__,
        "marker": MARKER,
        "settings": settings,
    }
    (OUT / "expected.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    if os.path.exists(MARKER):  # fit/predict ran the hostile code here, in alibi: not a test
        os.unlink(MARKER)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(OUT)}  {p.stat().st_size} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
