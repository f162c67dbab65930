"""Helpers of the service tests: a real uvicorn server on loopback, request bodies, metrics."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Longest life of a test server (it is shut down earlier by its fixture).
SERVER_LIFETIME = 180.0


def copy_detector(src: Path, dst: Path) -> Path:
    """A copy of a saved folder (tests that modify or reload a folder use their own copy)."""
    shutil.copytree(src, dst)
    return dst


class LiveServer:
    """A real uvicorn server on a random 127.0.0.1 port, in a thread, with a bounded life."""

    def __init__(self, app: Any, lifetime: float = SERVER_LIFETIME) -> None:
        import uvicorn

        self.app = app
        self.service = app.state.service
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._timer.cancel()
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        self.service.close()  # idempotent: lifespan shutdown already did it

    def client(self, **kwargs: Any):
        import httpx

        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, trust_env=False, **kwargs)


def v2_request(x: np.ndarray, teacher_probs: np.ndarray | None = None, **extra: Any) -> dict:
    """An Open Inference Protocol request body for instances ``x``."""
    inputs = [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    if teacher_probs is not None:
        inputs.append(
            {
                "name": "teacher_probs",
                "shape": list(teacher_probs.shape),
                "datatype": "FP64",
                "data": teacher_probs.ravel().tolist(),
            }
        )
    return {"inputs": inputs, **extra}


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
