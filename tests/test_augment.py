"""AugMix-style augmentation and robust distillation (augment_fn)."""

from __future__ import annotations

import numpy as np
import pytest

from distilldetect import ModelDistillation
from distilldetect.augment import OPERATIONS, augmix, make_augment_fn


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(size=(6, 12, 10)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_each_operation_keeps_shape_dtype_and_range(images, name):
    x4 = images[..., None]
    out = OPERATIONS[name](x4, np.random.default_rng(1), 0.5)
    assert out.shape == x4.shape and out.dtype == x4.dtype
    lo, hi = x4.min(axis=(1, 2, 3)), x4.max(axis=(1, 2, 3))
    assert (out.min(axis=(1, 2, 3)) >= lo - 1e-5).all() and (
        out.max(axis=(1, 2, 3)) <= hi + 1e-5
    ).all()


def test_augmix_is_seeded_changes_images_and_keeps_the_input(images):
    before = images.copy()
    a = augmix(images, np.random.default_rng(3))
    b = augmix(images, np.random.default_rng(3))
    c = augmix(images, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.allclose(a, images)
    np.testing.assert_array_equal(images, before)
    rgb = np.random.default_rng(0).random((3, 8, 8, 3))
    assert augmix(rgb, np.random.default_rng(0)).shape == rgb.shape


def test_affine_identity_and_flip_by_hand():
    x = np.arange(2 * 4 * 5, dtype=np.float64).reshape(2, 4, 5, 1)
    out = OPERATIONS["translate"](x, np.random.default_rng(0), 1e-12)
    np.testing.assert_allclose(out, x, atol=1e-6)
    flipped = OPERATIONS["flip"](x, np.random.default_rng(0), 1.0)
    for i in range(2):
        assert np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1])


def test_augmix_bad_input(images):
    with pytest.raises(ValueError, match="operations"):
        augmix(images, np.random.default_rng(0), operations=("blur",))
    with pytest.raises(TypeError, match="rng"):
        augmix(images, 0)
    with pytest.raises(ValueError, match="level"):
        augmix(images, np.random.default_rng(0), level=2)
    with pytest.raises(ValueError, match="name"):
        make_augment_fn("cutmix")


def test_fit_with_augment_fn_keeps_teacher_cache_and_is_seeded(
    digits, digits_teacher, make_student
):
    X = digits[0][:300]
    seen = []
    handle = digits_teacher.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    weights = []
    try:
        for _ in range(2):
            ad = ModelDistillation(distilled_model=make_student(), model=digits_teacher)
            ad.fit(X, epochs=2, batch_size=100, verbose=False, seed=5, augment_fn=make_augment_fn())
            weights.append([p.detach().clone() for p in ad.distilled_model.parameters()])
    finally:
        handle.remove()
    assert sum(seen) == 2 * (2 + len(X)), "the teacher ran more than once per instance"
    assert all((a == b).all() for a, b in zip(*weights, strict=True))


def test_augment_fn_must_keep_the_shape(digits, digits_teacher, make_student):
    ad = ModelDistillation(distilled_model=make_student(), model=digits_teacher)
    with pytest.raises(TypeError, match="augment_fn must return"):
        ad.fit(digits[0][:50], verbose=False, augment_fn=lambda x, rng: x[:, :4])
