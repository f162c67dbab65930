"""Regression tests of the red-team pass (issue 14): every case once failed, each must hold now.

Data loss and integrity, concurrency, numbers, and boundary errors; saving's kill and
concurrency cases run real processes.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distilldetect import (
    KSDrift,
    ModelDistillation,
    load_detector,
    predict_batch,
    save_detector,
    scale_by_instance,
)
from distilldetect.files import DetectorFormatError, FolderInUseError, manifest_checksum
from distilldetect.models import build_model, train_classifier


def small_detector(seed: int = 0, **kwargs) -> ModelDistillation:
    torch.manual_seed(seed)
    teacher = build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(16,))
    student = build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(8,))
    return ModelDistillation(distilled_model=student, model=teacher, **kwargs)


def edit_config(folder: Path, edit) -> None:
    """Edit config.json and reseal its checksum (an attacker who rewrites the hashes)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    config["checksum"] = manifest_checksum(config)
    path.write_text(json.dumps(config))


# ============================================================================ data loss
def test_saving_never_deletes_the_users_files(digits, tmp_path):
    ad = small_detector()
    save_detector(ad, tmp_path / "det")
    (tmp_path / "det" / "my_data").mkdir()
    (tmp_path / "det" / "my_data" / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="my_data"):
        save_detector(ad, tmp_path / "det")
    assert (tmp_path / "det" / "my_data" / "results.csv").read_text() == "a,b\n1,2\n"
    assert load_detector(tmp_path / "det").threshold is None


def test_a_marker_config_does_not_make_a_folder_a_detector(tmp_path):
    project = tmp_path / "project"
    (project / "thesis").mkdir(parents=True)
    (project / "thesis" / "main.tex").write_text("\\documentclass{article}")
    (project / "config.json").write_text('{"format": "distilldetect-detector"}')
    with pytest.raises(ValueError, match="thesis"):
        save_detector(small_detector(), project)
    assert (project / "thesis" / "main.tex").exists()
    assert (project / "config.json").read_text() == '{"format": "distilldetect-detector"}'


SAVE_LOOP = """
import sys, numpy as np, torch
from distilldetect import ModelDistillation, save_detector
from distilldetect.models import build_model

torch.manual_seed(0)
ad = ModelDistillation(
    distilled_model=build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(64, 64)),
    model=build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(256, 256)),
)
i = 0
while True:
    ad.threshold = float(i)
    save_detector(ad, sys.argv[1])
    i += 1
    if i == 1:
        print("ready", flush=True)
"""


def start_saver(tmp_path: Path, target: Path) -> subprocess.Popen:
    script = tmp_path / "saver.py"
    script.write_text(SAVE_LOOP)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(target)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_killed_save_leaves_the_old_or_the_new_detector(tmp_path):
    target = tmp_path / "det"
    rng = np.random.default_rng(0)
    for _ in range(6):
        proc = start_saver(tmp_path, target)
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        ad = load_detector(target)  # never a broken folder
        assert ad.threshold is not None and ad.threshold == int(ad.threshold)
    # what killed saves left (a data folder written but not committed) goes at the next save
    save_detector(load_detector(target), target)
    names = sorted(os.listdir(target))
    assert names[:2] == [".lock", "config.json"] and len(names) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_loading_while_another_process_saves_never_reports_tampering(tmp_path):
    target = tmp_path / "det"
    proc = start_saver(tmp_path, target)
    loads = busy = 0
    try:
        deadline = time.monotonic() + 20
        while loads < 150 and time.monotonic() < deadline:
            try:
                ad = load_detector(target)
            except FolderInUseError:
                busy += 1  # a clear "a save is in progress", allowed but must be rare
                continue
            assert ad.threshold == int(ad.threshold)
            loads += 1
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert loads >= 20
    assert busy <= loads // 10


# ============================================================================ config.json
def test_a_hand_edited_threshold_is_refused(tmp_path):
    ad = small_detector()
    ad.threshold = 0.5
    save_detector(ad, tmp_path / "det")
    path = tmp_path / "det" / "config.json"
    config = json.loads(path.read_text())
    config["detector"]["config"]["threshold"] = 5.0
    path.write_text(json.dumps(config, indent=2))
    with pytest.raises(DetectorFormatError, match="edited or damaged"):
        load_detector(tmp_path / "det")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf")], ids=["zero", "negative", "inf"])
