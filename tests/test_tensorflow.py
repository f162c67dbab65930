"""The TensorFlow / Keras backend: the seed's tf.keras code, parity, mixed pairs, zoo, saving."""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import warnings
import weakref

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
import torch  # noqa: E402

from distilldetect import ModelDistillation, losses  # noqa: E402
from distilldetect.backends import framework_of  # noqa: E402
from distilldetect.backends.tensorflow import io as tfio  # noqa: E402
from distilldetect.backends.tensorflow import models as kzoo  # noqa: E402
from distilldetect.backends.tensorflow import runtime as tfb  # noqa: E402
from distilldetect.backends.torch import models as tzoo  # noqa: E402

pytestmark = pytest.mark.tensorflow

# The seed's own imports and spelling (tf.keras is Keras 3 from TensorFlow 2.16 on).
Dense = tf.keras.layers.Dense
InputLayer = tf.keras.layers.InputLayer


def seed_student(input_dim: int = 64, output_dim: int = 10, seed: int = 1):
    """The seed documents' student: ``Sequential([InputLayer(input_shape=...), Dense(softmax)])``."""
    keras.utils.set_random_seed(seed)
    with warnings.catch_warnings():  # Keras 3 still accepts input_shape=, with a deprecation
        warnings.filterwarnings("ignore", message=".*input_shape.*deprecated")
        return tf.keras.Sequential(
            [InputLayer(input_shape=(input_dim,)), Dense(output_dim, activation=tf.nn.softmax)]
        )


def keras_probs(model, X):
    return model(X, training=False).numpy()


def keras_weights(model):
    return [v.numpy().copy() for v in model.weights]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def expected_alibi_score(p_raw, q, temperature, loss_type="kld"):
    """alibi-detect's ModelDistillation.score, written out in numpy from the models' outputs."""
    p = p_raw.astype(np.float64) ** (1 / temperature)
    p /= p.sum(1, keepdims=True)
    q = q.astype(np.float64)
    if loss_type == "kld":
        pc, qc = np.clip(p, 1e-7, 1), np.clip(q, 1e-7, 1)
        return (pc * np.log(pc / qc)).sum(1)
    qn = np.clip(q / q.sum(1, keepdims=True), 1e-7, 1 - 1e-7)
    return -(p * np.log(qn)).sum(1)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def flat(digits):
    """Digits flattened to (n, 64), as the seed's dense models take them."""
    X_train, y_train, X_test, y_test = digits
    return X_train.reshape(len(X_train), -1), y_train, X_test.reshape(len(X_test), -1), y_test


