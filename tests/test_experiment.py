"""The harmful-drift study end to end (quick settings) and the CLI's error handling."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from distilldetect.cli import main
from distilldetect.experiments import harmful_drift as hd

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(
    not FMNIST.exists(), reason="Fashion-MNIST (Debian package) not installed"
)

DETECTOR_KEYS = set(hd.DETECTORS)
assert {"two_sided", "one_sided", "entropy", "bbsd", "tail_rank"} <= DETECTOR_KEYS


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
        n_draws=2,
        power_batch_sizes=[10, 20],
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
    assert results["config"]["drift_test"] == "tail_rank"
    assert 0.7 < results["teacher_accuracy"] <= 1.0
    assert set(results["severities"]) == {"1", "2", "3", "4", "5"}
    for entry in results["severities"].values():
        assert 0 <= entry["accuracy"] <= 1
        assert set(entry["score_mean"]) == {"clean", "harmless", "harmful"}
        assert set(entry["auroc"]) == {"distillation", "entropy", "max_prob"}
        drift = entry["drift"]
        assert drift["contamination"] == [round(0.1 * i, 1) for i in range(10)]
        assert drift["n_draws"] == 2
        for kind in ("harmful", "harmless"):
            assert set(drift[kind]) == DETECTOR_KEYS
            for stats in drift[kind].values():
                assert len(stats["mean_p"]) == 10 and len(stats["detection_rate"]) == 10
                assert all(0 <= p <= 1 for p in stats["mean_p"])
                # every rate with its 95 % binomial CI, and the rate of each reference draw
                for rate, (lo, hi), per_draw in zip(
                    stats["detection_rate"], stats["ci"], stats["draw_rates"], strict=True
                ):
                    assert lo <= rate <= hi and len(per_draw) == 2
                    assert rate == pytest.approx(sum(per_draw) / 2)
        power = entry["power_by_batch_size"]
        assert power["batch_sizes"] == [10, 20, 50, 100]
        for test in DETECTOR_KEYS:
            for cell in ("clean", "harmful_100", "harmful_50", "harmless_100"):
                assert len(power[test][cell]) == 4 and len(power[test]["ci"][cell]) == 4
        assert set(entry["roc"]) == {"distillation", "entropy", "max_prob"}
        # with no contamination every detector sees clean data only
        for det in DETECTOR_KEYS:
            assert drift["harmful"][det]["detection_rate"][0] <= 0.3
    # harmful instances score higher than clean ones on average at the harshest severity
    s5 = results["severities"]["5"]["score_mean"]
    assert s5["harmful"] > s5["clean"]
    report = (out / "report.md").read_text()
    figures = [
        "scores_by_severity.png",
        "auroc_by_severity.png",
        "roc_curves.png",
        "detection_rate.png",
        *(f"pvalues_severity{s}.png" for s in range(1, 6)),
        *(f"power_severity{s}.png" for s in range(1, 6)),
    ]
    for fig in figures:
        assert (out / fig).stat().st_size > 10_000
        assert f"]({fig})" in report
    # the HTML report embeds every figure and needs nothing else
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # old vs new on the same batches, every rate with its CI
    assert "distillation, tail-rank test" in report and "distillation, KS one-sided" in report
    assert re.search(r"\d+% \(\d+–\d+\)", report)


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
        (["--corruptions", "gaussian_noise,rain"], "unknown corruption"),
        (["--severities", "0,3"], "severities must be integers in 1-5"),
        (["--severities", "6"], "severities must be integers in 1-5"),
        (["--fractions", "0,0.5,1.0"], "fractions must be numbers in [0, 1)"),
        (["--temperature", "0"], "temperature must be a finite number > 0"),
        (["--temperature", "inf"], "temperature must be a finite number > 0"),
        (["--seed", "-1"], "seed must be an integer in [0, 2**32 - 1]"),
        (["--seed", str(2**66)], "seed must be an integer in [0, 2**32 - 1]"),
        (["--n-draws", "0"], "n_draws must be an integer >= 1"),
        (["--tail-power", "0.5"], "tail_power must be a number in [1, 100]"),
        (["--tail-power", "nan"], "tail_power must be a number in [1, 100]"),
        (["--power-batch-sizes", "1,10"], "power_batch_sizes must be integers >= 2"),
        (["--n-batches", "0"], "n_batches must be an integer >= 1"),
        (["--teacher", "/nonexistent/teacher"], "is neither a folder"),
    ],
)
def test_cli_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    code = main(["experiment", "--out", str(tmp_path / "o"), "-q", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("distilldetect: error:") and message in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "args", [["--dataset", "mnist"], ["--drift-test", "ad"], ["--loss-type", "mse"]]
)
def test_cli_closed_sets_are_choices(tmp_path, capsys, args):
    code = main(["experiment", "--out", str(tmp_path / "o"), "-q", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("distilldetect experiment: error:") and "invalid choice" in err
    assert repr(args[1]) in err


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


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_argparse_errors_are_one_line(tmp_path, capsys):
    code, err = _cli_error(capsys, ["experiment", "--n-ref", "ten", "-q"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--n-ref" in err and "usage:" not in err
    code, err = _cli_error(capsys, ["bogus"])
    assert code == 2 and len(err.splitlines()) == 1 and "usage:" not in err


def test_cli_cache_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "cache"
    blocker.write_text("a file")
    code, err = _cli_error(
        capsys, ["experiment", "--cache-dir", str(blocker), "--out", str(tmp_path / "o"), "-q"]
    )
    assert code == 2 and len(err.splitlines()) == 1 and "cache_dir" in err
    assert blocker.read_text() == "a file"


@pytest.fixture
def saved_detectors(tmp_path, digits, digits_teacher, make_student):
    """A saved ModelDistillation and a saved KSDrift (digits models: seconds)."""
    from distilldetect import ModelDistillation, save_detector

    X_train, _, X_test, _ = digits
    ad = ModelDistillation(distilled_model=make_student(), model=digits_teacher)
    ad.fit(X_train[:200], epochs=1, verbose=False, seed=0)
    save_detector(ad, tmp_path / "ad")
    save_detector(ad.drift_detector(X_test[:50]), tmp_path / "ks")
    return tmp_path


def _teacher_folder(tmp_path, name, content):
    folder = tmp_path / name
    folder.mkdir()
    if content is not None:
        (folder / "teacher.json").write_text(content)
    return folder


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "holds neither a cached teacher"),
        ("{not json", "teacher.json is not valid JSON"),
        ('{"framework": "jax", "model": {}}', "names framework 'jax'"),
        ('{"framework": "pytorch"}', "has no 'model' entry"),
        ('{"framework": "pytorch", "model": {"name": "teacher"}}', "cannot be loaded"),
    ],
)
def test_cli_bad_teacher_folder_is_a_one_line_error(tmp_path, capsys, content, message):
    folder = _teacher_folder(tmp_path, "teacher", content)
    code, err = _cli_error(
        capsys, ["experiment", "--teacher", str(folder), "--out", str(tmp_path / "o"), "-q"]
    )
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err and str(folder) in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_cli_teacher_that_is_a_saved_ksdrift_or_truncated(saved_detectors, capsys):
    out = str(saved_detectors / "o")
    code, err = _cli_error(
        capsys, ["experiment", "--teacher", str(saved_detectors / "ks"), "--out", out, "-q"]
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds a saved KSDrift, not a teacher" in err
    data = json.loads((saved_detectors / "ad" / "config.json").read_text())["data"]
    weights = saved_detectors / "ad" / data / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = _cli_error(
        capsys, ["experiment", "--teacher", str(saved_detectors / "ad"), "--out", out, "-q"]
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert "model.safetensors" in err and "truncated" in err


def test_cli_refuses_an_output_folder_with_the_users_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("my work")
    (out / "data").mkdir()
    code, err = _cli_error(capsys, ["experiment", "--out", str(out), "-q"])
    assert code == 2 and len(err.splitlines()) == 1
    assert "thesis.tex" in err and "data" in err and "did not write" in err
    assert (out / "thesis.tex").read_text() == "my work"


# ------------------------------------------------------------------ the output folder
def test_output_dir_writes_atomically_and_never_replaces_the_users_files(tmp_path):
    from distilldetect.experiments.outputs import MANIFEST, OutputDir, prepare_output_dir

    out = OutputDir(tmp_path / "study")
    out.write("report.md", "first")
    out.write("a.png", b"png")
    out.finish()
    assert sorted(os.listdir(tmp_path / "study")) == [MANIFEST, "a.png", "report.md"]
    # a second run may replace the study's own files; unchanged stale ones are dropped
    again = OutputDir(tmp_path / "study")
    again.write("report.md", "second")
    again.finish()
    assert (tmp_path / "study" / "report.md").read_text() == "second"
    assert not (tmp_path / "study" / "a.png").exists()
    # a file the user added, or a study file the user edited, blocks the next run
    (tmp_path / "study" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        prepare_output_dir(tmp_path / "study")
    (tmp_path / "study" / "notes.txt").unlink()
    (tmp_path / "study" / "report.md").write_text("edited by hand")
    with pytest.raises(ValueError, match="report.md \\(changed since the study wrote it\\)"):
        OutputDir(tmp_path / "study")
    assert (tmp_path / "study" / "report.md").read_text() == "edited by hand"
    with pytest.raises(ValueError, match="plain visible name"):
        OutputDir(tmp_path / "other").write("../escape", "x")


def test_output_dir_ignores_and_cleans_its_own_temporaries(tmp_path):
    from distilldetect.experiments.outputs import OutputDir

    out = OutputDir(tmp_path / "s")
    out.write("results.json", "{}")
    stale = tmp_path / "s" / ".distilldetect-tmp-0123456789ab"
    stale.write_bytes(b"half a file from a killed run")
    out2 = OutputDir(tmp_path / "s")  # not in the way
    out2.write("results.json", "{}")
    out2.finish()
    assert not stale.exists()


def test_cli_tail_power_reaches_the_study(tmp_path, monkeypatch):
    """``--tail-power`` sets the tail-rank test's exponent; without it the default is used."""
    seen = []

    def fake_run(config):
        seen.append(config.tail_power)
        raise SystemExit(0)  # stop before the long work

    monkeypatch.setattr(hd, "run", fake_run)
    monkeypatch.setattr(hd, "preflight", lambda config: None)
    for extra in (["--tail-power", "8"], []):
        with pytest.raises(SystemExit):
            main(["experiment", "--out", str(tmp_path / "o"), "-q", *extra])
    assert seen == [8.0, hd.StudyConfig().tail_power] and seen[1] == 12.0
