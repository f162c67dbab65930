"""score_files with the local engine: the scores of ModelDistillation.score, in order, with the
saved threshold; drift windows exactly as the saved drift detector's predict; bounded reading."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from distilldetect import load_detector
from distilldetect.batch import InputError, score_files


def _read(path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def test_npy_scores_equal_model_distillation_score(tmp_path, detectors, ad, X_digits):
    np.save(tmp_path / "x.npy", X_digits)
    out = tmp_path / "s.parquet"
    summary = score_files(detectors["md"], tmp_path / "x.npy", out, batch_size=64, verbose=False)
    table = _read(out)
    assert table.column_names == ["row_id", "instance_score", "is_adversarial"]
    expected = ad.score(X_digits)
    scores = table["instance_score"].to_numpy()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    assert np.array_equal(table["row_id"].to_numpy(), np.arange(len(X_digits)))
    flags = table["is_adversarial"].to_numpy(zero_copy_only=False)
    assert np.array_equal(flags, scores > ad.threshold)
    assert summary.n_rows == len(X_digits) and summary.n_flagged == int(flags.sum())
    assert summary.threshold == ad.threshold and summary.drift_output is None
    assert "flagged adversarial" in summary.lines()[0]


def test_scores_do_not_depend_on_batch_size(tmp_path, detectors, X_digits):
    np.save(tmp_path / "x.npy", X_digits[:500])
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    score_files(detectors["md"], tmp_path / "x.npy", a, batch_size=7, verbose=False)
    score_files(detectors["md"], tmp_path / "x.npy", b, batch_size=500, verbose=False)
    np.testing.assert_allclose(
        _read(a)["instance_score"].to_numpy(), _read(b)["instance_score"].to_numpy(), atol=1e-6
    )


@pytest.mark.parametrize("layout", ["fixed", "tensor"])
def test_parquet_with_logged_teacher_probs_and_ids(
    tmp_path, detectors, ad, X_digits, probs_of, make_parquet, layout
):
    X = X_digits[:700]
    probs = probs_of(ad, X)
    ids = [f"req-{i:04d}" for i in range(len(X))]
    path = make_parquet(
        tmp_path / "x.parquet", X, probs=probs, ids=ids, layout=layout, row_group_size=150
    )
    out = tmp_path / "s.parquet"
    score_files(
        detectors["md"],
        path,
        out,
        teacher_probs="probs",
        id_column="id",
        batch_size=100,
        verbose=False,
    )
    table = _read(out)
    assert table.column_names == ["row_id", "id", "instance_score", "is_adversarial"]
    assert table["id"].to_pylist() == ids
    np.testing.assert_allclose(
        table["instance_score"].to_numpy(), ad.score(X, teacher_probs=probs), atol=1e-6
    )
    # the logged probabilities are the teacher's: the same scores as running the teacher
    np.testing.assert_allclose(table["instance_score"].to_numpy(), ad.score(X), atol=1e-6)


def test_npy_with_logged_teacher_probs_file(tmp_path, detectors, ad, X_digits):
    X = X_digits[:300]
    # probabilities that are not the teacher's: the scores must follow them, not the teacher
    probs = np.random.default_rng(3).dirichlet(np.ones(10), size=len(X)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "p.npy", probs)
    out = tmp_path / "s.parquet"
    score_files(
        detectors["md"], tmp_path / "x.npy", out, teacher_probs=tmp_path / "p.npy", verbose=False
    )
    got = _read(out)["instance_score"].to_numpy()
    np.testing.assert_allclose(got, ad.score(X, teacher_probs=probs), atol=1e-6)
    assert not np.allclose(got, ad.score(X), atol=1e-3)


def test_no_threshold_writes_null_flags_with_a_warning(tmp_path, detectors, X_digits, caplog):
    np.save(tmp_path / "x.npy", X_digits[:100])
    with caplog.at_level(logging.WARNING, logger="distilldetect"):
        summary = score_files(
            detectors["nothr"], tmp_path / "x.npy", tmp_path / "s.parquet", verbose=False
        )
    assert "no threshold" in caplog.text
    assert _read(tmp_path / "s.parquet")["is_adversarial"].null_count == 100
    assert summary.n_flagged is None and "left null" in summary.lines()[0]
    # a threshold given for the call is used instead
    summary = score_files(
        detectors["nothr"],
        tmp_path / "x.npy",
        tmp_path / "s.parquet",
        threshold=0.0,
        overwrite=True,
        verbose=False,
    )
    assert summary.n_flagged == 100 and summary.threshold == 0.0


@pytest.mark.parametrize("name", ["drift", "drift_update"])
def test_drift_windows_equal_the_saved_detectors_predict(tmp_path, detectors, X_digits, name):
    # Harmful-looking drift in the second half: noisy images score higher.
    rng = np.random.default_rng(0)
    X = X_digits[1300:].copy()
    X[250:] = np.clip(X[250:] + rng.normal(scale=0.6, size=X[250:].shape), 0, 1)
    X = X.astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "s.parquet"
    summary = score_files(
        detectors[name], tmp_path / "x.npy", out, drift_window=100, batch_size=32, verbose=False
    )
    drift = _read(tmp_path / "s.drift.parquet")
    assert drift.column_names == ["window_start", "n", "p_val", "distance", "is_drift"]

    fresh = load_detector(detectors[name])  # sequential predict on the raw windows
    expected = [fresh.predict(X[a : a + 100]) for a in range(0, len(X), 100)]
    assert drift["window_start"].to_pylist() == list(range(0, len(X), 100))
    assert drift["n"].to_pylist() == [min(100, len(X) - a) for a in range(0, len(X), 100)]
    assert drift["n"].to_pylist()[-1] == len(X) % 100  # the last, shorter window
    np.testing.assert_allclose(
        drift["p_val"].to_numpy(), [float(e["data"]["p_val"][0]) for e in expected], atol=1e-12
    )
    assert drift["is_drift"].to_pylist() == [bool(e["data"]["is_drift"]) for e in expected]
    assert any(drift["is_drift"].to_pylist()) and not all(drift["is_drift"].to_pylist())
    assert summary.n_windows == len(expected) and summary.n_drift == sum(
        drift["is_drift"].to_pylist()
    )
    assert "windows of 100 rows" in summary.lines()[1]


def test_the_local_engine_never_reads_more_than_a_batch(tmp_path, detectors, X_digits, monkeypatch):
    """Bounded reading: every memory map covers at most batch_size rows, and every array handed
    to the detector holds at most batch_size rows."""
    from distilldetect.ad.model_distillation import ModelDistillation
    from distilldetect.batch import inputs

    np.save(tmp_path / "x.npy", X_digits)
    mapped, scored = [], []
    real_memmap, real_score = np.memmap, ModelDistillation.score

    class SpyMemmap(real_memmap):
        def __new__(cls, *args, shape=None, **kwargs):
            mapped.append(shape[0])
            return real_memmap.__new__(real_memmap, *args, shape=shape, **kwargs)

    def spy_score(self, X, *args, **kwargs):
        scored.append(len(X))
        return real_score(self, X, *args, **kwargs)

    monkeypatch.setattr(inputs.np, "memmap", SpyMemmap)
    monkeypatch.setattr(ModelDistillation, "score", spy_score)
    score_files(
        detectors["md"], tmp_path / "x.npy", tmp_path / "s.parquet", batch_size=50, verbose=False
    )
    assert sum(mapped) >= len(X_digits) and max(mapped) <= 50
    assert sum(scored[1:]) == len(X_digits) and max(scored) <= 50  # scored[0]: the preflight row


# ------------------------------------------------------------------------------ bad input
def test_shape_mismatch_is_refused_before_scoring(tmp_path, detectors):
    np.save(tmp_path / "x.npy", np.zeros((10, 8, 7), np.float32))
    with pytest.raises(InputError, match=r"shape \(8, 7\).*fitted on instances of shape \(8, 8\)"):
        score_files(detectors["md"], tmp_path / "x.npy", tmp_path / "s.parquet", verbose=False)
    assert not (tmp_path / "s.parquet").exists()


def test_teacher_probs_of_the_wrong_width_are_refused(tmp_path, detectors, X_digits, make_parquet):
    probs = np.full((50, 4), 0.25, np.float32)
    path = make_parquet(tmp_path / "x.parquet", X_digits[:50], probs=probs)
    with pytest.raises(InputError, match="4 probabilities per row.*predict 10 classes"):
        score_files(detectors["md"], path, tmp_path / "s.parquet", teacher_probs="probs")


def test_non_probability_rows_are_refused_before_scoring(
    tmp_path, detectors, X_digits, make_parquet, monkeypatch
):
    from distilldetect.ad.model_distillation import ModelDistillation

    probs = np.full((400, 10), 0.1, np.float32)
    probs[321] *= 3  # sums to 3
    path = make_parquet(tmp_path / "x.parquet", X_digits[:400], probs=probs, row_group_size=100)
    calls = []
    real = ModelDistillation.score
    monkeypatch.setattr(
        ModelDistillation,
        "score",
        lambda self, X, *a, **k: calls.append(len(X)) or real(self, X, *a, **k),
    )
    with pytest.raises(InputError, match="row 321 is not a probability vector"):
        score_files(detectors["md"], path, tmp_path / "s.parquet", teacher_probs="probs")
    assert calls == []  # refused before anything was scored


def test_drift_window_needs_a_drift_detector(tmp_path, detectors, X_digits):
    np.save(tmp_path / "x.npy", X_digits[:10])
    with pytest.raises(ValueError, match="needs a saved drift detector"):
        score_files(detectors["md"], tmp_path / "x.npy", tmp_path / "s.parquet", drift_window=5)


def test_rows_that_cannot_be_scored_are_named_and_nothing_is_left(tmp_path, detectors, X_digits):
    X = X_digits[:300].copy()
    X[250, 3, 3] = np.nan
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "s.parquet"
    out.write_bytes(b"previous output")
    with pytest.raises(InputError, match="rows 250-299 of .*must be finite"):
        score_files(
            detectors["drift"],
            tmp_path / "x.npy",
            out,
            batch_size=50,
            drift_window=100,
            overwrite=True,
            verbose=False,
        )
    assert out.read_bytes() == b"previous output"
    assert not (tmp_path / "s.drift.parquet").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"engine": "spark"}, ValueError, "engine must be one of"),
        ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
        ({"drift_window": 1}, ValueError, "drift_window must be an integer >= 2"),
        ({"workers": 2}, ValueError, "workers is for engine='ray'"),
        ({"threshold": float("nan")}, ValueError, "threshold must be finite"),
        ({"engine": "ray", "model": object()}, TypeError, "import path 'module:factory'"),
    ],
)
def test_argument_errors(tmp_path, detectors, X_digits, kwargs, error, match):
    np.save(tmp_path / "x.npy", X_digits[:10])
    with pytest.raises(error, match=match):
        score_files(detectors["md"], tmp_path / "x.npy", tmp_path / "s.parquet", **kwargs)


def test_black_box_teacher_by_import_path(tmp_path, detectors, X_digits):
    import dd_batch_models

    np.save(tmp_path / "x.npy", X_digits[:200])
    with pytest.raises(ValueError, match="black-box model"):
        score_files(detectors["blackbox"], tmp_path / "x.npy", tmp_path / "s.parquet")
    score_files(
        detectors["blackbox"],
        tmp_path / "x.npy",
        tmp_path / "s.parquet",
        model="dd_batch_models:teacher",
        verbose=False,
    )
    ref = load_detector(detectors["blackbox"], model=dd_batch_models.teacher())
    np.testing.assert_allclose(
        _read(tmp_path / "s.parquet")["instance_score"].to_numpy(),
        ref.score(X_digits[:200]),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        score_files(
            detectors["blackbox"],
            tmp_path / "x.npy",
            tmp_path / "t.parquet",
            model="dd_batch_models:nope",
        )
    with pytest.raises(ValueError, match="not callable"):
        score_files(
            detectors["blackbox"],
            tmp_path / "x.npy",
            tmp_path / "t.parquet",
            model="dd_batch_models:NOT_CALLABLE",
        )


def test_output_inside_the_input_folder_is_refused(tmp_path, detectors, X_digits):
    np.save(tmp_path / "part-0.npy", X_digits[:10])
    with pytest.raises(InputError, match="inside the input folder"):
        score_files(detectors["md"], tmp_path, tmp_path / "s.parquet")
