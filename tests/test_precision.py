"""bfloat16 scoring (``ModelDistillation(optimize=True, precision='bfloat16')``): the lowered
copies compute in bfloat16, answer float32 probabilities, stay close to float32, never touch the
user's model, and bad settings fail at the constructor."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.fx
from scipy.stats import spearmanr
from torch import nn

from distilldetect import ModelDistillation, load_detector, save_detector
from distilldetect.backends.torch.compose import compose_conv_pairs
from distilldetect.backends.torch.fast import FastForward, traced_folded_copy
from distilldetect.backends.torch.models import cnn_classifier
from distilldetect.backends.torch.precision import ZooLowered, lower, to_lower


class Net(nn.Module):
    """A user's CNN: conv-BN-ReLU, a linear conv pair, global pooling, softmax."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 64, 4, 2, 1)
        self.b = nn.Conv2d(64, 32, 4, 2, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(x)))
        out = torch.relu(self.b(self.a(out)))
        return torch.softmax(self.fc(out.mean((2, 3))), dim=-1)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 1.0
        return torch.softmax(self.fc(x), dim=-1)


def _trained(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():  # non-trivial BN statistics, so folding matters
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _x(n: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def test_lowered_copy_answers_float32_probabilities_close_to_float32() -> None:
    net = _trained()
    x = torch.from_numpy(_x())
    low = lower(traced_folded_copy(net, compose=True)[0])
    assert isinstance(low, torch.fx.GraphModule)
    with torch.inference_mode():
        ref, out = net(x), low(x)
    assert out.dtype == torch.float32
    # the softmax runs in float32: rows sum to 1 at float32's precision, not bfloat16's
    assert torch.allclose(out.sum(-1), torch.ones(len(x)), atol=1e-5)
    assert (out - ref).abs().max() < 2e-2
    assert not torch.equal(out, ref)  # it really computed in bfloat16
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the model is untouched


def test_composed_pair_kernels_are_built_in_float32_then_cast() -> None:
    net = _trained()
    composed, n = compose_conv_pairs(traced_folded_copy(net)[0], frozen=True)
    assert n == 1
    low = lower(composed)
    x = torch.from_numpy(_x(8))
    with torch.inference_mode():
        assert (low(x) - net(x)).abs().max() < 2e-2


def test_an_output_that_is_not_a_softmax_is_cast_to_float32() -> None:
    net = nn.Sequential(nn.Linear(5, 3)).eval()
    low = lower(torch.fx.symbolic_trace(net))
    with torch.inference_mode():
        out = low(torch.ones(2, 5))
    assert out.dtype == torch.float32
    assert (out - net(torch.ones(2, 5))).abs().max() < 5e-2


def test_zoo_models_compute_logits_in_bfloat16_and_softmax_in_float32() -> None:
    torch.manual_seed(0)
    net = cnn_classifier(input_shape=(28, 28), num_classes=10).eval()
    low = lower(net)
    assert isinstance(low, ZooLowered)
    x = torch.rand(4, 28, 28)
    with torch.inference_mode():
        out = low(x)
        assert out.dtype == torch.float32
        assert torch.allclose(out.sum(-1), torch.ones(4), atol=1e-5)
        assert (out - net(x)).abs().max() < 2e-2


def test_an_untraceable_model_warns_and_runs_in_float32() -> None:
    torch.manual_seed(0)
    net = Branchy().eval()
    assert lower(net) is None
    x = torch.rand(5, 6)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="float32, not bfloat16"):
        out = FastForward(net, True, "bfloat16")(x)
    with torch.inference_mode():
        assert torch.allclose(out, net(x), atol=1e-6)


def test_to_lower_leaves_integer_tensors_alone() -> None:
    x = torch.arange(6).reshape(2, 3)
    assert to_lower(x, torch.bfloat16) is x
    assert to_lower(torch.zeros(2, 3), torch.bfloat16).dtype == torch.bfloat16


def _detector(precision: str = "bfloat16", optimize: bool = True) -> ModelDistillation:
    torch.manual_seed(1)
    return ModelDistillation(
        distilled_model=Net(),
        model=_trained(),
        optimize=optimize,
        precision=precision,
    )


def test_bfloat16_scores_track_float32_scores() -> None:
    ad = _detector("float32")
    X = _x(300)
    ad.fit(X, epochs=2, verbose=False, seed=0)
    ref = ad.score(X)
    low = ModelDistillation.from_config({**ad.get_config(), "precision": "bfloat16"})
    before = [p.detach().clone() for p in ad.distilled_model.parameters()]
    scores = low.score(X)
    assert scores.dtype == ref.dtype and scores.shape == ref.shape
    assert spearmanr(ref, scores)[0] > 0.99
    assert np.median(np.abs(scores - ref) / np.maximum(ref, 1e-6)) < 0.1
    # the student was not modified and stays in its mode
    after = list(ad.distilled_model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    low.distilled_model.train()
    low.score(X[:10])
    assert low.distilled_model.training


def test_weights_changed_between_calls_rebuild_the_bfloat16_copy() -> None:
    ad = _detector()
    X = _x(50)
    ad.infer_threshold(X, threshold_perc=90)
    first = ad.score(X)
    with torch.no_grad():
        for p in ad.distilled_model.parameters():
            p.mul_(0.5)
    assert not np.allclose(ad.score(X), first)


def test_precision_is_saved_and_loaded(tmp_path) -> None:
    ad = _detector()
    X = _x(40)
    ad.fit(X, epochs=1, verbose=False, seed=0)
    ad.infer_threshold(X, threshold_perc=95)
    # the models are the user's own classes: the loader is given them back
    save_detector(ad, tmp_path / "det")
    loaded = load_detector(tmp_path / "det", model=_trained(), distilled_model=Net())
    assert loaded.precision == "bfloat16" and loaded.optimize
    assert ad.get_config()["precision"] == "bfloat16"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "float16"}, "precision must be one of"),
        ({"precision": 16}, "precision must be one of"),
        ({"precision": "bfloat16", "optimize": False}, "pass optimize=True"),
    ],
)
def test_bad_precision_fails_at_the_constructor(kwargs: dict, match: str) -> None:
    kwargs = {"optimize": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        ModelDistillation(distilled_model=Net(), model=_trained(), **kwargs)


def test_a_keras_model_refuses_bfloat16() -> None:
    keras = pytest.importorskip("keras")
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="distilled_model is a Keras model"):
            ModelDistillation(
                distilled_model=student,
                model=lambda x: np.full((len(x), 3), 1 / 3),
                optimize=True,
                precision="bfloat16",
            )
