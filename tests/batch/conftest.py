"""Fixtures of the batch-scoring tests: small saved detectors on scikit-learn digits, and inputs."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("pyarrow")

# A module of model factories for the --model module:factory tests (and for Ray workers, which
# import it by name): a deterministic black-box teacher, a numpy function of fixed weights.
FACTORY_SOURCE = textwrap.dedent(
    '''
    import numpy as np

    def _weights():
        return np.random.default_rng(7).normal(size=(64, 10)).astype(np.float64)

    def teacher():
        """A black-box teacher: numpy in, class probabilities out."""
        w = _weights()

        def predict_proba(x):
            z = np.asarray(x, dtype=np.float64).reshape(len(x), -1) @ w
            z -= z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

        return predict_proba

    def not_a_factory_value():
        raise RuntimeError("never called")

    NOT_CALLABLE = 3
    '''
)


@pytest.fixture(scope="session")
def X_digits():
    from sklearn.datasets import load_digits

    return (load_digits().images / 16.0).astype(np.float32)  # (1797, 8, 8)


@pytest.fixture(scope="session")
def factory_dir(tmp_path_factory):
    """A folder on sys.path holding ``dd_batch_models.py`` (the factories above)."""
    d = tmp_path_factory.mktemp("factories")
    (d / "dd_batch_models.py").write_text(FACTORY_SOURCE)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))
    sys.modules.pop("dd_batch_models", None)


@pytest.fixture(scope="session")
def detectors(tmp_path_factory, X_digits, factory_dir):
    """Saved detectors: ``md`` (threshold set), ``nothr``, ``drift``, ``drift_update``, ``blackbox``."""
    import torch

    from distilldetect import ModelDistillation, save_detector
    from distilldetect.models import build_model, train_classifier

    X = X_digits
    from sklearn.datasets import load_digits

    y = load_digits().target.astype(np.int64)
    torch.manual_seed(0)
    teacher = build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(32,))
    train_classifier(teacher, X[:1000], y[:1000], epochs=5, seed=0, verbose=False)
    torch.manual_seed(1)
    student = build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(8,))
    ad = ModelDistillation(distilled_model=student, model=teacher)
    ad.fit(X[:1000], epochs=2, seed=0, verbose=False)
    root = tmp_path_factory.mktemp("detectors")
    save_detector(ad, root / "nothr")
    ad.infer_threshold(X[1000:1300], threshold_perc=90)
    save_detector(ad, root / "md")
    save_detector(ad.drift_detector(X[1000:1300], p_val=0.05), root / "drift")
    save_detector(
        ad.drift_detector(X[1000:1300], p_val=0.05, update_x_ref={"last": 200}),
        root / "drift_update",
    )

    import dd_batch_models

    torch.manual_seed(2)
    student2 = build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(8,))
    bb = ModelDistillation(distilled_model=student2, model=dd_batch_models.teacher())
    bb.fit(X[:600], epochs=1, seed=0, verbose=False)
    bb.infer_threshold(X[1000:1300], threshold_perc=90)
    save_detector(bb, root / "blackbox")
    return {name: root / name for name in ("md", "nothr", "drift", "drift_update", "blackbox")}


@pytest.fixture(scope="session")
def ad(detectors):
    """A fresh load of the ``md`` detector (the reference for score equality)."""
    from distilldetect import load_detector

    return load_detector(detectors["md"])


def _probs_of(ad, X):
    """The teacher's probabilities of X (as a monitoring system would log them)."""
    from distilldetect import predict_batch

    return np.asarray(predict_batch(X, ad.model, batch_size=512), dtype=np.float32)


@pytest.fixture(scope="session")
def probs_of():
    return _probs_of


@pytest.fixture(scope="session")
def make_parquet():
    return _write_parquet


def _write_parquet(path, X, *, probs=None, ids=None, layout="fixed", row_group_size=None):
    """X as a Parquet column ``x`` (``fixed``: nested fixed-size lists, ``tensor``:
    fixed_shape_tensor, ``list``: nested variable lists), with optional ``probs`` and ``id``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if layout == "tensor":
        col = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(X))
    elif layout == "fixed":
        col = pa.array(np.ascontiguousarray(X).reshape(-1))
        for dim in reversed(X.shape[1:]):
            col = pa.FixedSizeListArray.from_arrays(col, dim)
    else:
        col = pa.array([row.tolist() for row in X])
    columns = {"x": col}
    if probs is not None:
        columns["probs"] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(probs).reshape(-1)), probs.shape[1]
        )
    if ids is not None:
        columns["id"] = pa.array(ids)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path
