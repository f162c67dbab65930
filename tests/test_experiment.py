"""The harmful-drift study end to end (quick settings) and the CLI's error handling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from distilldetect.cli import main
from distilldetect.experiments import harmful_drift as hd

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(
    not FMNIST.exists(), reason="Fashion-MNIST (Debian package) not installed"
)

DETECTOR_KEYS = {"two_sided", "one_sided", "entropy", "bbsd"}


def tiny(tmp_path, **kw):
    """A study small enough for a unit test (seconds)."""
    settings = dict(
        corruptions=["contrast"],
        severities=[5],
        n_train=1000,
        teacher_epochs=1,
        student_epochs=1,
        n_eval=200,
        n_ref=200,
        n_batches=5,
        fractions=[0.0, 0.5],
        cache_dir=str(tmp_path / "cache"),
        out=str(tmp_path / "out"),
        verbose=False,
    )
    settings.update(kw)
    return hd.StudyConfig(**settings)


@needs_fmnist
@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "quick"
    code = main(
        ["experiment", "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "-q"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("severity ") == 5 and "results.json" in printed
    results = json.loads((out / "results.json").read_text())
    for key in ("dataset", "teacher_accuracy", "student_agreement", "config", "severities"):
        assert key in results
    assert results["dataset"] == "fashion_mnist"
    assert 0.7 < results["teacher_accuracy"] <= 1.0
    assert set(results["severities"]) == {"1", "2", "3", "4", "5"}
    for entry in results["severities"].values():
        assert 0 <= entry["accuracy"] <= 1
        assert set(entry["score_mean"]) == {"clean", "harmless", "harmful"}
        assert set(entry["auroc"]) == {"distillation", "entropy", "max_prob"}
        drift = entry["drift"]
        assert drift["contamination"] == [round(0.1 * i, 1) for i in range(10)]
        for kind in ("harmful", "harmless"):
            assert set(drift[kind]) == DETECTOR_KEYS
            for stats in drift[kind].values():
                assert len(stats["mean_p"]) == 10 and len(stats["detection_rate"]) == 10
                assert all(0 <= p <= 1 for p in stats["mean_p"])
        # with no contamination every detector sees clean data only
        for det in DETECTOR_KEYS:
            assert drift["harmful"][det]["detection_rate"][0] <= 0.3
    # harmful instances score higher than clean ones on average at the harshest severity
    s5 = results["severities"]["5"]["score_mean"]
    assert s5["harmful"] > s5["clean"]
    report = (out / "report.md").read_text()
    figures = ["scores_by_severity.png", "auroc_by_severity.png", "detection_rate.png"] + [
        f"pvalues_severity{s}.png" for s in range(1, 6)
    ]
    for fig in figures:
        assert (out / fig).stat().st_size > 10_000
        assert f"]({fig})" in report


@needs_fmnist
def test_teacher_is_cached_and_reused(tmp_path):
    first = hd.run(tiny(tmp_path))
    assert "trained" in first.config["teacher"]
    second = hd.run(tiny(tmp_path, out=str(tmp_path / "out2")))
    assert "cached" in second.config["teacher"]
    assert second.teacher_accuracy == first.teacher_accuracy
    teacher_dir = first.config["teacher"].split("cached in ")[-1]
    third = hd.run(tiny(tmp_path, out=str(tmp_path / "out3"), teacher_path=teacher_dir))
    assert third.teacher_accuracy == first.teacher_accuracy
    assert "loaded from" in third.config["teacher"]


@needs_fmnist
def test_validation_split_never_touches_the_test_set(tmp_path, monkeypatch):
    from distilldetect import datasets

    real = datasets.load_fashion_mnist
    calls = []

    def spy(*a, **k):
        (x, y), (xt, yt) = real(*a, **k)
        calls.append(1)
        xt[:] = 0  # poison the test set: a validation study must not notice
        return (x, y), (xt, yt)

    monkeypatch.setattr(datasets, "load_fashion_mnist", spy)
    res = hd.run(tiny(tmp_path, eval_split="validation", n_validation=1000))
    assert calls and res.teacher_accuracy > 0.5
    assert "validation" in res.config["eval_split"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "mnist"], "dataset must be one of"),
        (["--corruptions", "gaussian_noise,rain"], "unknown corruption"),
        (["--severities", "0,3"], "severities must be integers in 1-5"),
        (["--severities", "6"], "severities must be integers in 1-5"),
        (["--fractions", "0,0.5,1.0"], "fractions must be numbers in [0, 1)"),
        (["--temperature", "0"], "temperature must be > 0"),
        (["--loss-type", "mse"], "loss_type"),
        (["--n-batches", "0"], "n_batches must be an integer >= 1"),
        (["--teacher", "/nonexistent/teacher"], "is not a directory"),
    ],
)
def test_cli_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    code = main(["experiment", "--out", str(tmp_path / "o"), "-q", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("distilldetect: error:") and message in err
    assert len(err.splitlines()) == 1


def test_cli_data_dir_without_files_names_the_missing_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["experiment", "--data-dir", str(empty), "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "train-images-idx3-ubyte" in err and str(empty) in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_cli_unwritable_output_directory_nonroot(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code = main(["experiment", "--out", str(ro / "x"), "-q"])
    assert code == 2 and "cannot be written" in capsys.readouterr().err


def test_cli_output_path_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["experiment", "--out", str(blocker / "sub"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot be written" in err and len(err.splitlines()) == 1


def test_cli_lists_corruptions(capsys):
    assert main(["corruptions", "--subset", "noise"]) == 0
    assert capsys.readouterr().out.split() == ["gaussian_noise", "shot_noise", "impulse_noise"]
    assert main(["corruptions", "--subset", "bogus"]) == 2
