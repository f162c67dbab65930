"""A/B of the fast path's oneDNN Graph chunks (``fast.ONEDNN_FUSION``) on the user's models.

Each run is a fresh process scoring 2000 CIFAR-shaped rows with the benchmark's user-written
ResNet-20 teacher and student, ``ModelDistillation(..., optimize=True)``: the first call
(building included), then the median of three timed calls. Runs alternate off / on so both
see the same machine load; the scores of the two settings are compared at the end.

    .venv/bin/python benchmarks/bench_fusion.py --pairs 3
    .venv/bin/python benchmarks/bench_fusion.py --single-thread   # the graphs alone, one thread

``--single-thread`` times, on one thread, each model's ``optimize_for_inference`` graph
against its oneDNN Graph one at a fixed number of rows (median of 15 calls after 4).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def child(mode: str, out: str) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from user_models import UserResNet20, UserStudent

    import distilldetect.backends.torch.fast as fast
    from distilldetect import ModelDistillation

    fast.ONEDNN_FUSION = mode == "on"
    torch.manual_seed(0)
    ad = ModelDistillation(
        distilled_model=UserStudent(), model=UserResNet20().eval(), optimize=True
    )
    x = np.random.default_rng(0).random((2000, 3, 32, 32), dtype=np.float32)
    start = time.perf_counter()
    ad.score(x)
    first = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        scores = ad.score(x)
        times.append(time.perf_counter() - start)
    np.save(out, scores)
    print(json.dumps({"mode": mode, "first_s": first, "rate": len(x) / sorted(times)[1]}))


def single_thread(sizes: tuple[int, ...] = (16, 32, 64)) -> None:
    import warnings

    import torch

    sys.path.insert(0, str(HERE))
    from user_models import UserResNet20, UserStudent

    from distilldetect.backends.torch.fast import _trace_frozen, traced_folded_copy

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    def rate(graph, x) -> float:
        with torch.inference_mode():
            for _ in range(4):
                graph(x)
            times = []
            for _ in range(15):
                start = time.perf_counter()
                graph(x)
                times.append(time.perf_counter() - start)
        return len(x) / sorted(times)[len(times) // 2]

    torch.manual_seed(0)
    for name, model in (("teacher", UserResNet20()), ("student", UserStudent())):
        copy, _ = traced_folded_copy(model.eval(), compose=True)
        for rows in sizes:
            x = torch.rand(rows, 3, 32, 32)
            plain = torch.jit.optimize_for_inference(_trace_frozen(copy, x))
            before = torch.jit.onednn_fusion_enabled()
            torch.jit.enable_onednn_fusion(True)
            try:
                fused = _trace_frozen(copy, x)
                fused_rate = rate(fused, x)
            finally:
                torch.jit.enable_onednn_fusion(before)
            print(
                f"{name} {rows:3d} rows, one thread: optimize_for_inference "
                f"{rate(plain, x):6.0f} rows/s, oneDNN Graph {fused_rate:6.0f} rows/s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="off/on pairs to run")
    parser.add_argument("--single-thread", action="store_true", help="the graphs alone")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out)
        return
    if args.single_thread:
        single_thread()
        return
    rates: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.pairs):
            for mode in ("off", "on"):
                out = str(Path(tmp) / f"{mode}.npy")
                cmd = [sys.executable, __file__, "--child", mode, "--out", out]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                row = json.loads(line.strip().splitlines()[-1])
                rates[mode].append(row["rate"])
                print(f"{mode:>3}: {row['rate']:7.0f} inst/s  first call {row['first_s']:.2f} s")
        off, on = (np.load(str(Path(tmp) / f"{m}.npy")) for m in ("off", "on"))
    rel = float(np.max(np.abs(on - off) / np.maximum(np.abs(off), 1e-12)))
    print(
        f"median off {np.median(rates['off']):.0f}, on {np.median(rates['on']):.0f} inst/s "
        f"({np.median(rates['on']) / np.median(rates['off']):.2f}x); scores within {rel:.1e} "
        "relative"
    )


if __name__ == "__main__":
    main()
