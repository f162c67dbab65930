"""predict_batch and scale_by_instance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distilldetect import predict_batch, scale_by_instance
from distilldetect.backends import framework_of


def test_scale_by_instance_by_hand():
    x = np.arange(2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)
    x[1] = 5.0  # a constant instance
    out = scale_by_instance(x)
    first = x[0].ravel()
    np.testing.assert_allclose(
        out[0].ravel(), (first - first.mean()) / (first.std() + 1e-12), rtol=1e-6
    )
    np.testing.assert_array_equal(out[1], 0.0)
    assert out.dtype == np.float32
    assert scale_by_instance(np.ones((2, 3), dtype=np.uint8)).dtype == np.float64
    np.testing.assert_allclose(out[0].std(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[0].mean(), 0.0, atol=1e-6)


def test_scale_by_instance_bad_input():
    with pytest.raises(ValueError, match="at least 2 axes"):
        scale_by_instance(np.ones(3))
    with pytest.raises(TypeError, match="numpy array"):
        scale_by_instance([[1.0, 2.0]])
    with pytest.raises(ValueError, match="eps"):
        scale_by_instance(np.ones((2, 2)), eps=-1)


def test_predict_batch_torch_module_restores_mode_and_matches_full_batch():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)
    ).train()
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    out = predict_batch(x, net, batch_size=7)
    assert net.training, "predict_batch did not restore the training mode"
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)  # dropout was off: eval mode


def test_predict_batch_callable_preprocess_tuple_and_dtype():
    x = np.arange(10.0).reshape(5, 2)
    calls = []

    def model(b):
        calls.append(len(b))
        return b.sum(axis=1, keepdims=True), b * 2

    a, b = predict_batch(x, model, batch_size=2, preprocess_fn=lambda c: c + 1, dtype=np.float32)
    assert calls == [2, 2, 1]
    np.testing.assert_array_equal(a[:, 0], (x + 1).sum(1))
    np.testing.assert_array_equal(b, (x + 1) * 2)
    assert a.dtype == np.float32 and b.dtype == np.float32
    single = predict_batch(x, lambda c: c[:, 0])
    assert single.dtype == np.float64 and single.shape == (5,)


def test_predict_batch_bad_input():
    with pytest.raises(ValueError, match="batch_size"):
        predict_batch(np.ones((2, 2)), lambda c: c, batch_size=0)
    with pytest.raises(TypeError, match="preprocess_fn"):
        predict_batch(np.ones((2, 2)), lambda c: c, preprocess_fn="x")
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        predict_batch(np.ones((2, 2)), "not a model")


def test_framework_of():
    assert framework_of(torch.nn.Linear(2, 2)) == "pytorch"
    assert framework_of(len) == "callable"
    with pytest.raises(TypeError):
        framework_of(3)


def test_import_does_not_load_tensorflow():
    import subprocess
    import sys

    code = "import sys, distilldetect; print('tensorflow' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
