"""The study on the shipped models (--pretrained) and on a user's own data and teacher (--data,
--teacher .onnx / module:factory), with the fitted detector saved in the output folder."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

from distilldetect import ModelDistillation, load_detector
from distilldetect.cli import main
from distilldetect.experiments import harmful_drift as hd
from distilldetect.experiments.config import StudyConfig
from distilldetect.fetching import pretrained_info

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SMALL = [
    "--corruptions", "gaussian_noise,contrast",
    "--severities", "1,5",
    "--n-eval", "150",
    "--n-ref", "100",
    "--n-batches", "5",
    "--n-draws", "1",
    "--batch-size", "20",
    "--power-batch-sizes", "10,20",
    "--fractions", "0,0.5",
    "-q",
]  # fmt: skip


@pytest.fixture
def digits_folder(tmp_path, digits):
    """scikit-learn digits as a user's numpy data folder of uint8 8x8 images."""
    X_train, y_train, X_test, y_test = digits
    folder = tmp_path / "digits"
    folder.mkdir()
    np.save(folder / "x_train.npy", np.round(X_train * 255).astype(np.uint8))
    np.save(folder / "y_train.npy", y_train)
    np.save(folder / "x_test.npy", np.round(X_test * 255).astype(np.uint8))
    np.save(folder / "y_test.npy", y_test)
    return folder


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_shipped_recipe_is_the_studys_default():
    """--pretrained stands for the default study: the shipped models must be made with its
    settings (scripts/make_pretrained.py reads them from StudyConfig)."""
    recipe = pretrained_info("fashion_mnist")["recipe"]
    cfg = StudyConfig()
    name, kwargs = cfg.student_spec()
    student = recipe["student"]
    assert (student["builder"], student["kwargs"]) == (name, kwargs)
    assert student["loss_type"] == cfg.loss_type
    assert student["temperature"] == cfg.temperature
    assert student["augment"] == cfg.augment
    assert student["epochs"] == cfg.student_epochs
    teacher = recipe["teacher"]
    assert (teacher["builder"], teacher["kwargs"]) == cfg.teacher_spec()
    assert teacher["epochs"] == cfg.teacher_epochs


