"""The documentation site builds strictly, its API pages render, and the tutorial runs."""

from __future__ import annotations

import html
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIAL = DOCS / "tutorial" / "fashion_mnist.py"
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _text(page: Path) -> str:
    """The visible text of a built page's main part (tags dropped, entities decoded)."""
    source = page.read_text(encoding="utf-8")
    main = source[source.find('role="main"') :]
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", main)))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ)
    # the worktree's package, whatever the installed one is (mkdocstrings reads paths: [src]
    # statically, the tutorial hook imports nothing from the package)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def test_site_builds_strictly_with_every_page(site):
    for page in [
        "index.html",
        "getting-started/index.html",
        "tutorial/fashion_mnist/index.html",
        "studies/harmful-drift/index.html",
        "porting/index.html",
        "serving/index.html",
        "batch/index.html",
        "img/dashboard.png",
    ]:
        assert (site / page).is_file(), page
    # the hook and the tutorial's source are not published as pages
    assert not (site / "_hooks.py").exists()
    assert not (site / "tutorial" / "fashion_mnist.py").exists()


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        # rendered signatures and members, not just the page title
        ("model-distillation", ["infer_threshold", "drift_detector", "threshold_perc", "fit"]),
        ("drift", ["KSDrift", "TailRankDrift", "alternative", "update_x_ref"]),
        ("saving", ["save_detector", "load_detector", "filepath"]),
        ("fetching", ["fetch_detector", "fetch_tf_model", "pretrained_info", "detector_name"]),
        ("models", ["build_model", "train_classifier", "load_classifier"]),
        ("datasets", ["load_fashion_mnist", "fetch_cifar10c", "load_user_data"]),
        ("corruptions", ["corrupt", "get_corruption_names", "severity"]),
        ("plotting", ["plot_scores_by_severity", "plot_detection_rates"]),
        ("experiments", ["run", "StudyConfig", "drift_test", "StudyResults"]),
        ("serve", ["create_app", "ServeConfig"]),
        ("batch", ["score_files", "ScoreSummary", "drift_window"]),
        ("utils", ["predict_batch", "scale_by_instance"]),
        ("augment", ["augmix", "make_augment_fn"]),
    ],
)
def test_api_pages_render_signatures(site, page, expected):
    text = _text(site / "api" / page / "index.html")
    for name in expected:
        assert name in text, f"{name!r} missing from api/{page}"
    # docstring markup did not leak: no raw Sphinx role, no numpy section underline
    assert not re.search(r":(func|class|meth|mod|data|attr):`", text), page
    assert "-------" not in text, page


def test_model_distillation_page_shows_the_signature(site):
    text = _text(site / "api" / "model-distillation" / "index.html")
    # the constructor's signature with alibi-detect's defaults, and a method's
    assert re.search(r"loss_type\s*:\s*str\s*=\s*\"kld\"", text), text[:2000]
    assert re.search(r"infer_threshold\s*\(\s*X", text)
    # a Sphinx role in a docstring became a link to the documented object
    source = (site / "api" / "model-distillation" / "index.html").read_text(encoding="utf-8")
    assert 'href="../drift/#distilldetect.cd.KSDrift"' in source


def test_tutorial_page_is_the_script(site):
    """The tutorial page is rendered from the script at build time (no copy to keep in sync)."""
    text = _text(site / "tutorial" / "fashion_mnist" / "index.html")
    assert "Harmfulness scores on corrupted data" in text
    assert "cd = ad.drift_detector(X_ref, p_val=0.05)" in text
    assert "# %%" not in text and "jupytext_version" not in text


def test_getting_started_is_the_readme_quickstart():
    """The quickstart of the docs is the README's, which tests/test_readme.py runs."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_readme import quickstart_block
    finally:
        sys.path.remove(str(ROOT / "tests"))
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    match = re.search(r"## Quickstart\n.*?```python\n(.*?)```", page, re.S)
    assert match, "getting-started.md has no quickstart block"
    assert match.group(1) == quickstart_block()


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST (Debian package) not installed")
def test_getting_started_pretrained_block_runs(capsys):
    pytest.importorskip("torch")
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    match = re.search(r"## A pretrained detector\n.*?```python\n(.*?)```", page, re.S)
    assert match, "getting-started.md has no pretrained-detector block"
    exec(compile(match.group(1), "getting-started.md", "exec"), {"__name__": "__main__"})
    flagged, info = capsys.readouterr().out.splitlines()[:2]
    assert 0.02 <= float(flagged) <= 0.1  # the page says "about 0.05"
    assert "teacher_test_accuracy" in info


def test_readme_points_at_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Documentation\n", 1)[1].split("\n## ", 1)[0]
    assert "make docs" in section and "build/site" in section
    assert readme.index("## API summary") < readme.index("## Documentation")


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST (Debian package) not installed")
def test_tutorial_runs_and_finds_harm(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISTILLDETECT_TUTORIAL_TRAIN", raising=False)
    ns = runpy.run_path(str(TUTORIAL), run_name="__main__")
    assert not ns["TRAIN"]
    # scores rise with the severity of the corruptions, as the teacher's accuracy falls
    mean = ns["mean_score"]
    assert mean[5] > mean[1] > mean["clean"]
    results = ns["results"]
    assert results[5]["right"].mean() < ns["clean_right"].mean()
    # the drift detector flags harmful batches and flags them more often than harmless ones
    for severity in ns["SEVERITIES"]:
        rate = ns["flag_rate"][severity]
        assert rate["harmful"] >= 0.9, (severity, rate)
        assert rate["harmful"] > rate["harmless"], (severity, rate)
    assert ns["flag_rate"][1]["harmless"] <= 0.2
    out = capsys.readouterr().out
    assert "p-value before and after saving" in out
    assert not list(tmp_path.iterdir()), "the tutorial left files in the working directory"
