"""Faults and load: clients killed mid-request during concurrent reloads; no request lost."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from servehelpers import copy_detector, metric_value, v2_request

TOKEN = "fault-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _score_request(port: int, body: bytes, content_length: int | None = None) -> bytes:
    n = len(body) if content_length is None else content_length
    return (
        f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
    ).encode() + body


def _send_and_drop(port: int, data: bytes, *, reset: bool) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(data)
        if reset:  # close with a TCP reset, as a killed process's kernel may
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        s.close()


_KILLED_CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(sys.stdin.buffer.read())
print("sent", flush=True)
time.sleep(60)
"""


def _total(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_killed_clients_and_concurrent_reloads(serve, detectors, tmp_path):
    from distilldetect import save_detector

    folder = copy_detector(detectors["root"] / "cd", tmp_path / "served")
    live = serve(folder, token=TOKEN, window=30, drift_every=10)
    X = detectors["X"]
    body = json.dumps({"instances": X[:3].tolist()}).encode()
    attempted = 2 * 15  # /score requests whose headers reached the server (scorers first)
    errors: list[str] = []

    def scorer() -> None:
        with live.client(headers=AUTH) as c:
            for _ in range(15):
                r = c.post("/score", content=body, headers={"content-type": "application/json"})
                if r.status_code != 200:
                    errors.append(f"score {r.status_code} {r.text}")

    def reloader(k: int) -> None:
        with live.client(headers=AUTH) as c:
            for i in range(3):
                if k == 0:  # one thread also rewrites the folder between reloads
                    save_detector(detectors["cd_other"] if i % 2 == 0 else detectors["cd"], folder)
                r = c.post("/admin/reload")
                if r.status_code not in (200, 409):
                    errors.append(f"reload {r.status_code} {r.text}")

    threads = [threading.Thread(target=scorer) for _ in range(2)]
    threads += [threading.Thread(target=reloader, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    # clients that die: mid-body (FIN and RST), after the full request, before the headers end
    port = live.port
    for reset in (False, True):
        for _ in range(3):
            _send_and_drop(
                port, _score_request(port, body[:20], content_length=len(body)), reset=reset
            )
            attempted += 1
            _send_and_drop(port, _score_request(port, body), reset=reset)
            attempted += 1
            _send_and_drop(port, b"POST /score HTTP/1.1\r\nContent-Le", reset=reset)
            _send_and_drop(port, b"\x16\x03\x01 not http at all\r\n\r\n", reset=reset)
    # processes killed with SIGKILL in the middle of sending a body
    procs = []
    for _ in range(3):
        p = subprocess.Popen(
            [sys.executable, "-c", _KILLED_CLIENT, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        p.stdin.write(_score_request(port, body[: len(body) // 2], content_length=len(body)))
        p.stdin.close()
        procs.append(p)
    for p in procs:
        assert p.stdout.readline().strip() == b"sent"
        attempted += 1
        p.kill()
        p.wait(timeout=10)
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    with live.client(headers=AUTH) as c:
        # every /score request is accounted for: answered, or its client went away
        deadline = time.monotonic() + 20
        while True:
            text = c.get("/metrics").text
            answered = _total(text, "distilldetect_requests_total", endpoint="/score")
            gone = _total(text, "distilldetect_client_disconnects_total", endpoint="/score")
            if answered + gone == attempted or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answered + gone == attempted, (answered, gone, attempted)
        assert gone >= 9  # the 6 mid-body drops and the 3 killed processes at least
        # still healthy, still correct
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert live.service.batcher.alive
        r = c.post("/score", json={"instances": X[:5].tolist()})
        assert r.status_code == 200
        np.testing.assert_allclose(
            r.json()["instance_score"], detectors["ad"].score(X[:5]), rtol=1e-6
        )
        assert _total(text, "distilldetect_requests_total", status="500") == 0


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_bounded_load_loses_no_request(serve, detectors, workers):
    """600 requests at concurrency 32 within a time limit: all answered, correctly, counted
    (one scoring thread, and two scoring batches side by side)."""
    import httpx

    live = serve(detectors["root"] / "cd", window=200, drift_every=50, workers=workers)
    X = detectors["X"][:160]
    offline = detectors["ad"].score(X)
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=len(X))
    offline_tp = detectors["ad"].score(X, teacher_probs=probs)
    n_requests = 600

    async def main():
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(
            base_url=live.url, limits=limits, trust_env=False, timeout=60
        ) as c:
            gate = asyncio.Semaphore(32)

            async def one(i: int):
                n = 1 + i % 4
                rows = slice(i % 150, i % 150 + n)
                async with gate:
                    if i % 3 == 0:
                        r = await c.post("/v2/models/digits/infer", json=v2_request(X[rows]))
                        scores = r.json()["outputs"][0]["data"] if r.status_code == 200 else None
                        want = offline[rows]
                    elif i % 3 == 1:
                        r = await c.post(
                            "/score",
                            json={
                                "instances": X[rows].tolist(),
                                "teacher_probs": probs[rows].tolist(),
                            },
                        )
                        scores = r.json()["instance_score"] if r.status_code == 200 else None
                        want = offline_tp[rows]
                    else:
                        r = await c.post("/score", json={"instances": X[rows].tolist()})
                        scores = r.json()["instance_score"] if r.status_code == 200 else None
                        want = offline[rows]
                return r.status_code, scores, want, n

            return await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(n_requests))), timeout=240
            )

    results = asyncio.run(main())
    assert [s for s, *_ in results] == [200] * n_requests
    for _, scores, want, _ in results:  # batching never mixes up rows
        np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-7)
    n_instances = sum(n for *_, n in results)
    with live.client() as c:
        text = c.get("/metrics").text
    assert _total(text, "distilldetect_requests_total", status="200", method="POST") == n_requests
    assert metric_value(text, "distilldetect_instances_scored_total") == n_instances
    assert metric_value(text, "distilldetect_batch_requests_sum") == n_requests
    assert metric_value(text, "distilldetect_batch_instances_sum") == n_instances
    assert metric_value(text, "distilldetect_batch_requests_count") < n_requests  # batched