@pytest.mark.slow
def test_pretrained_study_trains_nothing_and_saves_its_detector(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["experiment", "--pretrained", "--quick", "--out", str(out), *SMALL])
    assert code == 0, capsys.readouterr().err
    res = _results(out)
    assert res["config"]["pretrained"] is True
    assert res["config"]["teacher"].startswith("pretrained")
    assert "teacher" not in res["timings"] or res["timings"]["teacher"] < 30
    assert res["teacher_accuracy"] > 0.88  # the shipped teacher scores 0.91 on the test set
    assert res["config"]["student"] == pretrained_info()["recipe"]["student"]["builder"]
    ad = load_detector(out / "detector")
    assert isinstance(ad, ModelDistillation) and ad.threshold is not None
    assert set(res["severities"]) == {"1", "5"}
    # running again into the same folder replaces the study's own files, detector included
    assert main(["experiment", "--pretrained", "--quick", "--out", str(out), *SMALL]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "1"], "temperature would need training"),
        (["--split", "validation"], "validation split"),
        (["--dataset", "cifar10"], "for fashion_mnist"),
    ],
)
def test_pretrained_refuses_settings_it_cannot_honour(tmp_path, capsys, extra, message):
    code = main(["experiment", "--pretrained", "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_pretrained_and_teacher_are_exclusive(tmp_path, capsys):
    code = main(["experiment", "--pretrained", "--teacher", str(tmp_path)])
    assert code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.slow
def test_user_numpy_data_trains_sized_models_and_caches_by_content(tmp_path, digits_folder, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["experiment", "--data", str(digits_folder), "--cache-dir", str(cache), *SMALL]
    args += ["--teacher-epochs", "3", "--student-epochs", "2", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    res = _results(out)
    assert res["dataset"] == "user"
    assert res["config"]["teacher_arch"]["kwargs"]["input_shape"] == [8, 8]
    assert res["config"]["student_kwargs"]["num_classes"] == 10
    assert res["teacher_accuracy"] > 0.5
    assert load_detector(out / "detector").threshold is not None
    # the cached teacher is keyed by the data's content: other data, another teacher
    (teachers,) = [list((cache / "teachers").iterdir())]
    other = tmp_path / "other"
    other.mkdir()
    for f in digits_folder.iterdir():
        a = np.load(f)
        np.save(other / f.name, a[::-1].copy() if f.name.startswith("x_train") else a)
    from distilldetect.experiments import stages

    cfg_a = StudyConfig(data=str(digits_folder), teacher_epochs=3)
    cfg_b = StudyConfig(data=str(other), teacher_epochs=3)
    key_a = stages.teacher_key(cfg_a, stages.load_data(cfg_a, raw_only=True))
    key_b = stages.teacher_key(cfg_b, stages.load_data(cfg_b, raw_only=True))
    assert key_a != key_b and teachers[0].name == key_a


@pytest.mark.slow
def test_user_onnx_teacher_is_studied_and_saved_with_its_graph(
    tmp_path, digits_folder, digits, digits_teacher, digits_onnx, capsys
):
    import torch

    path = digits_onnx
    out = tmp_path / "out"
    args = ["experiment", "--data", str(digits_folder), "--teacher", str(path)]
    args += ["--preprocess", "unit", "--student-epochs", "2", "--out", str(out), *SMALL]
    assert main(args) == 0, capsys.readouterr().err
    res = _results(out)
    assert res["config"]["teacher"] == f"loaded from {path}"
    assert res["teacher_accuracy"] > 0.9  # the digits MLP: ~0.97, on x / 255 inputs
    path.unlink()  # the saved detector holds the graph itself
    ad = load_detector(out / "detector")
    X_test = digits[2][:50]
    with torch.no_grad():
        expected = digits_teacher(torch.from_numpy(X_test)).numpy()
    np.testing.assert_allclose(ad.model(X_test), expected, rtol=1e-5, atol=1e-6)


def test_user_factory_teacher_with_wrong_preprocessing_shape_is_refused(
    tmp_path, digits_folder, capsys, monkeypatch
):
    (tmp_path / "user_nets_exp.py").write_text(
        textwrap.dedent(
            """
            from distilldetect.models import build_model

            def make():
                return build_model("mlp", input_shape=(28, 28), num_classes=10, hidden=(8,))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(
        ["experiment", "--data", str(digits_folder), "--teacher", "user_nets_exp:make"]
        + ["--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    sys.modules.pop("user_nets_exp", None)
    assert code == 2 and "does not take the data's images of shape (8, 8)" in err


@pytest.mark.parametrize(
    "files, message",
    [
        (["x_train.npy", "y_train.npy", "x_test.npy"], "lacks y_test.npy"),
        ([], "lacks x_train.npy"),
    ],
)
def test_user_data_missing_files_named(tmp_path, digits_folder, capsys, files, message):
    folder = tmp_path / "partial"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes((digits_folder / name).read_bytes())
    if not files:
        (folder / "notes.txt").write_text("no arrays here")
    code = main(["experiment", "--data", str(folder), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    if files:
        assert message in err
    else:
        assert "class" in err  # an image folder then: it names what it needs


def test_user_data_of_non_images_is_refused(tmp_path, capsys):
    folder = tmp_path / "tab"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("test", 20)):
        np.save(folder / f"x_{split}.npy", rng.normal(size=(n, 5)).astype(np.float32))
        np.save(folder / f"y_{split}.npy", rng.integers(0, 2, n))
    code = main(["experiment", "--data", str(folder), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "the study corrupts images" in err


def test_data_and_dataset_conflict_is_one_line(tmp_path, digits_folder, capsys):
    code = main(["experiment", "--data", str(digits_folder), "--dataset", "cifar10"])
    err = capsys.readouterr().err
    assert code == 2 and "dataset must be 'user'" in err


def test_quick_config_with_pretrained_sets_no_training_field():
    cfg = hd.quick_config(pretrained=True).validate()
    assert (
        cfg.pretrained
        and cfg.n_train is None
        and cfg.student_epochs == StudyConfig().student_epochs
    )