def test_settings_that_cannot_score_are_refused(tmp_path, bad):
    save_detector(small_detector(), tmp_path / "det")
    value = bad if bad != float("inf") else "Infinity"
    edit_config(
        tmp_path / "det", lambda c: c["detector"]["config"].__setitem__("temperature", value)
    )
    with pytest.raises(DetectorFormatError, match="temperature"):
        load_detector(tmp_path / "det")


def test_a_tiny_temperature_scores_finitely(digits, tmp_path):
    """T=1e-300 once loaded and made every score NaN; now sharpening is in log space."""
    ad = small_detector(temperature=1e-300)
    scores = ad.score(digits[2][:50])
    assert np.isfinite(scores).all()
    save_detector(ad, tmp_path / "det")
    assert np.array_equal(load_detector(tmp_path / "det").score(digits[2][:50]), scores)


@pytest.mark.parametrize("blocks", [3000, 10**9])
def test_absurd_builder_arguments_are_refused_before_building(tmp_path, blocks):
    torch.manual_seed(0)
    teacher = build_model("resnet", input_shape=(8, 8, 1), num_blocks=1, widths=(4, 4, 4))
    student = build_model("mlp", input_shape=(8, 8, 1), num_classes=10, hidden=(8,))
    save_detector(ModelDistillation(distilled_model=student, model=teacher), tmp_path / "det")

    def edit(config):
        config["detector"]["config"]["model"]["$model"]["entry"]["architecture"]["kwargs"][
            "num_blocks"
        ] = blocks

    edit_config(tmp_path / "det", edit)
    started = time.monotonic()
    with pytest.raises(DetectorFormatError, match="asks for more layers than the weight file"):
        load_detector(tmp_path / "det")
    assert time.monotonic() - started < 30  # refused from the tensor list, nothing built


# ============================================================================ concurrency
def test_concurrent_scores_leave_a_training_student_in_train_mode(digits):
    from concurrent.futures import ThreadPoolExecutor

    ad = small_detector()
    ad.fit(digits[0][:200], epochs=1, verbose=False, seed=0)  # leaves the student in train mode
    ad.model.eval()
    assert ad.distilled_model.training
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: ad.score(digits[2][:64], batch_size=8), range(32)))
    assert ad.distilled_model.training and not ad.model.training  # as they were, both


# ============================================================================ numbers
def test_small_temperature_on_a_flat_teacher_gives_finite_scores_and_threshold(digits):
    ad = ModelDistillation(
        distilled_model=build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(8,)),
        model=lambda x: np.full((len(x), 10), 0.1, dtype=np.float32),
        temperature=0.01,
    )
    ad.fit(digits[0][:200], epochs=1, verbose=False, seed=0)
    ad.infer_threshold(digits[2][:100])
    assert np.isfinite(ad.score(digits[2][:100])).all() and np.isfinite(ad.threshold)


def test_scale_by_instance_edge_cases():
    rng = np.random.default_rng(0)
    half = rng.uniform(0, 255, size=(4, 28, 28)).astype(np.float16)
    out = scale_by_instance(half)
    assert out.dtype == np.float16 and np.isfinite(out).all() and abs(float(out.std()) - 1) < 1e-2
    huge = rng.normal(size=(3, 10)) * 1e160
    np.testing.assert_allclose(scale_by_instance(huge).std(axis=1), 1.0, rtol=1e-9)
    assert scale_by_instance(np.ones((2, 3)), eps=np.float32(1e-6)).shape == (2, 3)
    for eps in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            scale_by_instance(np.ones((2, 3)), eps=eps)
    masked = np.ma.masked_array(np.ones((2, 3)), mask=[[0, 1, 0], [0, 0, 0]])
    with pytest.raises(TypeError, match="masked array"):
        scale_by_instance(masked)


def test_big_endian_input_is_scored(digits):
    ad = small_detector()
    x = digits[2][:20]
    np.testing.assert_array_equal(ad.score(x.astype(">f4")), ad.score(x))


