"""A user's own teacher and data: .keras (safe mode), ONNX, module:factory + safetensors, arrays
and image folders, with clear errors for what is missing or unsafe."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from distilldetect import ModelDistillation
from distilldetect.datasets.user import load_user_data
from distilldetect.models import build_model, load_classifier

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_onnx_teacher_exported_by_torch(digits, digits_teacher, digits_onnx, tmp_path):
    path = digits_onnx
    teacher = load_classifier(path)
    X = digits[2][:100]
    with torch.no_grad():
        expected = digits_teacher(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(teacher(X), expected, rtol=1e-5, atol=1e-6)
    student = build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(8,))
    ad = ModelDistillation(distilled_model=student, model=teacher).fit(X, epochs=1, verbose=False)
    assert ad.teacher_framework == "callable" and np.isfinite(ad.score(X)).all()
    with pytest.raises(ValueError, match="could not process a batch of shape"):
        teacher(np.zeros((3, 5), dtype=np.float32))
    (tmp_path / "bad.onnx").write_bytes(b"not protobuf")
    with pytest.raises(ValueError, match="is not a valid ONNX model"):
        load_classifier(tmp_path / "bad.onnx")


def test_factory_with_safetensors_weights(digits, digits_teacher, tmp_path, monkeypatch):
    import safetensors.torch

    (tmp_path / "user_nets.py").write_text(
        textwrap.dedent(
            """
            from distilldetect.models import build_model

            def make():
                return build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(64,))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "teacher.safetensors"
    safetensors.torch.save_file(digits_teacher.state_dict(), weights)
    teacher = load_classifier("user_nets:make", weights=weights)
    X = torch.from_numpy(digits[2][:50])
    with torch.no_grad():
        torch.testing.assert_close(teacher.eval()(X), digits_teacher.eval()(X))
    torch.save(digits_teacher.state_dict(), tmp_path / "teacher.pt")
    with pytest.raises(ValueError, match="pickles, which can run code"):
        load_classifier("user_nets:make", weights=tmp_path / "teacher.pt")
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="does not match the weights"):
        load_classifier("user_nets:make", weights=other)
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        load_classifier("no_such_module:make")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_classifier("user_nets:nope")
    sys.modules.pop("user_nets", None)


def test_keras_file_in_safe_mode(digits, tmp_path):
    keras = pytest.importorskip("keras")
    model = build_model("mlp", "tensorflow", input_shape=(8, 8), num_classes=10, hidden=(8,))
    model.save(tmp_path / "teacher.keras")
    loaded = load_classifier(tmp_path / "teacher.keras")
    X = digits[2][:20]
    np.testing.assert_allclose(loaded(X, training=False), model(X, training=False), rtol=1e-6)
    lam = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2)])
    lam.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="Lambda layer holds Python code"):
        load_classifier(tmp_path / "lambda.keras")


def _rewrite_keras(src, dst, change):
    """A copy of the .keras archive ``src`` with its config.json changed by ``change(config)``."""
    import json
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "config.json":
                config = json.loads(data)
                change(config)
                data = json.dumps(config).encode()
            zout.writestr(info, data)


def _dense_configs(config):
    todo, out = [config], []
    while todo:
        v = todo.pop()
        if isinstance(v, list):
            todo.extend(v)
        elif isinstance(v, dict):
            if v.get("class_name") == "Dense":
                out.append(v["config"])
            todo.extend(v.values())
    return out


@pytest.mark.parametrize(
    "units, message",
    [(10**9, "asks for units=1000000000, more than 1048576"), (500_000, "declares at least")],
)
def test_keras_file_with_absurd_architecture_is_refused_before_building(tmp_path, units, message):
    """A .keras config asking for layers far larger than its weights is refused before Keras
    allocates them (a hand-edited or hostile file)."""
    pytest.importorskip("keras")
    model = build_model("mlp", "tensorflow", input_shape=(8, 8), num_classes=10, hidden=(8,))
    model.save(tmp_path / "teacher.keras")

    def widen(config):
        _dense_configs(config)[-1]["units"] = units

    _rewrite_keras(tmp_path / "teacher.keras", tmp_path / "wide.keras", widen)
    with pytest.raises(ValueError, match=message):
        load_classifier(tmp_path / "wide.keras")
    (tmp_path / "zip.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip file"):
        load_classifier(tmp_path / "zip.keras")


@pytest.mark.parametrize("name", ["model.pt", "model.pkl", "model.h5"])
def test_unsafe_or_unknown_files_are_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ValueError, match="can run code"):
        load_classifier(tmp_path / name)
    with pytest.raises(ValueError, match="neither a file nor"):
        load_classifier(tmp_path / "missing.onnx")


def test_numpy_data_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        np.save(tmp_path / f"x_{split}.npy", rng.integers(0, 255, (n, 8, 8), dtype=np.uint8))
        np.save(tmp_path / f"y_{split}.npy", rng.integers(0, 3, n))
    (x_tr, y_tr), (x_te, y_te) = load_user_data(tmp_path)
    assert x_tr.shape == (30, 8, 8) and y_te.shape == (10,) and y_tr.dtype == np.int64
    (tmp_path / "y_test.npy").unlink()
    with pytest.raises(ValueError, match="lacks y_test.npy"):
        load_user_data(tmp_path)
    np.save(tmp_path / "y_test.npy", np.array([{"a": 1}] * 10, dtype=object))
    with pytest.raises(ValueError, match="cannot be read without pickle"):
        load_user_data(tmp_path)


def test_image_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "flat" / cls).mkdir(parents=True)
        for i in range(10):
            img = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "flat" / cls / f"{i}.png")
    data = load_user_data(tmp_path / "flat", test_fraction=0.2, seed=0)
    (x_tr, y_tr), (x_te, y_te) = data
    assert data.classes == ["cat", "dog"] and x_tr.shape == (16, 12, 12, 3) and len(x_te) == 4
    assert sorted(np.bincount(y_te)) == [2, 2]  # stratified
    again = load_user_data(tmp_path / "flat", test_fraction=0.2, seed=0)
    assert np.array_equal(again[1][0], x_te)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "flat" / "dog" / "odd.png")
    with pytest.raises(ValueError, match=r"odd\.png is an image of shape \(5, 5, 3\)"):
        load_user_data(tmp_path / "flat")
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(ValueError, match="at least two"):
        load_user_data(tmp_path / "one")
