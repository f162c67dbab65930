"""Batch scoring at scale: rows/s of ``distilldetect score`` locally and on Ray, and flat memory.

Run by hand: ``python benchmarks/bench_scale.py [--rows 100000] [--mem-rows 10000] [--json F]``.

The detector is realistic for 28x28 images: the zoo ``cnn_classifier`` teacher and the seed's
``distilled_model_cifar10`` student (32 first-layer filters), trained briefly on Fashion-MNIST
(or on random images if the data set is not on the machine), saved with its harmful-drift
detector. The input is Fashion-MNIST test images (float32, scaled per instance) tiled to the
wanted number of rows, written as ``.npy`` shards of 5000 rows.

Every case runs in a fresh subprocess (``score_files`` with ``verbose=False``):

- ``local``: the local engine with torch's default threads (one per core);
- ``local 1 thread``: the same with ``OMP_NUM_THREADS=1``, the thread count of one Ray actor
  (Ray sets ``OMP_NUM_THREADS`` to an actor's CPUs), for a fair per-worker comparison;
- ``ray 1 worker`` / ``ray 2 workers``: the Ray engine on a local cluster that the subprocess
  starts first (``ray.init(address='local', num_cpus=...)``, timed apart), so the figure is the
  pipeline: actors starting and loading the detector, reading, scoring, writing, and the
  driver's ordered consolidation and drift windows.

Rows/s = rows / wall time of the ``score_files`` call (its checks included). The overhead of Ray
at one worker is ``t(ray 1 worker) / t(local 1 thread) - 1``.

Memory: peak RSS (``VmHWM``) of the local engine's subprocess on ``--mem-rows`` and on ten times
as many rows; flat memory means the ratio stays within 1.10.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

SHARD = 5000


def build_detector(root: Path) -> Path:
    """Train and save the benchmark detector (ModelDistillation + drift detector)."""
    from distilldetect import ModelDistillation, save_detector, scale_by_instance
    from distilldetect.models import build_model, train_classifier

    try:
        from distilldetect.datasets import load_fashion_mnist

        (x_train, y_train), (x_test, _) = load_fashion_mnist(download_if_missing=False)
        source = "Fashion-MNIST"
    except (ValueError, OSError):
        rng = np.random.default_rng(0)
        x_train = rng.integers(0, 256, size=(6000, 28, 28), dtype=np.uint8)
        y_train = rng.integers(0, 10, size=6000).astype(np.uint8)
        x_test = rng.integers(0, 256, size=(10000, 28, 28), dtype=np.uint8)
        source = "random images"

    def prep(images: np.ndarray) -> np.ndarray:
        return scale_by_instance(images.astype("float32") / 255).astype(np.float32)

    X_train = prep(x_train[:5000])
    teacher = build_model("cnn_classifier", input_shape=(28, 28))
    train_classifier(
        teacher, X_train, y_train[:5000].astype(np.int64), epochs=1, seed=0, verbose=False
    )
    student = build_model("distilled_model_cifar10", input_shape=(28, 28), nb_filters1=32)
    ad = ModelDistillation(distilled_model=student, model=teacher, loss_type="xent")
    ad.fit(X_train, epochs=1, seed=0, verbose=False)
    X_test = prep(x_test)
    ad.infer_threshold(X_test[:2000], threshold_perc=95)
    save_detector(ad.drift_detector(X_test[2000:3000], p_val=0.05), root / "detector")
    np.save(root / "pool.npy", X_test)
    (root / "source.txt").write_text(source)
    n_params = (
        sum(p.numel() for p in teacher.parameters()),
        sum(p.numel() for p in student.parameters()),
    )
    (root / "params.json").write_text(json.dumps(n_params))
    return root / "detector"


def write_input(root: Path, n_rows: int) -> Path:
    """``n_rows`` tiled test images as .npy shards of SHARD rows."""
    pool = np.load(root / "pool.npy", mmap_mode="r")
    folder = root / f"input-{n_rows}"
    if folder.exists():
        return folder
    folder.mkdir()
    for i, start in enumerate(range(0, n_rows, SHARD)):
        idx = np.arange(start, min(start + SHARD, n_rows)) % len(pool)
        np.save(folder / f"part-{i:05d}.npy", np.asarray(pool[idx]))
    return folder


CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    engine, detector, inp, out, workers = sys.argv[1:6]
    t_init = 0.0
    if engine == "ray":
        import ray
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=max(os.cpu_count(), int(workers) + 1),
                 include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        t_init = time.perf_counter() - t0
    from distilldetect.batch import score_files
    kw = {"engine": engine, "workers": int(workers)} if engine == "ray" else {}
    t0 = time.perf_counter()
    s = score_files(detector, inp, out, drift_window=1000, batch_size=256, overwrite=True,
                    verbose=False, **kw)
    seconds = time.perf_counter() - t0
    threads = None
    if engine == "ray":
        import ray
        @ray.remote(num_cpus=1)
        def torch_threads():
            import torch
            return torch.get_num_threads()
        threads = ray.get(torch_threads.remote())
        ray.shutdown()
    else:
        import torch
        threads = torch.get_num_threads()
    hwm = None
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    print(json.dumps({"seconds": seconds, "rows": s.n_rows, "init_s": t_init,
                      "peak_rss": hwm, "threads": threads, "windows": s.n_windows}))
    """
)


