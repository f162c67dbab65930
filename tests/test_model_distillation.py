"""ModelDistillation on PyTorch and black-box teachers: maths, behaviour and bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from distilldetect import ModelDistillation, losses
from distilldetect.ad.model_distillation import DEFAULT_BATCH_SIZE


def probs_of(model, X):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(X)).numpy()


def weights(model):
    return [p.detach().clone() for p in model.state_dict().values()]


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture
def fitted(digits, digits_teacher, make_student):
    X_train, _, _, _ = digits
    ad = ModelDistillation(distilled_model=make_student(), model=digits_teacher)
    return ad.fit(X_train, epochs=15, verbose=False, seed=0, learning_rate=1e-2)


# ------------------------------------------------------------------------------ the maths
@pytest.mark.parametrize("loss_type", ["kld", "xent"])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_score_equals_hand_computed_numpy(
    digits, digits_teacher, make_student, loss_type, temperature
):
    _, _, X_test, _ = digits
    student = make_student()
    ad = ModelDistillation(
        distilled_model=student, model=digits_teacher, loss_type=loss_type, temperature=temperature
    )
    p = probs_of(digits_teacher, X_test).astype(np.float64)
    q = probs_of(student, X_test).astype(np.float64)
    p = p ** (1 / temperature)
    p /= p.sum(1, keepdims=True)
    if loss_type == "kld":
        pc, qc = np.clip(p, 1e-7, 1), np.clip(q, 1e-7, 1)
        expected = (pc * np.log(pc / qc)).sum(1)
    else:
        qn = np.clip(q / q.sum(1, keepdims=True), 1e-7, 1 - 1e-7)
        expected = -(p * np.log(qn)).sum(1)
    scores, p_out, q_out = ad.score(X_test, return_predictions=True)
    assert scores.shape == (len(X_test),)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p_out, p, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(q_out, q, rtol=1e-6)


def test_scores_do_not_depend_on_batch_size(fitted, digits):
    _, _, X_test, _ = digits
    reference = fitted.score(X_test, batch_size=len(X_test))
    # Equal up to float32 rounding inside the models' matrix products, whose kernels change
    # with the number of rows: a wrong slice, a batch statistic or a lost row would be far off.
    for bs in (1, 7, 64, DEFAULT_BATCH_SIZE):
        np.testing.assert_allclose(
            fitted.score(X_test, batch_size=bs), reference, rtol=1e-4, atol=2e-6
        )
    np.testing.assert_array_equal(
        fitted.score(X_test, batch_size=64), fitted.score(X_test, batch_size=64)
    )


def test_teacher_probs_skip_the_teacher(fitted, digits):
    _, _, X_test, _ = digits
    raw = probs_of(fitted.model, X_test)
    fitted.temperature = 0.5
    expected = fitted.score(X_test)

    calls = []
    fitted.model.register_forward_hook(lambda *a: calls.append(1))
    got = fitted.score(X_test, teacher_probs=raw)
    assert not calls, "the teacher ran although teacher_probs were given"
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_infer_threshold_percentile_property(fitted, digits):
    _, _, X_test, _ = digits
    scores = fitted.score(X_test)
    for perc in (0.0, 50.0, 90.0, 99.0, 100.0):
        fitted.infer_threshold(X_test, threshold_perc=perc)
        assert fitted.threshold == pytest.approx(np.percentile(scores, perc))
        flagged = (scores > fitted.threshold).mean()
        # linear interpolation between order statistics: within one instance of the target
        assert abs(flagged - (1 - perc / 100)) <= 1.0 / len(scores) + 1e-12
    fitted.infer_threshold(X_test, threshold_perc=90, margin=0.5)
    assert fitted.threshold == pytest.approx(np.percentile(scores, 90) + 0.5)


def test_predict_dict(fitted, digits):
    _, _, X_test, _ = digits
    fitted.infer_threshold(X_test, threshold_perc=95)
    pred = fitted.predict(X_test)
    assert set(pred) == {"meta", "data"}
    assert pred["meta"]["name"] == "ModelDistillation"
    assert pred["meta"]["detector_type"] == "adversarial" and pred["meta"]["online"] is False
    flags = pred["data"]["is_adversarial"]
    assert flags.dtype.kind == "i" and set(np.unique(flags)) <= {0, 1}
    np.testing.assert_array_equal(
        flags, (pred["data"]["instance_score"] > fitted.threshold).astype(int)
    )
    assert fitted.predict(X_test, return_instance_score=False)["data"]["instance_score"] is None


def test_meta_keys(digits_teacher, make_student):
    ad = ModelDistillation(distilled_model=make_student(), model=digits_teacher, data_type="image")
    assert ad.meta["name"] == "ModelDistillation"
    assert ad.meta["data_type"] == "image"
    assert ad.meta["backend"] == "pytorch"
    assert isinstance(ad.meta["version"], str)


# -------------------------------------------------------------------------------- fitting
def test_fit_lowers_held_out_score_on_real_data(digits, digits_teacher, make_student):
    X_train, _, X_test, y_test = digits
    assert (probs_of(digits_teacher, X_test).argmax(1) == y_test).mean() > 0.93
    ad = ModelDistillation(distilled_model=make_student(), model=digits_teacher)
    before = ad.score(X_test).mean()
    ad.fit(X_train, epochs=15, verbose=False, seed=0, learning_rate=1e-2)
    after = ad.score(X_test).mean()
    assert after < 0.5 * before
    agreement = (
        probs_of(ad.distilled_model, X_test).argmax(1) == probs_of(digits_teacher, X_test).argmax(1)
    ).mean()
    assert agreement > 0.85
    assert len(ad.history) == 15 and ad.history[-1]["loss"] < ad.history[0]["loss"]


def test_fit_returns_self_and_is_reproducible_with_seed(digits, digits_teacher, make_student):
    X_train = digits[0][:400]
    runs = []
    for seed in (3, 3, 4):
        student = make_student(seed=1)
        ad = ModelDistillation(distilled_model=student, model=digits_teacher)
        assert ad.fit(X_train, epochs=2, batch_size=32, verbose=False, seed=seed) is ad
        runs.append(weights(student))
    assert same_weights(runs[0], runs[1])
    assert not same_weights(runs[0], runs[2])


def test_seeded_fit_with_dropout_is_reproducible_and_keeps_global_rng(digits, digits_teacher):
    from distilldetect.backends.torch.models import mlp

    X_train = digits[0][:300]
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        student = mlp((8, 8), 10, (32,), dropout=0.5)
        torch.manual_seed(123)
        state = torch.get_rng_state()
        ModelDistillation(distilled_model=student, model=digits_teacher).fit(
            X_train, epochs=1, verbose=False, seed=9
        )
        assert torch.equal(torch.get_rng_state(), state), "fit(seed=...) changed torch's global RNG"
        outs.append(weights(student))
    assert same_weights(*outs)


def test_teacher_is_never_modified(digits, digits_teacher, make_student):
    X_train = digits[0][:300]
    teacher = copy.deepcopy(digits_teacher).train()  # in train mode on purpose
    before = weights(teacher)
    flags = [p.requires_grad for p in teacher.parameters()]
    ad = ModelDistillation(distilled_model=make_student(), model=teacher)
    ad.fit(X_train, epochs=2, verbose=False, seed=0)
    ad.score(X_train)
    assert same_weights(before, weights(teacher))
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert all(p.grad is None for p in teacher.parameters())
    assert teacher.training, "the teacher's mode was not restored"


def test_teacher_outputs_are_cached_during_fit(digits, digits_teacher, make_student):
    X_train = digits[0][:500]
    calls = []
    handle = digits_teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        ModelDistillation(distilled_model=make_student(), model=digits_teacher).fit(
            X_train, epochs=3, batch_size=50, verbose=False, seed=0
        )
    finally:
        handle.remove()
    # one probe of 2 instances, then each instance exactly once; nothing per epoch
    assert sum(calls) == 2 + len(X_train)


def test_preprocess_fn_runs_the_teacher_on_each_preprocessed_batch(
    digits, digits_teacher, make_student
):
    X_train = digits[0][:200]
    seen = []
    handle = digits_teacher.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    rng = np.random.default_rng(0)

    def jitter(x):
        return (x + rng.normal(0, 0.01, size=x.shape)).astype(np.float32)

    try:
        ModelDistillation(distilled_model=make_student(), model=digits_teacher).fit(
            X_train, epochs=2, batch_size=50, verbose=False, seed=0, preprocess_fn=jitter
        )
    finally:
        handle.remove()
    assert len(seen) == 1 + 2 * 4  # probe + every batch of every epoch
    assert not any(torch.equal(s, torch.from_numpy(X_train[: len(s)])) for s in seen[1:])


def test_fit_with_precomputed_teacher_probs(digits, digits_teacher, make_student):
    X_train = digits[0][:300]
    raw = probs_of(digits_teacher, X_train)
    a = ModelDistillation(distilled_model=make_student(), model=digits_teacher)
    b = ModelDistillation(
        distilled_model=make_student(), model=lambda x: pytest.fail("teacher ran")
    )
    a.fit(X_train, epochs=2, verbose=False, seed=0)
    b.fit(X_train, epochs=2, verbose=False, seed=0, teacher_probs=raw)
    for wa, wb in zip(weights(a.distilled_model), weights(b.distilled_model), strict=True):
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-6)


def test_optimizer_class_instance_and_learning_rate(digits, digits_teacher, make_student):
    X_train = digits[0][:200]
    student = make_student()
    ad = ModelDistillation(distilled_model=student, model=digits_teacher)
    ad.fit(X_train, optimizer=torch.optim.SGD, learning_rate=0.1, epochs=1, verbose=False, seed=0)
    opt = torch.optim.RMSprop(student.parameters(), lr=1e-3)
    ad.fit(X_train, optimizer=opt, epochs=1, verbose=False, seed=0)
    assert opt.state, "the given optimizer instance was not used"
    with pytest.raises(ValueError, match="learning_rate applies only"):
        ad.fit(X_train, optimizer=opt, learning_rate=0.1, epochs=1, verbose=False)
    other = torch.optim.Adam(make_student().parameters())
    with pytest.raises(ValueError, match="optimizer does not hold"):
        ad.fit(X_train, optimizer=other, epochs=1, verbose=False)
    with pytest.raises(TypeError, match="optimizer"):
        ad.fit(X_train, optimizer="adam", epochs=1, verbose=False)


def test_callbacks_log_metric_and_early_stop(digits, digits_teacher, make_student):
    X_train = digits[0][:200]
    logs = []

    def agreement(p, q):
        return float((p.argmax(1) == q.argmax(1)).mean())

    def stop_after_two(epoch, log):
        logs.append((epoch, log))
        return epoch == 1

    ad = ModelDistillation(distilled_model=make_student(), model=digits_teacher)
    ad.fit(
        X_train,
        epochs=10,
        verbose=False,
        seed=0,
        callbacks=[stop_after_two],
        log_metric=("agree", agreement),
    )
    assert [e for e, _ in logs] == [0, 1]
    assert set(logs[0][1]) == {"loss", "agree"} and 0 <= logs[0][1]["agree"] <= 1
    assert len(ad.history) == 2


def test_custom_loss_fn_and_student_regularisation(digits, digits_teacher):
    from distilldetect.backends.torch.models import mlp

    X_train = digits[0][:200]
    calls = []

    def l2_loss(p, q):
        calls.append(1)
        return ((p - q) ** 2).sum(-1).mean()

    student = mlp((8, 8), 10, (16,))
    reg_calls = []

    def reg():
        reg_calls.append(1)
        return 0.0 * sum(p.sum() for p in student.parameters())

    student.regularization_loss = reg
    ModelDistillation(distilled_model=student, model=digits_teacher).fit(
        X_train, loss_fn=l2_loss, epochs=1, batch_size=100, verbose=False, seed=0
    )
    assert len(calls) == 2 and len(reg_calls) == 2


def test_verbose_progress_bar(digits, digits_teacher, make_student, capsys):
    ModelDistillation(distilled_model=make_student(), model=digits_teacher).fit(
        digits[0][:100], epochs=2, verbose=True, seed=0
    )
    err = capsys.readouterr().err
    assert "Epoch 2/2" in err and "loss=" in err
    ModelDistillation(distilled_model=make_student(), model=digits_teacher).fit(
        digits[0][:100], epochs=1, verbose=False, seed=0
    )
    assert capsys.readouterr().err == ""


# -------------------------------------------------------------------- black-box teachers
def test_black_box_sklearn_teacher_end_to_end(digits, make_student):
    from sklearn.linear_model import LogisticRegression

    X_train, y_train, X_test, y_test = digits
    clf = LogisticRegression(max_iter=2000).fit(X_train.reshape(len(X_train), -1), y_train)

    def teacher(x):
        return clf.predict_proba(x.reshape(len(x), -1))

    assert (teacher(X_test).argmax(1) == y_test).mean() > 0.9
    ad = ModelDistillation(distilled_model=make_student(), model=teacher)
    assert ad.meta["teacher_backend"] == "callable"
    before = ad.score(X_test).mean()
    ad.fit(X_train, epochs=15, verbose=False, seed=0, learning_rate=1e-2)
    assert ad.score(X_test).mean() < 0.5 * before
    ad.infer_threshold(X_test, threshold_perc=95)
    assert ad.predict(X_test)["data"]["is_adversarial"].mean() == pytest.approx(0.05, abs=0.01)


# -------------------------------------------------------------------------- bad input
def logits_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


@pytest.fixture
def ad(digits_teacher, make_student):
    return ModelDistillation(distilled_model=make_student(), model=digits_teacher)


def test_bad_constructor_arguments(digits_teacher, make_student):
    s = make_student()
    with pytest.raises(ValueError, match="model"):
        ModelDistillation(distilled_model=s)
    with pytest.raises(ValueError, match="distilled_model"):
        ModelDistillation(model=digits_teacher)
    with pytest.raises(ValueError, match="loss_type"):
        ModelDistillation(distilled_model=s, model=digits_teacher, loss_type="mse")
    for t in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            ModelDistillation(distilled_model=s, model=digits_teacher, temperature=t)
    with pytest.raises(TypeError, match="temperature"):
        ModelDistillation(distilled_model=s, model=digits_teacher, temperature="1")
    with pytest.raises(TypeError, match="distilled_model must be trainable"):
        ModelDistillation(distilled_model=lambda x: x, model=digits_teacher)
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        ModelDistillation(distilled_model=s, model=42)
    with pytest.raises(TypeError, match="threshold"):
        ModelDistillation(distilled_model=s, model=digits_teacher, threshold="high")


def test_nan_inf_empty_and_non_arrays(ad, digits):
    X = digits[0][:10].copy()
    X[3, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"X must be finite.*1 NaN"):
        ad.score(X)
    X[3, 2, 2] = np.inf
    with pytest.raises(ValueError, match="X must be finite"):
        ad.fit(X, verbose=False)
    with pytest.raises(ValueError, match="X is empty"):
        ad.score(np.zeros((0, 8, 8), np.float32))
    with pytest.raises(TypeError, match="X must be a numpy array"):
        ad.score([[0.0] * 64])
    with pytest.raises(TypeError, match="dtype"):
        ad.score(np.array([["a"]]))


def test_wrong_shape_for_the_models(ad, digits):
    with pytest.raises(ValueError, match=r"could not process a batch of shape \(5, 9, 9\)"):
        ad.score(np.zeros((5, 9, 9), np.float32))
    before = weights(ad.distilled_model)
    with pytest.raises(ValueError, match="could not process"):
        ad.fit(np.zeros((20, 4, 4), np.float32), verbose=False)
    assert same_weights(before, weights(ad.distilled_model))
    ad.fit(digits[0][:50], epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"fitted on instances of shape \(8, 8\)"):
        ad.score(np.zeros((5, 64), np.float32))


def test_logits_instead_of_probabilities(digits, digits_teacher, make_student):
    X = digits[0][:50]
    with pytest.raises(
        ValueError, match=r"model \(teacher\) outputs are not probabilities.*softmax"
    ):
        ModelDistillation(distilled_model=make_student(), model=logits_model()).score(X)
    student = logits_model()
    before = weights(student)
    ad = ModelDistillation(distilled_model=student, model=digits_teacher)
    with pytest.raises(
        ValueError, match=r"distilled_model \(student\) outputs are not probabilities"
    ):
        ad.fit(X, verbose=False)
    assert same_weights(before, weights(student)), "a training step ran before the error"
    with pytest.raises(ValueError, match="teacher_probs are not probabilities"):
        ModelDistillation(distilled_model=make_student(), model=digits_teacher).score(
            X, teacher_probs=np.full((50, 10), 0.5)
        )


def test_class_count_mismatch(digits, digits_teacher):
    from distilldetect.backends.torch.models import mlp

    ad = ModelDistillation(distilled_model=mlp((8, 8), 7, (8,)), model=digits_teacher)
    with pytest.raises(ValueError, match="returns 10 classes but distilled_model returns 7"):
        ad.fit(digits[0][:50], verbose=False)
    with pytest.raises(ValueError, match="10 classes"):
        ad.score(digits[0][:50])


def test_bad_numbers(ad, digits):
    X = digits[0][:50]
    for bs in (0, -3):
        with pytest.raises(ValueError, match="batch_size"):
            ad.score(X, batch_size=bs)
        with pytest.raises(ValueError, match="batch_size"):
            ad.fit(X, batch_size=bs, verbose=False)
    with pytest.raises(TypeError, match="batch_size"):
        ad.score(X, batch_size=2.5)
    for perc in (-1, 100.5):
        with pytest.raises(ValueError, match="threshold_perc"):
            ad.infer_threshold(X, threshold_perc=perc)
    with pytest.raises(ValueError, match="epochs"):
        ad.fit(X, epochs=0, verbose=False)
    with pytest.raises(ValueError, match="learning_rate"):
        ad.fit(X, learning_rate=-1.0, verbose=False)
    with pytest.raises(TypeError, match="preprocess_fn must be callable"):
        ad.fit(X, preprocess_fn=3, verbose=False)
    with pytest.raises(TypeError, match="seed"):
        ad.fit(X, seed=1.5, verbose=False)
    with pytest.raises(TypeError, match="log_metric"):
        ad.fit(X, log_metric=lambda p, q: 0.0, verbose=False)
    with pytest.raises(ValueError, match="teacher_probs must have 50 rows"):
        ad.score(X, teacher_probs=np.full((49, 10), 0.1))


def test_predict_before_threshold(ad, digits):
    with pytest.raises(ValueError, match="call infer_threshold"):
        ad.predict(digits[0][:10])


def test_student_without_trainable_parameters(digits, digits_teacher, make_student):
    student = make_student()
    for p in student.parameters():
        p.requires_grad_(False)
    ad = ModelDistillation(distilled_model=student, model=digits_teacher)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ad.fit(digits[0][:50], verbose=False)
    ad.score(digits[0][:50])  # a frozen student can still score


def test_diverging_training_is_reported(digits, digits_teacher, make_student):
    ad = ModelDistillation(distilled_model=make_student(), model=digits_teacher)

    def nan_loss(p, q):
        return (q * float("nan")).sum()

    with pytest.raises(FloatingPointError, match="loss became nan"):
        ad.fit(digits[0][:50], loss_fn=nan_loss, verbose=False)


def test_losses_module_is_the_single_formula(fitted, digits, monkeypatch):
    """score() goes through losses.distillation_score: patching it changes the scores."""
    calls = []
    original = losses.distillation_score

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(losses, "distillation_score", spy)
    fitted.score(digits[2][:10])
    assert calls


def test_fit_restores_every_submodule_mode(digits, digits_teacher):
    from distilldetect.backends.torch.models import mlp

    student = mlp((8, 8), 10, (16,), dropout=0.2)
    student.train()
    student.net[2].eval()  # the user froze one submodule's mode on purpose
    ModelDistillation(distilled_model=student, model=digits_teacher).fit(
        digits[0][:100], epochs=1, verbose=False, seed=0
    )
    assert student.training and not student.net[2].training
