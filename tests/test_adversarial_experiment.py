"""``distilldetect adversarial``: --quick end to end, and its one-line errors."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from distilldetect.cli import main  # noqa: E402
from distilldetect.datasets import load_fashion_mnist  # noqa: E402
from distilldetect.experiments import adversarial as adv  # noqa: E402


def _have_fashion_mnist() -> bool:
    try:
        load_fashion_mnist(verbose=False, download_if_missing=False)
    except (FileNotFoundError, OSError, ValueError, TypeError):
        return False
    return True


needs_data = pytest.mark.skipif(not _have_fashion_mnist(), reason="Fashion-MNIST not available")

ENTRY_KEYS = {
    "eps",
    "attack_success_rate",
    "n_adversarial",
    "auroc",
    "tpr_at_fpr",
    "mean_l2",
    "mean_linf",
}
ADAPTIVE_KEYS = {"eps", "lambda", "attack_success_rate", "undetected_success_rate", "auroc"}


def _rate(v) -> bool:
    return v is None or (isinstance(v, float) and 0.0 <= v <= 1.0)


@needs_data
def test_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "adv"
    argv = ["adversarial", "--quick", "--out", str(out), "-q", "--defence", "ensemble,robust"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "results:" in printed and "adaptive eps=0.5" in printed
    data = json.loads((out / "results.json").read_text())
    for key in ("dataset", "teacher_accuracy", "config", "fpr", "attacks", "adaptive"):
        assert key in data
    assert data["dataset"] == "fashion_mnist" and data["fpr"] == 0.05
    assert 0.85 < data["teacher_accuracy"] <= 1.0
    assert "pretrained" in data["config"]["detector"]
    assert set(data["attacks"]) == {"fgsm", "pgd", "cw", "blackbox"}
    for name, entries in data["attacks"].items():
        assert [e["eps"] for e in entries] == [0.5]
        for e in entries:
            assert set(e) == ENTRY_KEYS, name
            assert _rate(e["attack_success_rate"])
            assert isinstance(e["n_adversarial"], int) and 0 <= e["n_adversarial"] <= 100
            assert (
                set(e["auroc"]) == set(e["tpr_at_fpr"]) == {"distillation", "entropy", "max_prob"}
            )
            assert all(_rate(v) for v in [*e["auroc"].values(), *e["tpr_at_fpr"].values()])
            if e["n_adversarial"]:
                assert e["mean_linf"] <= 0.5 + 1e-5 and e["mean_l2"] > 0
    # the gradient attacks succeed at this budget, and the detector sees FGSM / PGD / C&W
    for name in ("fgsm", "pgd", "cw"):
        e = data["attacks"][name][0]
        assert e["attack_success_rate"] > 0.8, name
        assert e["auroc"]["distillation"] > 0.7, name
    assert [(e["eps"], e["lambda"]) for e in data["adaptive"]] == [(0.5, 0.0), (0.5, 0.1)]
    for e in data["adaptive"]:
        assert set(e) == ADAPTIVE_KEYS
        assert _rate(e["undetected_success_rate"]) and _rate(e["attack_success_rate"])
        assert e["undetected_success_rate"] <= e["attack_success_rate"]
    # the attacker who keeps, per image, a lambda that works does at least as well as any one
    (any_l,) = data["adaptive_any_lambda"]
    assert any_l["eps"] == 0.5
    best = max(e["undetected_success_rate"] for e in data["adaptive"])
    assert best <= any_l["undetected_success_rate"] <= 1.0
    assert "any lambda: undetected" in printed
    d = data["defence"]
    assert d["n_students"] == 2 and d["n_surrogates"] == 1 and d["eps"] == 0.5
    for key in ("gray_box", "white_box"):
        assert [e["lambda"] for e in d[key]] == [0.0, 0.1]
        assert all(set(e) == ADAPTIVE_KEYS for e in d[key])
    r = data["defence_robust"]
    assert r["eps"] == 0.5 and r["student"]["train_eps"] == 0.5 and r["student"]["epochs"] >= 1
    assert set(r["attacks"]) == {"fgsm", "pgd", "cw", "blackbox"}
    assert all(set(e) == ENTRY_KEYS for v in r["attacks"].values() for e in v)
    # the oblivious attacks' very images, rescored: same success, other scores
    for name, entries in r["attacks"].items():
        assert entries[0]["attack_success_rate"] == data["attacks"][name][0]["attack_success_rate"]
    assert [e["lambda"] for e in r["white_box"]] == [0.0, 0.1, 100.0, 1000.0]
    assert [e["lambda"] for e in r["gray_box"]] == [0.0, 0.1]  # the plain detector's images
    for e in [*r["white_box"], *r["gray_box"]]:
        assert set(e) == ADAPTIVE_KEYS and e["undetected_success_rate"] <= e["attack_success_rate"]
    (w_any,) = r["white_box_any_lambda"]
    assert w_any["undetected_success_rate"] >= max(
        e["undetected_success_rate"] for e in r["white_box"]
    )
    assert len(r["gray_box_any_lambda"]) == 1 and len(d["white_box_any_lambda"]) == 1
    pair = r["pair"]
    assert pair["reduce"] == "mean" and set(pair["attacks"]) == set(r["attacks"])
    assert [e["lambda"] for e in pair["white_box"]] == [0.0, 0.1, 100.0, 1000.0]
    assert pair["thresholds"]["distillation"] != r["thresholds"]["distillation"]
    assert "robust + plain pair adaptive eps=0.5 any lambda" in printed
    assert r["worst_white_box"]["undetected_success_rate"] == max(
        e["undetected_success_rate"] for e in r["white_box"]
    )
    for name in (
        "report.md",
        "roc_fgsm.png",
        "roc_pgd.png",
        "roc_cw.png",
        "roc_blackbox.png",
        "detection_vs_eps.png",
        "adaptive.png",
        "examples.png",
    ):
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
    assert (out / "roc_pgd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Adaptive attack" in report and "gray-box" in report
    assert "## Defence: a robust (adversarially distilled) student" in report
    assert "### The pair: mean of the plain and the robust student's scores" in report


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--attacks", "fgsm,deepfool"], "unknown attack"),
        (["--eps", "0"], "eps must be a finite number > 0"),
        (["--eps", "0.1,-0.2"], "eps must be a finite number > 0"),
        (["--eps", "nan"], "eps must be a finite number > 0"),
        (["--eps", "inf"], "eps must be a finite number > 0"),
        (["--eps", "abc"], "expected comma-separated numbers"),
        (["--loss-type", "mse"], "invalid choice"),
        (["--dataset", "mnist"], "invalid choice"),
        (["--temperature", "-1"], "temperature must be"),
        (["--n-eval", "0"], "n_eval must be an integer >= 1"),
        (["--defence", "ensemble,magic"], "defences must be a list of 'ensemble' and/or 'robust'"),
        (["--robust-p-adv", "1.5"], "robust_p_adv must be a number in (0, 1]"),
        (["--robust-eps", "-0.1"], "robust_eps must be a finite number > 0"),
        (["--robust-epochs", "0"], "robust_epochs must be an integer >= 1"),
        (["--adaptive-steps", "0"], "adaptive_steps must be an integer >= 1"),
    ],
)
def test_cli_errors_are_one_line_exit_2(argv, match, tmp_path, capsys):
    assert main(["adversarial", "--quick", "-q", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and match in err, err


@needs_data
def test_n_eval_larger_than_the_pool(tmp_path, capsys):
    argv = ["adversarial", "--quick", "-q", "--out", str(tmp_path / "o"), "--n-eval", "9600"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "larger than the attack pool" in err, err
    assert not (tmp_path / "o" / "results.json").exists()


@needs_data
def test_black_box_teacher_refuses_gradient_attacks_naming_them(tmp_path):
    def teacher(x: np.ndarray) -> np.ndarray:  # a black box: only probabilities
        return np.full((len(x), 10), 0.1)

    cfg = adv.quick_adversarial_config(
        attacks=["fgsm", "blackbox", "adaptive"], out=str(tmp_path / "o"), verbose=False
    )
    with pytest.raises(ValueError, match=r"attacks \['fgsm', 'adaptive'\] need its gradients"):
        adv.preflight(cfg, teacher=teacher)
    adv.preflight(
        adv.quick_adversarial_config(attacks=["blackbox"], out=str(tmp_path / "o2"), verbose=False),
        teacher,
    )


@needs_data
def test_a_saved_detector_folder_as_teacher(tmp_path):
    from distilldetect.fetching import pretrained_info, pretrained_path

    out = tmp_path / "t"
    argv = ["adversarial", "--quick", "-q", "--out", str(out), "--teacher", str(pretrained_path())]
    assert main([*argv, "--attacks", "fgsm,adaptive", "--students", "1"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["detector"].startswith("saved detector")
    shipped_student = pretrained_info()["recipe"]["student"]["builder"]
    assert data["defence"]["students"]["architecture"]["name"] == shipped_student
    assert set(data["attacks"]) == {"fgsm"} and len(data["adaptive"]) == 2


def test_config_checks_name_the_setting():
    with pytest.raises(ValueError, match="lambdas must be finite numbers >= 0"):
        adv.AdversarialConfig(lambdas=[-1.0]).validate()
    with pytest.raises(ValueError, match="adaptive_eps"):
        adv.AdversarialConfig(adaptive_eps=[math.inf]).validate()
    with pytest.raises(ValueError, match="n_surrogates"):
        adv.AdversarialConfig(n_students=2, n_surrogates=0).validate()
    with pytest.raises(TypeError, match="attacks must be a list"):
        adv.AdversarialConfig(attacks="fgsm").validate()


@needs_data
def test_keras_teacher_takes_the_gradient_attacks_and_adaptive_needs_keras_students(tmp_path):
    pytest.importorskip("tensorflow")
    from distilldetect import ModelDistillation, save_detector
    from distilldetect.backends.tensorflow.runtime import keras

    def dense(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential(
            [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")]
        )

    teacher = dense(0)
    ok = adv.quick_adversarial_config(
        attacks=["fgsm", "pgd", "cw", "blackbox"], out=str(tmp_path / "o1"), verbose=False
    )
    adv.preflight(ok, teacher)
    # the adaptive attack differentiates through the students too: the study's are torch
    cfg = adv.quick_adversarial_config(attacks=["adaptive"], out=str(tmp_path / "o2"))
    with pytest.raises(ValueError, match="its students must be too"):
        adv.preflight(cfg, teacher=teacher)
    # a saved detector with a Keras student: the defences' students are copies of it
    ad = ModelDistillation(distilled_model=dense(1), model=teacher)
    save_detector(ad, tmp_path / "det")
    given = adv.quick_adversarial_config(
        attacks=["adaptive"], teacher_path=str(tmp_path / "det"), out=str(tmp_path / "o3")
    )
    adv.preflight(dataclasses.replace(given, defences=["ensemble", "robust"]))
    adv.preflight(dataclasses.replace(given, n_students=0, defences=[]))
    # the robust defence's white-box attack is adaptive too: checked without --attacks adaptive
    robust = adv.quick_adversarial_config(
        attacks=["pgd"], defences=["robust"], out=str(tmp_path / "o4")
    )
    with pytest.raises(ValueError, match="its students must be too"):
        adv.preflight(robust, teacher=teacher)


@needs_data
def test_keras_detector_gets_the_ensemble_and_robust_defences_end_to_end(tmp_path, capsys):
    """A saved detector with a Keras teacher and a Keras student: the adaptive attack and both
    defences run on Keras students (fresh copies of the detector's), by tf.GradientTape."""
    pytest.importorskip("tensorflow")
    from distilldetect import ModelDistillation, save_detector
    from distilldetect.backends.tensorflow.runtime import keras
    from distilldetect.experiments.stages import to_model_input
    from distilldetect.models import train_classifier

    (x, y), _ = load_fashion_mnist(verbose=False, download_if_missing=False)
    x, y = to_model_input(x[:6000]), y[:6000]  # the study's input scaling

    def net(seed, width):
        keras.utils.set_random_seed(seed)
        return keras.Sequential(
            [
                keras.Input((28, 28)),
                keras.layers.Flatten(),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )

    teacher = net(0, 64)
    train_classifier(teacher, x, y, epochs=2, seed=0, verbose=False)
    ad = ModelDistillation(distilled_model=net(1, 32), model=teacher, loss_type="kld")
    ad.fit(x, epochs=2, seed=0, verbose=False)
    save_detector(ad, tmp_path / "det")
    out = tmp_path / "adv"
    argv = ["adversarial", "--quick", "-q", "--out", str(out), "--teacher", str(tmp_path / "det")]
    argv += ["--attacks", "pgd,adaptive", "--students", "1", "--defence", "ensemble,robust"]
    assert main(argv) == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["detector"].startswith("saved detector")
    assert data["teacher_accuracy"] > 0.75
    arch = data["defence"]["students"]["architecture"]
    assert arch["framework"] == "tensorflow" and "fresh copies" in arch["name"]
    r = data["defence_robust"]
    assert r["student"]["architecture"] == arch
    assert data["attacks"]["pgd"][0]["attack_success_rate"] > 0.8
    for e in [*data["adaptive"], *data["defence"]["white_box"], *r["white_box"]]:
        assert set(e) == ADAPTIVE_KEYS and e["undetected_success_rate"] <= e["attack_success_rate"]
    # the oblivious PGD images rescored by the robust Keras student and by the pair
    same = data["attacks"]["pgd"][0]["attack_success_rate"]
    assert r["attacks"]["pgd"][0]["attack_success_rate"] == same
    assert r["pair"]["attacks"]["pgd"][0]["attack_success_rate"] == same
    assert _rate(r["attacks"]["pgd"][0]["auroc"]["distillation"])