def run_case(
    engine: str, detector: Path, inp: Path, out: Path, workers: int = 1, env: dict | None = None
) -> dict:
    full_env = {
        **os.environ,
        **(env or {}),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, engine, str(detector), str(inp), str(out), str(workers)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} case failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100000, help="rows of the speed cases")
    parser.add_argument(
        "--mem-rows",
        type=int,
        default=10000,
        help="rows of the small memory case (the large one has 10x)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--work-dir", default=None, help="folder for the detector and inputs")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    root = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    detector = root / "detector" if (root / "detector").exists() else build_detector(root)
    print(
        f"detector: {detector} ({(root / 'source.txt').read_text()}; teacher / student "
        f"parameters {json.loads((root / 'params.json').read_text())}; "
        f"{time.perf_counter() - t0:.0f} s)"
    )
    results: dict = {
        "rows": args.rows,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_before": os.getloadavg(),
        "cases": {},
    }
    inp = write_input(root, args.rows)
    cases = [("local", "local", 1, None), ("local 1 thread", "local", 1, {"OMP_NUM_THREADS": "1"})]
    if not args.skip_ray:
        cases += [("ray 1 worker", "ray", 1, None), ("ray 2 workers", "ray", 2, None)]
    print(
        f"{args.rows} rows of 28x28 float32 ({args.rows * 3136 / 2**20:.0f} MiB), batch 256, "
        f"drift windows of 1000; load average {os.getloadavg()[0]:.2f}"
    )
    for name, engine, workers, env in cases:
        r = run_case(engine, detector, inp, root / "out.parquet", workers, env)
        r["rows_per_s"] = r["rows"] / r["seconds"]
        r["load"] = os.getloadavg()
        results["cases"][name] = r
        init = f", cluster start {r['init_s']:.1f} s (not counted)" if engine == "ray" else ""
        print(
            f"  {name:16s} {r['seconds']:7.1f} s  {r['rows_per_s']:7.0f} rows/s  "
            f"torch threads {r['threads']}{init}  load {r['load'][0]:.2f}"
        )
    c = results["cases"]
    if "ray 1 worker" in c:
        results["ray_overhead_at_1_worker"] = (
            c["ray 1 worker"]["seconds"] / c["local 1 thread"]["seconds"] - 1
        )
        results["ray_2_over_1_worker"] = (
            c["ray 1 worker"]["seconds"] / c["ray 2 workers"]["seconds"]
        )
        print(
            f"  ray overhead at one worker (vs local, 1 thread): "
            f"{results['ray_overhead_at_1_worker']:+.0%}; 2 workers vs 1: "
            f"{results['ray_2_over_1_worker']:.2f}x"
        )

    if not args.skip_memory:
        small, large = args.mem_rows, 10 * args.mem_rows
        mem = {}
        for n in (small, large):
            r = run_case("local", detector, write_input(root, n), root / "mem.parquet")
            mem[n] = r
            print(
                f"  memory, local, {n:7d} rows: peak RSS {r['peak_rss'] / 2**20:7.1f} MiB "
                f"({r['rows'] / r['seconds']:.0f} rows/s, load {os.getloadavg()[0]:.2f})"
            )
        ratio = mem[large]["peak_rss"] / mem[small]["peak_rss"]
        results["memory"] = {str(k): v for k, v in mem.items()}
        results["memory_ratio_10x"] = ratio
        print(
            f"  peak RSS at 10x the rows: {ratio:.3f}x ({'within' if ratio <= 1.10 else 'ABOVE'}"
            " the 10 % target)"
        )
    results["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.work_dir is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
