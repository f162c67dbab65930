"""Throughput and latency of ``distilldetect serve`` against offline ``ModelDistillation.score``.

Run by hand: ``python benchmarks/bench_serve.py [--quick] [--json FILE]``.

The detector is realistic for Fashion-MNIST: the zoo ``cnn_classifier`` teacher and the seed's
``distilled_model_cifar10`` student on 28x28 inputs, fitted for one epoch on 2000 images (speed
does not depend on how well it is trained). Requests carry Fashion-MNIST test images (the
Debian package's files, else random images of the same shape) as ``scale_by_instance``'d
float32, each number written in full (``x.tolist()``), as a numpy client would send them.

Protocol:

1. **Offline**: ``ad.score(X)`` (default batch size 256) and ``ad.score(X, teacher_probs=P)`` on
   2000 instances in this process; median of 3 calls after a warm-up.
2. **Served**: ``distilldetect serve`` started as a separate process (the real command, ``-q``,
   on 127.0.0.1, port chosen by the system), driven from this process by ``httpx`` async
   clients on keep-alive connections: concurrency 1 / 16 / 64, requests of 1 or 100 instances,
   with and without ``teacher_probs``, at ``POST /v2/models/{name}/infer`` (the Open Inference
   Protocol). Each configuration sends a fixed number of requests after a warm-up and reports
   requests/s, instances/s, the p50 / p99 of the per-request latency (client side, from send to
   the parsed answer) and the ratio of its instances/s to the offline figure with the same
   ``teacher_probs`` setting. A configuration stops early at its time limit (reported).

Both processes share the machine's cores: the client's own CPU time is part of what limits the
served figures (noted with the load average in the output). Each row also says where the time
went, over the timed requests only: instances per forward pass and the workers' busy share
(from the server's ``/metrics``), and the CPU cores the server and the client processes used
(``/proc`` and ``time.process_time``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SRC = str(Path(__file__).resolve().parents[1] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)


def build_detector(folder: Path, seed: int = 0, kind: str = "fmnist") -> tuple[Any, np.ndarray]:
    """Fit and save the detector; return it with the request images.

    ``kind='fmnist'``: the small CNN on Fashion-MNIST described above. ``kind='cifar10'``: the
    reference study's detector, the zoo's ResNet-20 teacher and the seed's student on 32x32x3
    images (random images in CIFAR-10's shape: the data set is not on this machine, and speed
    does not depend on the pixels).
    """
    from distilldetect import ModelDistillation, save_detector, scale_by_instance
    from distilldetect.models import build_model

    if kind == "cifar10":
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(6000, 32, 32, 3), dtype=np.uint8)
        X_all = scale_by_instance(images.astype("float32") / 255)
        teacher = build_model("resnet", input_shape=(32, 32, 3))
        student = build_model("distilled_model_cifar10", input_shape=(32, 32, 3))
        ad = ModelDistillation(distilled_model=student, model=teacher)
        ad.fit(X_all[:2000], epochs=1, seed=seed, verbose=False)
        ad.infer_threshold(X_all[2000:3000], threshold_perc=95)
        save_detector(ad.drift_detector(X_all[3000:4000]), folder)
        print("detector: resnet (ResNet-20) teacher + distilled_model_cifar10 student, 32x32x3")
        return ad, X_all[4000:]

    try:
        from distilldetect.datasets import load_fashion_mnist

        (x_train, _), (x_test, _) = load_fashion_mnist()
        source = "Fashion-MNIST"
    except Exception:  # pragma: no cover - offline machines without the data set
        rng = np.random.default_rng(seed)
        x_train = rng.integers(0, 256, size=(2000, 28, 28), dtype=np.uint8)
        x_test = rng.integers(0, 256, size=(4000, 28, 28), dtype=np.uint8)
        source = "random images"

    def prep(images: np.ndarray) -> np.ndarray:
        return scale_by_instance(images.astype("float32") / 255)

    X_train, X = prep(x_train[:2000]), prep(x_test[:4000])
    teacher = build_model("cnn_classifier", input_shape=(28, 28))
    student = build_model("distilled_model_cifar10", input_shape=(28, 28), nb_filters1=32)
    ad = ModelDistillation(distilled_model=student, model=teacher)
    ad.fit(X_train, epochs=1, seed=seed, verbose=False)
    ad.infer_threshold(X[:1000], threshold_perc=95)
    save_detector(ad.drift_detector(X[1000:2000]), folder)
    print(f"detector: cnn_classifier teacher + distilled_model_cifar10 student, 28x28 ({source})")
    return ad, X[2000:]


def offline(ad: Any, X: np.ndarray, probs: np.ndarray, repeats: int = 3) -> dict[str, float]:
    out = {}
    for key, kwargs in (("plain", {}), ("teacher_probs", {"teacher_probs": probs})):
        ad.score(X[:256], **{k: v[:256] for k, v in kwargs.items()})  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            ad.score(X, **kwargs)
            times.append(time.perf_counter() - start)
        out[key] = len(X) / float(np.median(times))
    return out


def start_server(
    folder: Path, extra: list[str], name: str = "fmnist"
) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        "-m",
        "distilldetect.cli",
        "serve",
        str(folder),
        "--port",
        "0",
        "--name",
        name,
        "-q",
        *extra,
    ]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        line = proc.stderr.readline()
        if line.startswith("distilldetect serve: http://"):
            return proc, line.split()[2].rstrip("/")
        if (not line and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start: {line}")


def body(
    x: np.ndarray, probs: np.ndarray | None, binary: bool = False
) -> tuple[bytes, dict[str, str]]:
    """An inference request and its headers: JSON numbers, or (``binary``) the protocol's binary
    tensor data extension, float32 bytes after a JSON header (as tritonclient sends them)."""
    tensors = [("x", x)] + ([] if probs is None else [("teacher_probs", probs)])
    inputs, blobs = [], []
    for name, arr in tensors:
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": "FP32"}
        if binary:
            blob = np.ascontiguousarray(arr, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel().tolist()
        inputs.append(entry)
    head = json.dumps({"inputs": inputs}).encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }


class _RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (far less CPU than httpx)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


def _raw_request(host: str, port: int, path: str, payload: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def drive(
    url: str,
    bodies: list[tuple[bytes, dict[str, str]]],
    concurrency: int,
    n_requests: int,
    time_limit: float,
    client: str = "raw",
    name: str = "fmnist",
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Send ``n_requests`` (cycling through ``bodies``) from ``concurrency`` connections."""
    import httpx

    host, port = url.split("//")[1].split(":")
    path = f"/v2/models/{name}/infer"
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    hx = httpx.AsyncClient(base_url=url, limits=limits, trust_env=False, timeout=60)
    raws = [_RawConnection(host, int(port)) for _ in range(concurrency)]
    raw_bodies = [_raw_request(host, int(port), path, b, h) for b, h in bodies]

    async def send(k: int, i: int) -> int:
        if client == "raw":
            status, data = await raws[k].post(raw_bodies[i % len(bodies)])
        else:
            payload, headers = bodies[i % len(bodies)]
            r = await hx.post(path, content=payload, headers=headers)
            status, data = r.status_code, r.content
        json.loads(data)
        return status

    next_i = 0
    deadline = 0.0

    async def worker(k: int, count: int | None) -> None:
        nonlocal next_i, failures
        done = 0
        while (count is None and next_i < n_requests and time.perf_counter() < deadline) or (
            count is not None and done < count
        ):
            i = next_i
            next_i += 1
            start = time.perf_counter()
            status = await send(k, i)
            if count is None:
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    failures += 1
            done += 1

    try:
        await asyncio.gather(*(worker(k, 3) for k in range(concurrency)))  # warm-up
        next_i = 0
        before = batch_counters(url)
        server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
        client_cpu = time.process_time()
        deadline = time.perf_counter() + time_limit
        start = time.perf_counter()
        await asyncio.gather(*(worker(k, None) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
        # cores each side kept busy (the machine has os.cpu_count() of them)
        server_cores = (cpu_seconds(server_pid) - server_cpu) / elapsed if server_pid else 0.0
        client_cores = (time.process_time() - client_cpu) / elapsed
        after = batch_counters(url)
    finally:
        await hx.aclose()
        for r in raws:
            await r.close()
    lat = np.asarray(latencies)
    passes = max(after[1] - before[1], 1.0)
    return {
        "client": client,
        "instances_per_forward": (after[0] - before[0]) / passes,
        # share of the wall time a scoring worker spent in forward passes (summed over workers)
        "worker_busy": (after[2] - before[2]) / elapsed,
        "server_cores": server_cores,
        "client_cores": client_cores,
        "requests": len(lat),
        "failures": failures,
        "seconds": elapsed,
        "requests_per_s": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "stopped_by_time_limit": len(lat) < n_requests,
    }


_COUNTERS = (
    "distilldetect_batch_instances_sum",
    "distilldetect_batch_instances_count",
    "distilldetect_forward_seconds_sum",
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process ``pid`` has used (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # pragma: no cover - not Linux
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_counters(url: str) -> tuple[float, float, float]:
    """(instances, forward passes, forward seconds) so far, from the server's ``/metrics``."""
    import httpx

    text = httpx.get(url + "/metrics", trust_env=False, timeout=30).text
    values = {}
    for line in text.splitlines():
        for key in _COUNTERS:
            if line.startswith(key + " ") or line.startswith(key + "{"):
                values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return tuple(values.get(key, 0.0) for key in _COUNTERS)  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per configuration")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--sizes", default="1,100", help="instances per request")
    parser.add_argument(
        "--encodings",
        default="json,binary",
        help="json: numbers in JSON; binary: the protocol's binary tensor data extension",
    )
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per configuration")
    parser.add_argument(
        "--client",
        default="raw",
        choices=["raw", "httpx", "both"],
        help="raw: a minimal asyncio HTTP/1.1 client (default); httpx: httpx.AsyncClient",
    )
    parser.add_argument(
        "--server-args", default="", help="extra arguments for distilldetect serve, one string"
    )
    parser.add_argument(
        "--detector",
        default="fmnist",
        choices=["fmnist", "cifar10"],
        help="fmnist: small CNN, 28x28 (default); cifar10: ResNet-20 teacher, 32x32x3",
    )
    args = parser.parse_args()
    concurrencies = [int(v) for v in args.concurrency.split(",")]
    sizes = [int(v) for v in args.sizes.split(",")]
    encodings = args.encodings.split(",")
    if not set(encodings) <= {"json", "binary"}:
        parser.error(f"--encodings: json and/or binary, got {args.encodings!r}")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "detector"
        ad, X = build_detector(folder, kind=args.detector)
        # the logged teacher outputs a client would send (temperature 1: p as the teacher gave)
        probs = ad.score(X, return_predictions=True)[1]
        ref = offline(ad, X[:2000], probs[:2000])
        print(
            f"offline ad.score: {ref['plain']:.0f} instances/s; with teacher_probs: "
            f"{ref['teacher_probs']:.0f} instances/s"
        )
        proc, url = start_server(folder, args.server_args.split(), args.detector)
        print(f"server: {url} (pid {proc.pid}); load average at start {load_start[0]:.2f}")
        rows = []
        try:
            for size, encoding, with_probs in [
                (s, e, p) for s in sizes for e in encodings for p in (False, True)
            ]:
                bodies = [
                    body(
                        X[i : i + size],
                        probs[i : i + size] if with_probs else None,
                        binary=encoding == "binary",
                    )
                    for i in range(0, min(len(X), 64 * size), size)
                ]
                clients = ["raw", "httpx"] if args.client == "both" else [args.client]
                for conc, client in [(c, k) for c in concurrencies for k in clients]:
                    n = (400 if size == 1 else 60) if args.quick else (3000 if size == 1 else 300)
                    n = max(n, 4 * conc)
                    res = asyncio.run(
                        drive(
                            url,
                            bodies,
                            conc,
                            n,
                            args.time_limit,
                            client,
                            args.detector,
                            proc.pid,
                        )
                    )
                    key = "teacher_probs" if with_probs else "plain"
                    inst = res["requests_per_s"] * size
                    row = {
                        "instances_per_request": size,
                        "encoding": encoding,
                        "teacher_probs": with_probs,
                        "concurrency": conc,
                        **res,
                        "instances_per_s": inst,
                        "offline_instances_per_s": ref[key],
                        "ratio_to_offline": inst / ref[key],
                        "load_average_1min": os.getloadavg()[0],
                    }
                    rows.append(row)
                    print(
                        f"{client:5s} {encoding:6s} size {size:3d} probs {str(with_probs):5s} "
                        f"c={conc:2d}: "
                        f"{res['requests_per_s']:7.1f} req/s {inst:7.0f} inst/s "
                        f"p50 {res['p50_ms']:6.1f} ms p99 {res['p99_ms']:6.1f} ms "
                        f"ratio {inst / ref[key]:.2f} batch {res['instances_per_forward']:.1f} "
                        f"busy {res['worker_busy']:.2f} cores server "
                        f"{res['server_cores']:.2f} client {res['client_cores']:.2f} "
                        f"(n={res['requests']}, "
                        f"failures {res['failures']}, load {row['load_average_1min']:.1f})",
                        flush=True,
                    )
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
            proc.stderr.close()
    print()
    print(
        "| client | encoding | instances/request | teacher_probs | concurrency | requests/s "
        "| instances/s | p50 ms | p99 ms | ratio to offline | instances/forward | server cores |"
    )
    print("|---|---|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['client']} | {r['encoding']} | {r['instances_per_request']} | "
            f"{'yes' if r['teacher_probs'] else 'no'} | "
            f"{r['concurrency']} | {r['requests_per_s']:.0f} | {r['instances_per_s']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['ratio_to_offline']:.2f} | "
            f"{r['instances_per_forward']:.1f} | {r['server_cores']:.2f} |"
        )
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    if args.json:
        out = {
            "offline": ref,
            "rows": rows,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        }
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
