"""Shared fixtures: small real data (scikit-learn digits) and quickly trained torch models."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits as float32 images (n, 8, 8) in [0, 1]: (X_train, y_train, X_test, y_test)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = (data.images / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    X, y = X[order], y[order]
    return X[:1200], y[:1200], X[1200:], y[1200:]


def train_classifier(model, X, y, epochs=30, seed=0, lr=3e-3):
    """Supervised training of a torch softmax classifier (used to make teachers in tests)."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(Xt), generator=g)
        for i in range(0, len(Xt), 64):
            idx = perm[i : i + 64]
            probs = model(Xt[idx])
            loss = torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-7)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


@pytest.fixture(scope="session")
def digits_teacher(digits):
    """A torch MLP teacher trained on digits (~97 % test accuracy)."""
    import torch

    from distilldetect.backends.torch.models import mlp

    X_train, y_train, _, _ = digits
    torch.manual_seed(0)
    return train_classifier(mlp((8, 8), 10, (64,)), X_train, y_train)


@pytest.fixture
def digits_onnx(digits_teacher, tmp_path):
    """The digits teacher exported by ``torch.onnx`` (8x8 float inputs, a batch axis):
    ``tmp_path / 'teacher.onnx'``."""
    pytest.importorskip("onnxruntime")
    import torch

    path = tmp_path / "teacher.onnx"
    torch.onnx.export(
        digits_teacher.eval(),
        (torch.zeros(2, 8, 8),),
        str(path),
        input_names=["x"],
        output_names=["p"],
        dynamic_axes={"x": {0: "n"}, "p": {0: "n"}},
        dynamo=False,
    )
    return path


@pytest.fixture
def make_student():
    """Factory of small, seeded torch students for 8x8 digits."""
    import torch

    from distilldetect.backends.torch.models import mlp

    def make(seed: int = 1, hidden=(16,)):
        torch.manual_seed(seed)
        return mlp((8, 8), 10, hidden)

    return make


# --------------------------------------------------------- a local HTTP server for downloads
class LocalServer:
    """Serves ``routes[path] = (body, extra_headers, cut)`` on 127.0.0.1; records requests.

    ``cut=True`` announces the full ``Content-Length`` but sends half the body and closes.
    """

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, dict[str, str], bool]] = {}
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                route = owner.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                body, headers, cut = route
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, body: bytes, *, headers: dict | None = None, cut: bool = False) -> str:
        self.routes[path] = (body, headers or {}, cut)
        return self.url(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def workers(request, monkeypatch) -> int:
    """Torch's speed code with the row split off (1) and on (2, also for tiny work), and
    convolution pairs composed whatever their cost."""
    pytest.importorskip("torch")
    from distilldetect.backends.torch import compose
    from distilldetect.backends.torch import fast as pf

    monkeypatch.setattr(pf, "n_workers", lambda: request.param)
    monkeypatch.setattr(pf, "MIN_WORK_TO_SPLIT", 0)
    monkeypatch.setattr(pf, "MIN_ROWS_PER_WORKER", 1)
    monkeypatch.setattr(compose, "MIN_MACS_TO_COMPOSE", 0)
    return request.param


@pytest.fixture(scope="module")
def attack_digits():
    """A torch MLP teacher trained on the 8x8 digits, its training images, and 200 test images
    it classifies correctly with their labels (the attacks' and robust student's tests)."""
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    from distilldetect.backends.torch.models import mlp
    from distilldetect.backends.torch.runtime import train_classifier
    from distilldetect.utils import predict_batch

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 8, 8)
    torch.manual_seed(0)
    net = mlp((8, 8), 10, (64,))
    train_classifier(net, X[:1200], y[:1200], epochs=12, seed=0, verbose=False)
    xt, yt = X[1200:], y[1200:]
    right = predict_batch(xt, net).argmax(1) == yt
    assert right.mean() > 0.8
    return net, X[:1200], xt[right][:200], yt[right][:200].astype(np.int64)
