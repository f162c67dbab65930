"""``distilldetect score``: output on success; one line on stderr and exit status 2 on bad input."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from distilldetect.cli import main


def _one_error_line(capsys, code, match):
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("distilldetect: error: ")
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def npy(tmp_path, X_digits):
    np.save(tmp_path / "x.npy", X_digits[:300])
    return tmp_path / "x.npy"


def test_score_command_writes_scores_and_drift_and_prints_the_summary(
    tmp_path, detectors, npy, capsys
):
    import pyarrow.parquet as pq

    out = tmp_path / "s.parquet"
    code = main(
        [
            "score",
            str(detectors["drift"]),
            str(npy),
            str(out),
            "--drift-window",
            "100",
            "--batch-size",
            "64",
            "-q",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("scored 300 rows with the local engine")
    assert lines[1].startswith("drift: ") and "of 3 windows of 100 rows" in lines[1]
    assert captured.err == ""  # -q: no progress bar, no log lines
    assert pq.read_table(out).num_rows == 300
    assert pq.read_table(tmp_path / "s.drift.parquet").num_rows == 3


def test_score_command_with_a_black_box_teacher_import_path(tmp_path, detectors, npy, capsys):
    out = tmp_path / "s.parquet"
    code = main(
        [
            "score",
            str(detectors["blackbox"]),
            str(npy),
            str(out),
            "--model",
            "dd_batch_models:teacher",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert out.exists()


def test_missing_input(tmp_path, detectors, capsys):
    code = main(
        ["score", str(detectors["md"]), str(tmp_path / "nope.npy"), str(tmp_path / "s.parquet")]
    )
    _one_error_line(capsys, code, "does not exist")


def test_unreadable_input(tmp_path, detectors, capsys):
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    code = main(
        ["score", str(detectors["md"]), str(tmp_path / "x.npy"), str(tmp_path / "s.parquet")]
    )
    _one_error_line(capsys, code, "cannot be read as .npy")


def test_shape_mismatch(tmp_path, detectors, capsys):
    np.save(tmp_path / "x.npy", np.zeros((5, 28, 28), np.float32))
    code = main(
        ["score", str(detectors["md"]), str(tmp_path / "x.npy"), str(tmp_path / "s.parquet")]
    )
    _one_error_line(capsys, code, "fitted on instances of shape (8, 8)")


def test_parquet_without_the_named_column(tmp_path, detectors, X_digits, make_parquet, capsys):
    path = make_parquet(tmp_path / "x.parquet", X_digits[:20])
    code = main(
        [
            "score",
            str(detectors["md"]),
            str(path),
            str(tmp_path / "s.parquet"),
            "--instances-column",
            "pixels",
        ]
    )
    _one_error_line(capsys, code, "no column 'pixels'")
    code = main(
        [
            "score",
            str(detectors["md"]),
            str(path),
            str(tmp_path / "s.parquet"),
            "--teacher-probs",
            "probs",
        ]
    )
    _one_error_line(capsys, code, "no column 'probs'")


def test_output_exists_without_overwrite(tmp_path, detectors, npy, capsys):
    out = tmp_path / "s.parquet"
    out.write_bytes(b"keep me")
    code = main(["score", str(detectors["md"]), str(npy), str(out)])
    _one_error_line(capsys, code, "exists; pass --overwrite")
    assert out.read_bytes() == b"keep me"
    drift_out = tmp_path / "t.drift.parquet"
    drift_out.write_bytes(b"keep me too")
    code = main(
        [
            "score",
            str(detectors["drift"]),
            str(npy),
            str(tmp_path / "t.parquet"),
            "--drift-window",
            "50",
        ]
    )
    _one_error_line(capsys, code, "drift output")
    assert drift_out.read_bytes() == b"keep me too"
    assert main(["score", str(detectors["md"]), str(npy), str(out), "--overwrite", "-q"]) == 0
    assert out.read_bytes()[:4] == b"PAR1"


def test_teacher_probs_wrong_width_or_not_probabilities(
    tmp_path, detectors, X_digits, make_parquet, capsys
):
    path = make_parquet(tmp_path / "w.parquet", X_digits[:20], probs=np.full((20, 3), 1 / 3))
    code = main(
        [
            "score",
            str(detectors["md"]),
            str(path),
            str(tmp_path / "s.parquet"),
            "--teacher-probs",
            "probs",
        ]
    )
    _one_error_line(capsys, code, "3 probabilities per row")
    logits = np.random.default_rng(0).normal(size=(20, 10))
    path = make_parquet(tmp_path / "l.parquet", X_digits[:20], probs=logits)
    code = main(
        [
            "score",
            str(detectors["md"]),
            str(path),
            str(tmp_path / "s.parquet"),
            "--teacher-probs",
            "probs",
        ]
    )
    _one_error_line(capsys, code, "row 0 is not a probability vector")


def test_drift_window_without_a_drift_detector(tmp_path, detectors, npy, capsys):
    code = main(
        [
            "score",
            str(detectors["md"]),
            str(npy),
            str(tmp_path / "s.parquet"),
            "--drift-window",
            "100",
        ]
    )
    _one_error_line(capsys, code, "needs a saved drift detector")


def test_not_a_detector_folder(tmp_path, npy, capsys):
    code = main(["score", str(tmp_path), str(npy), str(tmp_path / "s.parquet")])
    captured = capsys.readouterr()
    assert code == 2 and len(captured.err.strip().splitlines()) == 1


def test_bad_rows_found_while_scoring(tmp_path, detectors, X_digits, capsys):
    X = X_digits[:200].copy()
    X[150] = np.inf
    np.save(tmp_path / "x.npy", X)
    code = main(
        [
            "score",
            str(detectors["md"]),
            str(tmp_path / "x.npy"),
            str(tmp_path / "s.parquet"),
            "--batch-size",
            "100",
            "-q",
        ]
    )
    _one_error_line(capsys, code, "rows 100-199")
    assert not (tmp_path / "s.parquet").exists()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_that_does_not_answer(tmp_path, detectors, npy, capsys):
    pytest.importorskip("ray")
    address = f"127.0.0.1:{_closed_port()}"
    code = main(
        [
            "score",
            str(detectors["md"]),
            str(npy),
            str(tmp_path / "s.parquet"),
            "--engine",
            "ray",
            "--ray-address",
            address,
        ]
    )
    line = _one_error_line(capsys, code, f"no Ray cluster answers at {address}")
    assert "refused" in line.lower()


def test_ray_address_that_times_out_is_bounded(tmp_path, detectors, npy, capsys, monkeypatch):
    pytest.importorskip("ray")
    from distilldetect.batch import ray_engine

    monkeypatch.setattr(ray_engine, "connect_timeout", 0.5)
    # TEST-NET-1 (RFC 5737): never routed, so the connection attempt cannot succeed
    code = main(
        [
            "score",
            str(detectors["md"]),
            str(npy),
            str(tmp_path / "s.parquet"),
            "--engine",
            "ray",
            "--ray-address",
            "192.0.2.123:6379",
        ]
    )
    _one_error_line(capsys, code, "no Ray cluster answers at 192.0.2.123:6379")


@pytest.mark.parametrize(
    "args, match",
    [
        (["--workers", "2"], "workers is for engine='ray'"),
        (["--engine", "ray", "--workers", "3:2"], "needs min <= max"),
        (["--engine", "ray", "--ray-address", "nonsense"], "must be 'host:port'"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    ],
)
def test_argument_errors(tmp_path, detectors, npy, capsys, args, match):
    if "ray" in args:
        pytest.importorskip("ray")
    code = main(["score", str(detectors["md"]), str(npy), str(tmp_path / "s.parquet"), *args])
    _one_error_line(capsys, code, match)