@pytest.fixture(scope="module")
def keras_teacher(flat):
    """The seed's functional-API classifier, trained with Keras' own fit on digits."""
    X_train, y_train, _, _ = flat
    keras.utils.set_random_seed(0)
    inputs = tf.keras.Input(shape=(64,))
    hidden = Dense(64, activation=tf.nn.relu)(inputs)
    outputs = Dense(10, activation=tf.nn.softmax)(hidden)
    model = tf.keras.Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(X_train, y_train, epochs=25, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def fitted(flat, keras_teacher):
    """The seed's detector, fitted: ModelDistillation(distilled_model=..., model=..., T=0.5)."""
    X_train = flat[0]
    ad = ModelDistillation(distilled_model=seed_student(), model=keras_teacher, temperature=0.5)
    before = ad.score(flat[2]).mean()
    ad.fit(X_train, epochs=20, batch_size=128, verbose=False, seed=0, learning_rate=1e-2)
    ad.score_before_fit = before
    return ad


# ---------------------------------------------------------------------------- detection
def test_keras_models_are_detected(keras_teacher):
    assert tfb.is_model(keras_teacher) and tfb.is_model(seed_student())
    assert framework_of(keras_teacher) == "tensorflow"
    assert framework_of(kzoo.mlp((4,), 2, (3,))) == "tensorflow"
    assert not tfb.is_model(tzoo.mlp((4,), 2, (3,)))
    assert framework_of(lambda x: x) == "callable"
    ad = ModelDistillation(distilled_model=seed_student(), model=keras_teacher)
    assert ad.meta["backend"] == "tensorflow" and ad.meta["teacher_backend"] == "tensorflow"


def test_predict_batch_with_a_keras_model(keras_teacher, flat):
    from distilldetect import predict_batch

    X = flat[2]
    expected = keras_probs(keras_teacher, X)
    np.testing.assert_allclose(predict_batch(X, keras_teacher, batch_size=100), expected, atol=1e-6)


def test_importing_distilldetect_does_not_import_tensorflow():
    code = (
        "import sys, numpy as np, torch, distilldetect\n"
        "from distilldetect.backends.torch.models import mlp\n"
        "ad = distilldetect.ModelDistillation(distilled_model=mlp((4,), 2, (3,)), "
        "model=lambda x: np.full((len(x), 2), 0.5))\n"
        "ad.fit(np.zeros((8, 4), np.float32), epochs=1, verbose=False)\n"
        "ad.score(np.zeros((3, 4), np.float32))\n"
        "bad = [m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------- parity and maths
@pytest.mark.parametrize(("temperature", "loss_type"), [(0.5, "kld"), (1.0, "kld"), (2.0, "xent")])
def test_score_parity_with_alibi_detect(fitted, flat, temperature, loss_type):
    """score == alibi-detect's (Keras kld, both clipped to [1e-7, 1], teacher sharpened) to 1e-5."""
    X_test = flat[2]
    ad = ModelDistillation(
        distilled_model=fitted.distilled_model,
        model=fitted.model,
        temperature=temperature,
        loss_type=loss_type,
    )
    p_raw, q = keras_probs(fitted.model, X_test), keras_probs(fitted.distilled_model, X_test)
    expected = expected_alibi_score(p_raw, q, temperature, loss_type)
    for batch_size in (64, 1000):
        np.testing.assert_allclose(
            ad.score(X_test, batch_size=batch_size), expected, rtol=1e-5, atol=1e-5
        )
    scores, p_out, q_out = ad.score(X_test, return_predictions=True)
    np.testing.assert_allclose(q_out, q, rtol=1e-5, atol=1e-7)
    assert np.ptp(scores) > 0.1  # a non-degenerate check


def test_seed_snippets_fit_threshold_score_predict(fitted, flat, keras_teacher):
    X_train, _, X_test, y_test = flat
    assert (keras_probs(keras_teacher, X_test).argmax(1) == y_test).mean() > 0.9
    after = fitted.score(X_test, batch_size=64)
    assert after.mean() < 0.5 * fitted.score_before_fit
    agreement = (
        keras_probs(fitted.distilled_model, X_test).argmax(1)
        == keras_probs(keras_teacher, X_test).argmax(1)
    ).mean()
    assert agreement > 0.85
    assert len(fitted.history) == 20 and fitted.history[-1]["loss"] < fitted.history[0]["loss"]

    for perc in (0.0, 50.0, 95.0, 100.0):
        fitted.infer_threshold(X_test, threshold_perc=perc, batch_size=64)
        assert fitted.threshold == pytest.approx(np.percentile(after, perc))
        flagged = (after > fitted.threshold).mean()
        assert abs(flagged - (1 - perc / 100)) <= 1.0 / len(after) + 1e-12
    fitted.infer_threshold(X_test, threshold_perc=95, batch_size=64)
    preds = fitted.predict(X_test, batch_size=64, return_instance_score=True)
    assert set(preds) == {"meta", "data"} and preds["meta"]["backend"] == "tensorflow"
    flags = preds["data"]["is_adversarial"]
    np.testing.assert_array_equal(flags, (preds["data"]["instance_score"] > fitted.threshold))
    assert flags.mean() == pytest.approx(0.05, abs=0.01)


def test_inference_traces_once_per_shape_and_caches_weakly(fitted, flat):
    X_test = flat[2]
    model = seed_student(seed=4)
    ad = ModelDistillation(distilled_model=model, model=fitted.model)
    for batch_size in (1, 7, 64, 1000):
        ad.score(X_test, batch_size=batch_size)
    (fn,) = tfb._FORWARD_CACHE[model].values()
    assert fn.experimental_get_tracing_count() == 1
    ref = weakref.ref(model)
    del ad, model, fn
    gc.collect()
    assert ref() is None, "the inference cache keeps the model alive"


# ---------------------------------------------------------------------------- training
def test_training_loss_adds_the_students_regularisation_losses():
    """The step's loss = mean KL + sum(student.losses) (the seed's kernel_regularizer=l1)."""
    keras.utils.set_random_seed(2)
    student = tf.keras.Sequential(
        [
            tf.keras.Input((6,)),
            Dense(8, activation="relu", kernel_regularizer=tf.keras.regularizers.l1(1e-2)),
            Dense(3, activation="softmax", kernel_regularizer=tf.keras.regularizers.l1(1e-3)),
        ]
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    p = rng.dirichlet(np.ones(3), size=32).astype(np.float32)
    kernels = [student.layers[0].kernel.numpy(), student.layers[1].kernel.numpy()]
    penalty = 1e-2 * np.abs(kernels[0]).sum() + 1e-3 * np.abs(kernels[1]).sum()
    q_before = keras_probs(student, x)
    with tfb.Trainer(student) as trainer:
        loss, q = trainer.step(x, p)
    np.testing.assert_allclose(q, q_before, rtol=1e-5, atol=1e-7)  # outputs before the update
    assert loss == pytest.approx(losses.kld(p, q).mean() + penalty, rel=1e-5)
    assert not np.array_equal(student.layers[0].kernel.numpy(), kernels[0])

    seed_cnn = kzoo.distilled_model_cifar10(input_shape=(8, 8, 3), nb_filters1=8)
    assert len(seed_cnn.losses) == 2  # L1 on the 2nd and 3rd convolutions, as in the seed
    l1 = sum(np.abs(seed_cnn.get_layer(f"convs_{i}").kernel.numpy()).sum() for i in (1, 2))
    assert float(sum(seed_cnn.losses)) == pytest.approx(1e-5 * l1, rel=1e-5)


def test_train_step_traces_once_with_a_smaller_last_batch(flat, keras_teacher):
    X = flat[0][:300]  # 300 = 2 x 128 + 44
    student = seed_student()
    trainer = tfb.Trainer(student)
    p = losses.sharpen(keras_probs(keras_teacher, X), 1.0).astype(np.float32)
    with trainer:
        for start in (0, 128, 256, 0):
            trainer.step(X[start : start + 128], p[start : start + 128])
    (fn,) = trainer._steps.values()
    assert fn.experimental_get_tracing_count() == 1


def test_same_init_and_seed_give_identical_weights_without_touching_global_rngs(flat):
    X = flat[0][:300].reshape(-1, 8, 8)
    teacher = lambda x: np.full((len(x), 10), 0.1)  # noqa: E731
    keras.utils.set_random_seed(7)
    init = kzoo.cnn_classifier((8, 8), filters=(8,), dense=(16,), dropout=0.5).get_weights()
    runs = []
    for seed in (3, 3, 4):
        student = kzoo.cnn_classifier((8, 8), filters=(8,), dense=(16,), dropout=0.5)
        student.set_weights(init)  # same initial weights, fresh dropout generators
        states = (random.getstate(), np.random.get_state()[1].copy())  # noqa: NPY002
        ModelDistillation(distilled_model=student, model=teacher).fit(
            X, epochs=2, batch_size=32, verbose=False, seed=seed
        )
        assert random.getstate() == states[0]
        np.testing.assert_array_equal(np.random.get_state()[1], states[1])  # noqa: NPY002
        runs.append(student.get_weights())
    assert same(runs[0], runs[1]), "same initial weights + same seed must train identically"
    assert not same(runs[0], runs[2])


def test_custom_tf_loss_fn(flat, keras_teacher):
    X = flat[0][:300]

    def squared_error(p, q):
        return tf.reduce_mean(tf.reduce_sum(tf.square(p - q), axis=-1))

    ad = ModelDistillation(distilled_model=seed_student(), model=keras_teacher)
    ad.fit(X, loss_fn=squared_error, epochs=5, verbose=False, seed=0, learning_rate=1e-2)
    assert ad.history[-1]["loss"] < ad.history[0]["loss"] < 2.0
    with pytest.raises(TypeError, match="loss_fn must return a scalar"):
        ad.fit(X, loss_fn=lambda p, q: tf.reduce_sum(q, axis=-1), epochs=1, verbose=False)
    with pytest.raises(ValueError, match="does not depend on any trainable variable"):
        ad.fit(X, loss_fn=lambda p, q: tf.reduce_sum(p), epochs=1, verbose=False)


# --------------------------------------------------------------------------- mixed pairs
def test_keras_teacher_with_torch_student(flat, keras_teacher):
    X_train, _, X_test, _ = flat
    torch.manual_seed(1)
    student = tzoo.mlp((64,), 10, (16,))
    ad = ModelDistillation(distilled_model=student, model=keras_teacher, temperature=0.5)
    assert ad.meta["backend"] == "pytorch" and ad.meta["teacher_backend"] == "tensorflow"
    before = ad.score(X_test).mean()
    ad.fit(X_train, epochs=15, verbose=False, seed=0, learning_rate=1e-2)
    with torch.no_grad():
        q = student.eval()(torch.from_numpy(X_test)).numpy()
    expected = expected_alibi_score(keras_probs(keras_teacher, X_test), q, 0.5)
    scores = ad.score(X_test)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert scores.mean() < 0.5 * before


def test_torch_teacher_with_keras_student(digits, digits_teacher):
    X_train, _, X_test, _ = digits
    keras.utils.set_random_seed(1)
    student = kzoo.mlp((8, 8), 10, (16,))
    ad = ModelDistillation(distilled_model=student, model=digits_teacher)
    assert ad.meta["backend"] == "tensorflow" and ad.meta["teacher_backend"] == "pytorch"
    before = ad.score(X_test).mean()
    ad.fit(X_train, epochs=15, verbose=False, seed=0, learning_rate=1e-2)
    with torch.no_grad():
        p = digits_teacher.eval()(torch.from_numpy(X_test)).numpy()
    scores = ad.score(X_test)
    np.testing.assert_allclose(
        scores, expected_alibi_score(p, keras_probs(student, X_test), 1.0), rtol=1e-5, atol=1e-6
    )
    assert scores.mean() < 0.5 * before


def test_black_box_teacher_with_keras_student(flat):
    from sklearn.linear_model import LogisticRegression

    X_train, y_train, X_test, y_test = flat
    clf = LogisticRegression(max_iter=2000).fit(X_train, y_train)
    assert (clf.predict_proba(X_test).argmax(1) == y_test).mean() > 0.9
    ad = ModelDistillation(distilled_model=seed_student(), model=clf.predict_proba)
    assert ad.meta["teacher_backend"] == "callable"
    before = ad.score(X_test).mean()
    ad.fit(X_train, epochs=15, verbose=False, seed=0, learning_rate=1e-2)
    scores = ad.score(X_test)
    expected = expected_alibi_score(
        clf.predict_proba(X_test), keras_probs(ad.distilled_model, X_test), 1.0
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert scores.mean() < 0.5 * before
    ad.infer_threshold(X_test, threshold_perc=90)
    assert ad.predict(X_test)["data"]["is_adversarial"].mean() == pytest.approx(0.1, abs=0.01)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_with_keras_models(flat, keras_teacher):
    X = flat[0][:50]
    ad = ModelDistillation(distilled_model=seed_student(), model=keras_teacher)
    with pytest.raises(ValueError, match=r"could not process a batch of shape \(5, 9\)"):
        ad.score(np.zeros((5, 9), np.float32))
    with pytest.raises(ValueError, match=r"could not process a batch of shape \(5, 8, 8\)"):
        ad.score(np.zeros((5, 8, 8), np.float32))
    before = keras_weights(ad.distilled_model)
    with pytest.raises(ValueError, match="could not process"):
        ad.fit(np.zeros((20, 9), np.float32), verbose=False)
    assert same(before, keras_weights(ad.distilled_model))
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="X must be finite"):
        ad.fit(bad, verbose=False)
    with pytest.raises(TypeError, match="X must be a numpy array"):
        ad.score(tf.constant(X))

    logits_student = tf.keras.Sequential([tf.keras.Input((64,)), Dense(10)])
    before = keras_weights(logits_student)
    ad = ModelDistillation(distilled_model=logits_student, model=keras_teacher)
    with pytest.raises(ValueError, match=r"distilled_model \(student\) outputs are not prob"):
        ad.fit(X, verbose=False)
    assert same(before, keras_weights(logits_student)), "a training step ran before the error"

    ad = ModelDistillation(distilled_model=seed_student(output_dim=7), model=keras_teacher)
    with pytest.raises(ValueError, match="returns 10 classes but distilled_model returns 7"):
        ad.fit(X, verbose=False)

    unbuilt = tf.keras.Sequential([Dense(10, activation="softmax")])  # no Input: no variables
    with pytest.raises(ValueError, match="not built yet"):
        tfb.n_trainable_parameters(unbuilt)

    frozen = seed_student()
    frozen.trainable = False
    ad = ModelDistillation(distilled_model=frozen, model=keras_teacher)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ad.fit(X, verbose=False)
    ad.score(X)  # a frozen student can still score

    embed = tf.keras.Sequential(
        [
            tf.keras.Input((3,), dtype="int32"),
            tf.keras.layers.Embedding(5, 2),
            tf.keras.layers.Flatten(),
            Dense(2, activation="softmax"),
        ]
    )
    with tfb.inference(embed) as forward:
        assert forward(np.array([[1, 2, 3]])).shape == (1, 2)  # integer inputs pass as they are
        with pytest.raises(TypeError, match="floating array"):
            forward(np.zeros((2, 3), np.float32))


def test_diverging_keras_training_is_reported(flat, keras_teacher):
    ad = ModelDistillation(distilled_model=seed_student(), model=keras_teacher)
    with pytest.raises(FloatingPointError, match="loss became nan"):
        ad.fit(flat[0][:50], loss_fn=lambda p, q: tf.reduce_sum(q) * float("nan"), verbose=False)


# ------------------------------------------------------------------------------ the zoo
def port_weights(torch_model, keras_model):
    """Copy a torch zoo model's parameters and statistics into its Keras twin (same names)."""
    for name, module in torch_model.named_modules():
        if not list(module.parameters(recurse=False)):
            continue
        layer = keras_model.get_layer(name.replace(".", "_"))
        sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
        if isinstance(module, torch.nn.Conv2d):
            values = [sd["weight"].transpose(2, 3, 1, 0)] + ([sd["bias"]] if "bias" in sd else [])
        elif isinstance(module, torch.nn.BatchNorm2d):
            values = [sd["weight"], sd["bias"], sd["running_mean"], sd["running_var"]]
        else:
            kernel = sd["weight"].T
            if name == "head.2" and hasattr(torch_model, "features"):
                # torch flattens channels-first, Keras channels-last
                _, h, w, c = keras_model.get_layer("head_0").input.shape
                kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)
            values = [kernel, sd["bias"]]
        layer.set_weights(values)


ZOO_CASES = [
    ("resnet", {"input_shape": (12, 12, 3), "num_blocks": 1, "widths": (4, 8, 8)}),
    ("resnet", {"input_shape": (9, 7), "num_blocks": 2, "widths": (4, 6), "num_classes": 3}),
    ("distilled_model_cifar10", {"input_shape": (16, 16, 3), "nb_filters1": 16, "nb_dense": 8}),
    ("distilled_model_cifar10", {"input_shape": (15, 15), "nb_conv_layers": 2, "kernel2": 3}),
    ("cnn_classifier", {"input_shape": (8, 8), "filters": (4, 6), "dense": (8,)}),
    ("cnn_classifier", {"input_shape": (8, 8, 2), "kernel_size": 4, "batch_norm": True}),
    ("mlp", {"input_shape": (8, 8), "hidden": (16,)}),
    ("mlp", {"input_shape": (5, 4, 3), "hidden": (8, 4), "dropout": 0.3, "num_classes": 4}),
]


@pytest.mark.parametrize(("name", "kwargs"), ZOO_CASES)
def test_zoo_twins_compute_the_same_function(name, kwargs):
    from distilldetect.models import build_model

    torch.manual_seed(0)
    t = tzoo.build(name, **kwargs).eval()
    for m in t.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0, 0.2)
    k = build_model(name, "tensorflow", **kwargs)
    assert k.builder_config == t.builder_config
    assert tfb.n_trainable_parameters(k) == sum(p.numel() for p in t.parameters())
    port_weights(t, k)
    shape = tuple(kwargs["input_shape"])
    x = np.random.default_rng(1).normal(size=(3, *shape)).astype(np.float32)
    expected = t(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(keras_probs(k, x), expected, rtol=1e-4, atol=1e-6)
    if len(shape) == 2:  # (n, h, w, 1) is accepted too
        np.testing.assert_allclose(keras_probs(k, x[..., None]), expected, rtol=1e-4, atol=1e-6)


def test_zoo_defaults_match_torch_parameter_counts():
    for name, count in (("resnet", 272_474), ("distilled_model_cifar10", 709_506)):
        k, t = kzoo.build(name), tzoo.build(name)
        assert tfb.n_trainable_parameters(k) == sum(p.numel() for p in t.parameters()) == count
        assert k.input_shape == (None, 32, 32, 3) and k.output_shape == (None, 10)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        kzoo.build("vgg")
    with pytest.raises(ValueError, match="nb_conv_layers"):
        kzoo.distilled_model_cifar10(nb_conv_layers=4)


# ------------------------------------------------------------------------------ saving
def test_keras_io_round_trip_and_safe_mode(tmp_path, caplog):
    from distilldetect.saving import DetectorFormatError

    keras.utils.set_random_seed(0)
    model = kzoo.cnn_classifier((8, 8), filters=(4,), dense=(8,), batch_norm=True)
    model.get_layer("features_1").moving_mean.assign(np.linspace(-1, 1, 4))
    entry = tfio.save_model(model, tmp_path, "model")
    assert entry["files"] == ["model.keras"] and entry["format"] == "keras"
    assert (tmp_path / "model.keras").is_file()
    x = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)

    loaded = tfio.load_model(tmp_path, entry)
    np.testing.assert_array_equal(keras_probs(loaded, x), keras_probs(model, x))
    assert loaded.builder_config == model.builder_config

    seed = seed_student()  # activation=tf.nn.softmax is saved as 'softmax_v2'
    seed_back = tfio.load_model(tmp_path, tfio.save_model(seed, tmp_path, "seed"))
    x64 = x.reshape(5, -1)
    np.testing.assert_array_equal(keras_probs(seed_back, x64), keras_probs(seed, x64))

    target = kzoo.cnn_classifier((8, 8), filters=(4,), dense=(8,), batch_norm=True)
    assert tfio.load_model(tmp_path, entry, model=target) is target
    np.testing.assert_array_equal(keras_probs(target, x), keras_probs(model, x))

    other = kzoo.cnn_classifier((8, 8), filters=(4,), dense=(9,), batch_norm=True)
    before = keras_weights(other)
    with pytest.raises(ValueError, match=r"model= does not match the weights in .*model\.keras"):
        tfio.load_model(tmp_path, entry, model=other)
    assert same(before, keras_weights(other))

    tampered = dict(entry, variables=entry["variables"][:-1])
    with pytest.raises(DetectorFormatError, match="does not hold the variables"):
        tfio.load_model(tmp_path, tampered)

    def lambda_model():
        inputs = keras.Input((3,))
        doubled = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
        return keras.Model(inputs, Dense(2, activation="softmax")(doubled))

    lam = lambda_model()
    with caplog.at_level("WARNING", logger="distilldetect.backends.tensorflow.io"):
        lam_entry = tfio.save_model(lam, tmp_path, "distilled_model")
    assert "distilled_model=model" in caplog.text  # said when saving already
    with pytest.raises(ValueError, match=r"safe mode.*Lambda.*distilled_model=model"):
        tfio.load_model(tmp_path, lam_entry)
    lam_target = lambda_model()
    tfio.load_model(tmp_path, lam_entry, model=lam_target)  # weights only: no code is loaded
    np.testing.assert_array_equal(lam_target.get_weights()[0], lam.get_weights()[0])


def test_save_and_load_detector_with_keras_models(tmp_path, fitted, flat, digits_teacher):
    from distilldetect import load_detector, save_detector

    X_test = flat[2]
    fitted.infer_threshold(X_test, threshold_perc=95)
    save_detector(fitted, tmp_path / "det")
    config = json.loads((tmp_path / "det" / "config.json").read_text())
    data = tmp_path / "det" / config["data"]
    assert sorted(p.name for p in data.iterdir()) == ["distilled_model.keras", "model.keras"]
    ad = load_detector(tmp_path / "det")
    assert ad.threshold == fitted.threshold and ad.temperature == 0.5
    assert ad.meta["backend"] == "tensorflow"
    np.testing.assert_allclose(ad.score(X_test), fitted.score(X_test), rtol=1e-6, atol=1e-9)

    # mixed pair: a torch teacher and a Keras student, saved side by side
    keras.utils.set_random_seed(2)
    mixed = ModelDistillation(distilled_model=kzoo.mlp((8, 8), 10, (8,)), model=digits_teacher)
    save_detector(mixed, tmp_path / "mixed")
    back = load_detector(tmp_path / "mixed")
    X8 = X_test.reshape(-1, 8, 8)
    np.testing.assert_allclose(back.score(X8), mixed.score(X8), rtol=1e-6, atol=1e-9)

    # a modified archive is refused before Keras parses it
    path = data / "distilled_model.keras"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="distilled_model.keras"):
        load_detector(tmp_path / "det")


def test_seed_builder_takes_the_classifier_first_and_unbuilt_students_fit(flat, keras_teacher):
    from distilldetect.backends.tensorflow.models import cnn_classifier, distilled_model_cifar10

    clf = cnn_classifier((28, 28), num_classes=7)
    student = distilled_model_cifar10(clf, nb_filters1=16, nb_dense=8)
    assert student.output_shape == (None, 7)
    assert student.builder_config["kwargs"]["input_shape"] == [28, 28]

    X = flat[0][:200]
    keras.utils.set_random_seed(0)
    unbuilt = keras.Sequential([keras.layers.Dense(10, activation="softmax")])  # no Input layer
    ad = ModelDistillation(distilled_model=unbuilt, model=keras_teacher)
    ad.fit(X, epochs=1, verbose=False, seed=0)
    assert ad.score(X).shape == (200,)
