"""Fixtures of the service tests: small saved detectors and real uvicorn servers on loopback."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")

from servehelpers import LiveServer  # noqa: E402


@pytest.fixture(scope="session")
def detectors(tmp_path_factory, digits, digits_teacher) -> dict[str, Any]:
    """Saved folders: 'ad' (ModelDistillation), 'cd' (its drift detector), 'cd_other' (the same
    detector with another threshold), plus the detectors and data to compare with."""
    import torch

    from distilldetect import ModelDistillation, save_detector
    from distilldetect.models import build_model

    X_train, _, X_test, _ = digits
    torch.manual_seed(1)
    student = build_model("mlp", input_shape=(8, 8), num_classes=10, hidden=(16,))
    ad = ModelDistillation(distilled_model=student, model=digits_teacher)
    ad.fit(X_train, epochs=20, seed=0, verbose=False)
    ad.infer_threshold(X_test[:200], threshold_perc=90)
    root = tmp_path_factory.mktemp("detectors")
    save_detector(ad, root / "ad")
    cd = ad.drift_detector(X_test[200:400], p_val=0.05)
    save_detector(cd, root / "cd")
    other = ModelDistillation(distilled_model=student, model=digits_teacher, threshold=0.5)
    other.input_shape = ad.input_shape
    cd_other = other.drift_detector(X_test[200:400], p_val=0.05)
    save_detector(cd_other, root / "cd_other")
    np.save(root / "reference.npy", X_test[200:400])
    return {
        "root": root,
        "ad": ad,
        "cd": cd,
        "X": X_test[400:],
        "X_ref": X_test[200:400],
        "threshold": ad.threshold,
        "other_threshold": 0.5,
        "cd_other": cd_other,
    }


@pytest.fixture
def serve(monkeypatch):
    """``serve(path, **create_app_kwargs) -> LiveServer``; every server stops at teardown."""
    from distilldetect.serve import create_app

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    servers: list[LiveServer] = []

    def start(path: Any, **kwargs: Any) -> LiveServer:
        kwargs.setdefault("name", "digits")
        srv = LiveServer(create_app(str(path), **kwargs))
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()
