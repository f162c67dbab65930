"""The Detectron-style baseline: CDC disagreement, seeding, input checks, rank p-values."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distilldetect.backends.torch.detectron import (  # noqa: E402
    disagreement,
    disagreement_loss,
    disagreement_rates,
)
from distilldetect.experiments.detectron import DetectronBaseline, rank_pvalue  # noqa: E402

KW = {"epochs": 4, "lr": 3e-3, "batch_size": 64}


@pytest.fixture(scope="module")
def setup(digits, digits_teacher):
    x_train, y_train, x_test, _ = digits
    rng = np.random.default_rng(1)
    x_p, y_p = x_train[:300], y_train[:300]
    clean = x_test[:20]
    # far from the training data: the teacher's labels there carry no information
    shifted = rng.uniform(0, 1, size=(20, 8, 8)).astype(np.float32)
    return digits_teacher, x_p, y_p, clean, shifted


def test_disagreement_higher_on_shifted_batches(setup):
    teacher, x_p, y_p, clean, shifted = setup
    on_clean = [disagreement(teacher, x_p, y_p, clean, seed=s, **KW) for s in range(3)]
    on_shifted = [disagreement(teacher, x_p, y_p, shifted, seed=s, **KW) for s in range(3)]
    assert np.mean(on_shifted) > np.mean(on_clean) + 0.2, (on_clean, on_shifted)


def test_seed_reproduces_and_teacher_unchanged(setup):
    teacher, x_p, y_p, clean, shifted = setup
    before = [p.detach().clone() for p in teacher.parameters()]
    a = disagreement_rates(teacher, x_p, y_p, shifted, members=2, seed=3, **KW)
    b = disagreement_rates(teacher, x_p, y_p, shifted, members=2, seed=3, **KW)
    assert a == b
    assert len(a) == 2 and a[0] <= a[1]
    assert all(torch.equal(p, q) for p, q in zip(before, teacher.parameters(), strict=True))


def test_disagreement_loss_is_small_when_g_disagrees():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    loss = disagreement_loss(logits, torch.tensor([0, 0]))
    assert loss[0] > 4.0 and loss[1] < 0.02


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"teacher": lambda x: x}, TypeError, "teacher must be a torch.nn.Module"),
        ({"x_q": np.zeros((0, 8, 8), np.float32)}, ValueError, "x_q is empty"),
        ({"x_q": np.zeros((3, 4, 4), np.float32)}, ValueError, "x_q must have the instance"),
        ({"y_p": np.zeros(5, np.int64)}, ValueError, "y_p must be integer class labels"),
        ({"members": 0}, ValueError, "members must be an integer >= 1"),
        ({"epochs": 1.5}, TypeError, "epochs must be an integer"),
        ({"seed": None}, TypeError, "seed must be an integer"),
        ({"lambda_": -1.0}, ValueError, "lambda_ must be None or a number >= 0"),
    ],
)
def test_bad_input_is_refused(setup, kwargs, error, match):
    teacher, x_p, y_p, clean, _ = setup
    args = {"teacher": teacher, "x_p": x_p, "y_p": y_p, "x_q": clean, **kwargs}
    with pytest.raises(error, match=match):
        disagreement_rates(
            args.pop("teacher"), args.pop("x_p"), args.pop("y_p"), args.pop("x_q"), **args
        )


def test_baseline_refuses_non_torch_teacher_and_bad_batches(setup):
    teacher, x_p, y_p, clean, _ = setup
    with pytest.raises(TypeError, match="teacher must be a torch.nn.Module"):
        DetectronBaseline(lambda x: x, x_p, y_p)
    base = DetectronBaseline(teacher, x_p, y_p, epochs=1)
    with pytest.raises(ValueError, match="call calibrate"):
        base.pvalue(clean)
    with pytest.raises(ValueError, match="clean_batches must be a non-empty"):
        base.calibrate([])
    with pytest.raises(ValueError, match=r"must hold instances of shape \(8, 8\)"):
        base.calibrate([np.zeros((4, 5, 5), np.float32)])
    with pytest.raises(ValueError, match="y_p must hold one label per instance"):
        DetectronBaseline(teacher, x_p, y_p[:10])


def test_rank_pvalue_is_exact():
    cal = [0.0, 0.1, 0.1, 0.3, 0.5, 0.5, 0.5, 0.7, 0.9]
    assert rank_pvalue(1.0, cal) == pytest.approx(1 / 10)  # above all: the smallest p-value
    assert rank_pvalue(0.9, cal) == pytest.approx(2 / 10)  # ties count against rejection
    assert rank_pvalue(0.5, cal) == pytest.approx(6 / 10)
    assert rank_pvalue(0.0, cal) == pytest.approx(10 / 10)
    assert rank_pvalue(0.05, cal) == pytest.approx(9 / 10)
    with pytest.raises(ValueError, match="calibration must be a non-empty"):
        rank_pvalue(0.5, [])
    with pytest.raises(ValueError, match="finite"):
        rank_pvalue(float("nan"), cal)


def test_baseline_calibrates_and_flags_shifted_batch(setup):
    teacher, x_p, y_p, clean, shifted = setup
    base = DetectronBaseline(teacher, x_p, y_p, seed=0, **KW)
    x_clean = np.concatenate([clean, clean[::-1]])
    stats = base.calibrate([x_clean[i : i + 10] for i in range(0, 40, 10)])
    assert stats.shape == (4,) and base.calibration is stats
    p, stat = base.pvalue(shifted[:10])
    assert p == rank_pvalue(stat, stats)
    assert len(base.seconds) == 5