# ============================================================================ boundaries
def test_fit_and_model_argument_errors(digits):
    ad = small_detector()
    with pytest.raises(ValueError, match=r"seed must be None or an integer in \[0, 2\*\*63 - 1\]"):
        ad.fit(digits[0][:64], epochs=1, verbose=False, seed=2**64)
    with pytest.raises(ValueError, match="hidden\\[0\\] must be an integer >= 1"):
        build_model("mlp", hidden=[-3])
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        build_model("mlp", num_classes=0)
    teacher = build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(8,))
    with pytest.raises(ValueError, match="class index 10, but the model has 10 outputs"):
        train_classifier(teacher, digits[0][:32], np.full(32, 10), epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"margin must be a finite number, got nan"):
        ad.infer_threshold(digits[2][:32], margin=float("nan"))
    with pytest.raises(TypeError, match="return_predictions must be True or False"):
        ad.score(digits[2][:8], return_predictions="no")
    ad.threshold = 1.0
    with pytest.raises(TypeError, match="return_instance_score must be True or False"):
        ad.predict(digits[2][:8], return_instance_score="no")


def test_batchnorm_student_with_a_last_batch_of_one_row_fits(digits):
    torch.manual_seed(0)
    student = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 10),
        torch.nn.Softmax(-1),
    )
    ad = ModelDistillation(distilled_model=student, model=small_detector().model)
    ad.fit(digits[0][:129], epochs=1, batch_size=64, verbose=False, seed=0)  # 64 + 65
    assert len(ad.history) == 1


def test_predict_batch_checks_dtype_before_running_and_the_outputs(digits):
    calls = []

    def model(x):
        calls.append(len(x))
        return x.reshape(len(x), -1)[:, :3]

    with pytest.raises(TypeError, match="dtype must be None or a numpy dtype"):
        predict_batch(digits[2][:10], model, dtype="banana")
    assert calls == []
    with pytest.raises(TypeError, match="model must return an array"):
        predict_batch(digits[2][:10], lambda x: None)


def test_shape_errors_name_the_argument(digits):
    ad = small_detector()
    ad.fit(digits[0][:64], epochs=1, verbose=False, seed=0)
    with pytest.raises(ValueError, match="preprocess_fn could not process x_ref"):
        ad.drift_detector(np.zeros((10, 4, 4), dtype=np.float32))
    cd = ad.drift_detector(digits[2][:50])
    with pytest.raises(ValueError, match="preprocess_fn could not process x:"):
        cd.predict(np.zeros((10, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="n_features"):
        KSDrift(np.zeros((10, 3))).predict(np.zeros((5, 4)))


def test_nan_in_meta_is_refused_at_save(tmp_path):
    ad = small_detector()
    ad.meta["accuracy"] = float("nan")
    with pytest.raises(ValueError, match=r"\['accuracy'\] is nan"):
        save_detector(ad, tmp_path / "det")
    assert not (tmp_path / "det").exists()


# ============================================================================ loaders
def _idx(tmp_path: Path, dims: tuple[int, ...], payload: bytes, gz: bool) -> Path:
    head = struct.pack(">I", (0x08 << 8) | len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    data = head + payload
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_headers_cannot_make_the_reader_allocate(tmp_path, gz):
    from distilldetect.datasets.fashion_mnist import read_idx

    path = _idx(tmp_path, (2**32 - 1,), b"\0" * 100, gz)
    with pytest.raises(ValueError, match=r"announces shape \(4294967295,\)"):
        read_idx(path, ndim=1)
    big = (2**32 - 1,) * 3
    path = _idx(tmp_path, big, b"\0" * 100, gz)
    with pytest.raises(ValueError, match=f"{(2**32 - 1) ** 3:,} bytes of data"):
        read_idx(path, ndim=3)


def test_download_deadline_redirects_and_folder_destination(server, tmp_path):
    import http.server
    import threading

    from distilldetect.datasets._download import DownloadError, download

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "ftp://127.0.0.1/file.bin")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        started = time.monotonic()
        with pytest.raises(DownloadError, match="longer than its deadline of 1 s"):
            download(f"{base}/slow.bin", cache_dir=tmp_path, deadline=1.0, verbose=False)
        assert time.monotonic() - started < 10
        with pytest.raises(DownloadError, match="redirect to a ftp URL refused"):
            download(f"{base}/redirect", "f.bin", cache_dir=tmp_path, verbose=False)
        (tmp_path / "folder.bin").mkdir()
        with pytest.raises(ValueError, match="is a folder"):
            download(f"{base}/x", "folder.bin", cache_dir=tmp_path, verbose=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.bin"]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
