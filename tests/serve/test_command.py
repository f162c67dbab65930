"""``distilldetect serve``: argument errors, model factories, a real server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from distilldetect.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")

FACTORIES = textwrap.dedent(
    '''
    """Factories for the models a saved folder cannot rebuild (imported by --model)."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression


    def teacher():
        """A black-box teacher: scikit-learn predict_proba on flattened 8x8 digits."""
        d = load_digits()
        clf = LogisticRegression(max_iter=300).fit(d.images.reshape(len(d.images), -1) / 16, d.target)
        return lambda x: clf.predict_proba(np.asarray(x, dtype=np.float64).reshape(len(x), -1))


    def student():
        """A torch module outside the model zoo (its weights come from the folder)."""
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.Softmax(dim=-1)
        )
    '''
)


@pytest.fixture(scope="module")
def custom(tmp_path_factory, digits):
    """A folder with a black-box teacher and a non-zoo student, and the module of factories."""
    import sys as _sys

    from distilldetect import ModelDistillation, save_detector

    root = tmp_path_factory.mktemp("custom")
    (root / "bbfactories.py").write_text(FACTORIES)
    _sys.path.insert(0, str(root))
    try:
        import bbfactories

        X_train, _, X_test, _ = digits
        ad = ModelDistillation(distilled_model=bbfactories.student(), model=bbfactories.teacher())
        ad.fit(X_train, epochs=2, seed=0, verbose=False)
        ad.infer_threshold(X_test[:200], threshold_perc=95)
        save_detector(ad.drift_detector(X_test[200:400]), root / "detector")
        yield {"root": root, "ad": ad, "X": X_test[400:]}
    finally:
        _sys.path.remove(str(root))
        _sys.modules.pop("bbfactories", None)


def _run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--token-file", "/nonexistent/token"], "--token-file"),
        (["--model", "no_colon"], "module:factory"),
        (["--model", "no_such_module_xyz:make"], "cannot import"),
        (["--distilled-model", "os:no_such_attr"], "no attribute"),
        (["--events", "/nonexistent/dir/e.jsonl"], "does not exist"),
        (["--reference", "/nonexistent/ref.npy"], "--reference"),
        (["--max-wait-ms", "5000"], "--max-wait-ms"),
        (["--workers", "0"], "--workers"),
        (["--port", "70000"], "--port"),
        (["--host", "not a host name"], "--host"),
    ],
)
def test_argument_errors_exit_2_with_one_line(tmp_path, capsys, extra, message):
    # checked before the folder is loaded: an empty folder is enough
    code, line = _run(["serve", str(tmp_path), *extra], capsys)
    assert code == 2
    assert line.startswith("distilldetect: error:") and message in line


def test_folder_errors_exit_2(detectors, tmp_path, capsys):
    code, line = _run(["serve", str(tmp_path / "missing")], capsys)
    assert code == 2 and "is not a folder" in line
    empty = tmp_path / "token"
    empty.write_text("  \n")
    code, line = _run(["serve", str(detectors["root"] / "cd"), "--token-file", str(empty)], capsys)
    assert code == 2 and "empty" in line
    code, line = _run(["serve", str(tmp_path), "--port", "0"], capsys)  # not a detector
    assert code == 2 and "config.json" in line


def test_port_in_use_exits_2(detectors, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code, line = _run(["serve", str(detectors["root"] / "cd"), "--port", str(port)], capsys)
    assert code == 2 and "cannot listen" in line


def test_factories_for_models_the_folder_cannot_rebuild(serve, custom, monkeypatch):
    from distilldetect.serve.detector import import_factory

    monkeypatch.syspath_prepend(str(custom["root"]))
    teacher = import_factory("bbfactories:teacher", "--model")
    student = import_factory("bbfactories:student", "--distilled-model")
    with pytest.raises(ValueError, match="distilled_model"):  # the folder alone is not enough
        serve(custom["root"] / "detector", model_factory=teacher)
    token = "factory-token-0123456789abcdef"
    live = serve(
        custom["root"] / "detector",
        model_factory=teacher,
        distilled_model_factory=student,
        token=token,
    )
    X = custom["X"][:6]
    auth = {"Authorization": f"Bearer {token}"}
    with live.client(headers=auth) as c:
        r = c.post("/score", json={"instances": X.tolist()})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["instance_score"], custom["ad"].score(X), rtol=1e-5)
        r = c.post("/admin/reload")  # the factories are called again: fresh modules
        assert r.status_code == 200, r.text
        r = c.post("/score", json={"instances": X.tolist()})
        np.testing.assert_allclose(r.json()["instance_score"], custom["ad"].score(X), rtol=1e-5)


@pytest.mark.slow
def test_serve_command_in_a_process(custom, tmp_path):
    """The real command: starts, answers with the token, appends events, stops on SIGINT."""
    import httpx

    token_file = tmp_path / "token"
    token = "process-token-0123456789abcdef"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    events = tmp_path / "events.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([SRC, str(custom["root"])]),
        "NO_PROXY": "*",
    }
    env.pop("http_proxy", None)
    env.pop("HTTP_PROXY", None)
    cmd = [
        sys.executable,
        "-m",
        "distilldetect.cli",
        "serve",
        str(custom["root"] / "detector"),
        "--port",
        "0",
        "--name",
        "digits",
        "--token-file",
        str(token_file),
        "--events",
        str(events),
        "--window",
        "20",
        "--drift-every",
        "10",
        "--model",
        "bbfactories:teacher",
        "--distilled-model",
        "bbfactories:student",
    ]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        url = None
        lines = []
        while url is None:
            assert time.monotonic() < deadline, lines
            line = proc.stderr.readline()
            assert line or proc.poll() is None, lines
            lines.append(line)
            if line.startswith("distilldetect serve: http://"):
                url = line.split()[2].rstrip("/")
                assert "token required" in line
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
            for _ in range(100):  # uvicorn accepts once its startup is complete
                try:
                    if c.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            assert c.get("/drift").status_code == 401
            r = c.post("/score", json={"instances": custom["X"][:20].tolist()}, headers=auth)
            assert r.status_code == 200
            for _ in range(100):
                if c.get("/drift", headers=auth).json()["history"]:
                    break
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stderr.close()
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds == ["start", "drift", "drift"]
