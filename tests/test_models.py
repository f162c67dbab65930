"""The torch model zoo: sizes, layouts, builders and the seed's call signature."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distilldetect.backends.torch.models import (
    SameConv2d,
    build,
    cnn_classifier,
    distilled_model_cifar10,
    mlp,
    resnet,
)
from distilldetect.models import MODEL_NAMES, build_model, train_classifier


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_reference_architecture_sizes():
    assert n_params(resnet()) == 272_474  # ResNet-20, widths 16/32/64 (~0.27 M)
    assert n_params(distilled_model_cifar10()) == 709_506  # the seed's student (~0.71 M)


@pytest.mark.parametrize("size, kernel, stride", [(7, 4, 2), (8, 4, 2), (28, 3, 1), (5, 4, 2)])
def test_same_padding_matches_tensorflow_output_size(size, kernel, stride):
    out = SameConv2d(1, 1, kernel, stride=stride)(torch.zeros(1, 1, size, size))
    assert out.shape[-1] == -(-size // stride)  # ceil(size / stride), TF's 'same'


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_builder_gives_probabilities_for_numpy_layout_images(name):
    torch.manual_seed(0)
    shape = (28, 28) if name in ("cnn_classifier", "mlp") else (32, 32, 3)
    model = build_model(name, input_shape=shape).eval()
    x = torch.rand(3, *shape)
    p = model(x)
    assert p.shape == (3, 10)
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    again = build(model.builder_config["name"], **model.builder_config["kwargs"])
    assert type(again) is type(model) and n_params(again) == n_params(model)


def test_grayscale_with_and_without_channel_axis():
    torch.manual_seed(0)
    m = distilled_model_cifar10((28, 28), nb_filters1=16).eval()
    x = torch.rand(2, 28, 28)
    torch.testing.assert_close(m(x), m(x[..., None]))


def test_seed_signature_takes_the_classifier_first():
    torch.manual_seed(0)
    clf = cnn_classifier((28, 28), num_classes=7)
    student = distilled_model_cifar10(clf, nb_filters1=16, nb_dense=8)
    assert student.builder_config["kwargs"]["input_shape"] == [28, 28]
    assert student(torch.rand(2, 28, 28)).shape == (2, 7)
    with pytest.raises(ValueError, match="input_shape"):
        distilled_model_cifar10(torch.nn.Linear(3, 2))


def test_cnn_with_even_kernel_on_odd_size():
    assert cnn_classifier((9, 9, 2), kernel_size=4)(torch.zeros(2, 9, 9, 2)).shape == (2, 10)


def test_unknown_builder_and_framework():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg")
    with pytest.raises(ValueError, match="framework"):
        build_model("mlp", framework="jax")


def test_train_classifier_learns_digits(digits):
    X, y, Xt, yt = digits
    torch.manual_seed(0)
    model = mlp((8, 8), 10, (32,))
    history = train_classifier(model, X, y, epochs=5, learning_rate=1e-2, seed=0, verbose=False)
    assert history[-1] < history[0]
    with torch.no_grad():
        acc = (model(torch.from_numpy(Xt)).argmax(1).numpy() == yt).mean()
    assert acc > 0.9
    with pytest.raises(ValueError, match="one label per instance"):
        train_classifier(model, X, y[:-1], verbose=False)
    with pytest.raises(ValueError, match="integer"):
        train_classifier(model, X, y.astype(np.float32), verbose=False)


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_build_model_seed_fixes_the_initial_weights(framework):
    if framework == "tensorflow":
        pytest.importorskip("tensorflow")

    def weights(seed):
        model = build_model("cnn_classifier", framework, input_shape=(12, 12), seed=seed)
        if framework == "pytorch":
            return [p.detach().numpy().copy() for p in model.parameters()]
        return [np.asarray(w) for w in model.get_weights()]

    a, b, c = weights(3), weights(3), weights(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_build_model_refuses_a_bad_seed(seed):
    with pytest.raises((ValueError, TypeError), match="seed"):
        build_model("cnn_classifier", input_shape=(12, 12), seed=seed)
