"""Shared fixtures: small real data (scikit-learn digits) and quickly trained torch models."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits as float32 images (n, 8, 8) in [0, 1]: (X_train, y_train, X_test, y_test)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = (data.images / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    X, y = X[order], y[order]
    return X[:1200], y[:1200], X[1200:], y[1200:]


def train_classifier(model, X, y, epochs=30, seed=0, lr=3e-3):
    """Supervised training of a torch softmax classifier (used to make teachers in tests)."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(Xt), generator=g)
        for i in range(0, len(Xt), 64):
            idx = perm[i : i + 64]
            probs = model(Xt[idx])
            loss = torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-7)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


@pytest.fixture(scope="session")
def digits_teacher(digits):
    """A torch MLP teacher trained on digits (~97 % test accuracy)."""
    import torch

    from distilldetect.backends.pytorch_models import mlp

    X_train, y_train, _, _ = digits
    torch.manual_seed(0)
    return train_classifier(mlp((8, 8), 10, (64,)), X_train, y_train)


@pytest.fixture
def make_student():
    """Factory of small, seeded torch students for 8x8 digits."""
    import torch

    from distilldetect.backends.pytorch_models import mlp

    def make(seed: int = 1, hidden=(16,)):
        torch.manual_seed(seed)
        return mlp((8, 8), 10, hidden)

    return make
