"""The study on CIFAR-10: local binary CIFAR-10 files, real CIFAR-10-C files when present."""

from __future__ import annotations

import numpy as np
import pytest

from distilldetect.datasets import cifar10 as c10
from distilldetect.experiments import harmful_drift as hd

N_TEST = 120


def write_cifar(directory, seed=0):
    """CIFAR-10 binary batches (60 train images each, N_TEST test images), the real record layout."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    test = None
    for name in (*c10.TRAIN_FILES, c10.TEST_FILE):
        n = N_TEST if name == c10.TEST_FILE else 60
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        planes = images.transpose(0, 3, 1, 2).reshape(n, -1)
        (directory / name).write_bytes(np.concatenate([labels[:, None], planes], axis=1).tobytes())
        if name == c10.TEST_FILE:
            test = (images, labels)
    return test


def study(tmp_path, data_dir, **kw):
    cfg = dict(
        dataset="cifar10",
        data_dir=str(data_dir),
        corruptions=["contrast"],
        severities=[2],
        teacher_epochs=1,
        student_epochs=1,
        student_kwargs={"nb_filters1": 16, "nb_dense": 8},
        n_eval=50,
        n_ref=50,
        n_batches=3,
        batch_size=20,
        fractions=[0.0, 0.5],
        power_batch_sizes=[10, 20],
        cache_dir=str(tmp_path / "cache"),
        out=str(tmp_path / "out"),
        verbose=False,
    )
    cfg.update(kw)
    return hd.run(hd.StudyConfig(**cfg))


@pytest.mark.slow
def test_cifar10_study_uses_real_cifar10c_files_when_present(tmp_path):
    data = tmp_path / "data"
    images, labels = write_cifar(data)
    generated = study(tmp_path, data)
    assert generated.config["corruption_source"].startswith("generated")

    # CIFAR-10-C layout: <name>.npy with 5 severity blocks of the test set, and labels.npy.
    # Black images stand in for the corruption so that their use is visible in the accuracy.
    blocks = np.zeros((5 * N_TEST, 32, 32, 3), dtype=np.uint8)
    np.save(data / "contrast.npy", blocks)
    np.save(data / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    real = study(tmp_path, data, out=str(tmp_path / "out2"))
    assert real.config["corruption_source"] == "CIFAR-10-C files"
    assert "cached" in real.config["teacher"]
    # every corrupted image is identical (black), so the teacher predicts one class for all
    per = real.severities["2"]["per_corruption"]["contrast"]
    assert per["accuracy"] == pytest.approx(
        np.mean(labels == np.bincount(labels).argmax()), abs=0.2
    )
