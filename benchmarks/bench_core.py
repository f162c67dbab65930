"""Speed and memory of distilldetect's ModelDistillation on CIFAR-shaped data (a benchmark, not a test).

Teacher: the zoo's ResNet-20 (3 stages x 3 basic blocks, widths 16/32/64, ~0.27 M parameters).
Student: the seed's distilled model (Conv 256 k4 s2 -> Conv 128 k4 s2 relu -> Conv 64 k4 s2 relu
-> Flatten -> Dense 40 -> Dense 10 softmax, ~0.71 M parameters). Input: synthetic ``(n, 32, 32, 3)``
float32 in [0, 1).

Configurations (each measured in a fresh subprocess, so that its peak RSS is its own):

``fit_cached``
    ``fit(X, epochs, batch_size=128)``: the teacher's outputs are computed once, then cached
    (the default). Reported as instances x epochs per second; the teacher pass is included.
``fit_uncached``
    The same with ``preprocess_fn=identity``, which makes the teacher run on every minibatch
    (what alibi-detect always does).
``score``
    ``score(X)``: teacher and student forward passes, default batch size.
``score_teacher_probs``
    ``score(X, teacher_probs=P)``: the teacher's outputs are given, only the student runs.

In each subprocess the first full call is a warm-up (its time is reported as ``first_s``, it
includes one-off costs such as building the frozen teacher copy), then ``repeats`` timed calls;
the median is reported. Peak RSS is the process's high-water mark (``VmHWM``).

This module imports nothing but the standard library at the top, so that the reference
benchmark (``reference/bench_alibi.py``, run in another venv) can reuse its harness.

Examples
--------
Standalone::

    .venv/bin/python benchmarks/bench_core.py --json results/bench_core.json

Importable::

    >>> import bench_core  # doctest: +SKIP
    >>> res = bench_core.run(configs=["score"], n_score=500, repeats=1)  # doctest: +SKIP
    >>> res["results"]["score"]["rate"]  # doctest: +SKIP
    1234.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIGS",
    "run",
    "measure",
    "peak_rss_mb",
    "current_rss_mb",
    "spawn_child",
    "machine_info",
    "format_results",
]

HERE = Path(__file__).resolve().parent

#: configuration name -> (kind, unit) where kind is 'fit' or 'score'
CONFIGS: dict[str, tuple[str, str]] = {
    "fit_cached": ("fit", "inst*epoch/s"),
    "fit_uncached": ("fit", "inst*epoch/s"),
    "score": ("score", "inst/s"),
    "score_teacher_probs": ("score", "inst/s"),
    # the same on models written outside the zoo (benchmarks/user_models.py), default path...
    "fit_user": ("fit", "inst*epoch/s"),
    "score_user": ("score", "inst/s"),
    # ...and with ModelDistillation(optimize=True), the opt-in for models of unknown code
    "fit_user_optimized": ("fit", "inst*epoch/s"),
    "score_user_optimized": ("score", "inst/s"),
    # ...and scoring in bfloat16 (optimize=True, precision='bfloat16': an approximation)
    "score_user_bf16": ("score", "inst/s"),
}

FIT_BATCH_SIZE = 128  # both libraries' default


# ----------------------------------------------------------------------------------- harness
def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``VmHWM``, else ``ru_maxrss``).

    Examples
    --------
    >>> peak_rss_mb() > 0
    True
    """
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        if sys.platform == "darwin":  # bytes there
            kb /= 1024
    return kb / 1024


def current_rss_mb() -> float:
    """This process's current resident set size in MiB (``VmRSS``; 0 where unknown).

    Examples
    --------
    >>> current_rss_mb() > 0
    True
    """
    kb = _status_kb("VmRSS")
    return 0.0 if kb is None else kb / 1024


def measure(
    call: Callable[[Any], Any],
    repeats: int,
    setup: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Time ``call(setup())``: one warm-up call, then ``repeats`` timed calls (setup untimed).

    Returns
    -------
    dict
        ``first_s`` (the warm-up call), ``times_s`` (the timed calls), ``median_s`` and
        ``cpu_median_s`` (median process CPU time, all threads, of the timed calls).

    Examples
    --------
    >>> m = measure(lambda _: sum(range(1000)), repeats=3)
    >>> len(m["times_s"])
    3
    """
    arg = setup() if setup is not None else None
    start = time.perf_counter()
    call(arg)
    first = time.perf_counter() - start
    times, cpu_times = [], []
    for _ in range(repeats):
        arg = setup() if setup is not None else None
        cpu = time.process_time()
        start = time.perf_counter()
        call(arg)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    return {
        "first_s": first,
        "times_s": times,
        "median_s": statistics.median(times),
        "cpu_median_s": statistics.median(cpu_times),
    }


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where unknown."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU count, platform and load average, for the record."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": load_average(),
    }


def spawn_child(
    script: Path | str,
    config: str,
    options: dict[str, Any],
    python: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``script --child config --key value ...`` in a fresh interpreter; return its JSON line.

    The child prints its result as the last line of standard output.
    """
    cmd = [python or sys.executable, str(script), "--child", config]
    for key, value in options.items():
        if value is None:
            continue
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"benchmark child {config!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1])


def format_results(results: dict[str, dict[str, Any]], title: str) -> str:
    """A plain-text table of one library's results."""
    rows = [
        f"{title}",
        f"{'config':22s} {'rate':>10s} {'unit':13s} {'first s':>8s} {'peak MiB':>9s}",
    ]
    for name, r in results.items():
        rows.append(
            f"{name:22s} {r['rate']:10.1f} {r['unit']:13s} {r['first_s']:8.2f} "
            f"{r['peak_rss_mb']:9.0f}"
        )
    return "\n".join(rows)


# ----------------------------------------------------------------------- the measurement
def _child(
    config: str,
    n_fit: int,
    epochs: int,
    n_score: int,
    repeats: int,
    threads: int | None,
    score_batch_size: int | None,
) -> dict[str, Any]:
    """Measure one configuration in this (fresh) process."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    from distilldetect import ModelDistillation
    from distilldetect.backends.torch.models import distilled_model_cifar10, resnet

    kind, unit = CONFIGS[config]
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    user = "_user" in config
    bf16 = config.endswith("_bf16")
    optimize = config.endswith("_optimized") or bf16
    precision = "bfloat16" if bf16 else "float32"
    if user:
        sys.path.insert(0, str(HERE))
        from user_models import UserResNet20, UserStudent

        teacher = UserResNet20().eval()
        shape = (3, 32, 32)  # a user's torch model takes NCHW batches
    else:
        teacher = resnet().eval()
        shape = (32, 32, 3)

    def student() -> torch.nn.Module:
        torch.manual_seed(1)
        return UserStudent() if user else distilled_model_cifar10()

    def detector() -> ModelDistillation:
        return ModelDistillation(
            distilled_model=student(), model=teacher, optimize=optimize, precision=precision
        )

    if kind == "fit":
        X = rng.random((n_fit, *shape), dtype=np.float32)
        kwargs: dict[str, Any] = {"epochs": epochs, "batch_size": FIT_BATCH_SIZE}
        if config == "fit_uncached":
            kwargs["preprocess_fn"] = lambda x: x
        rss_setup = current_rss_mb()
        m = measure(
            lambda ad: ad.fit(X, verbose=False, seed=0, **kwargs),
            repeats,
            setup=detector,
        )
        work = n_fit * epochs
    else:
        X = rng.random((n_score, *shape), dtype=np.float32)
        ad = detector()
        kwargs = {}
        if score_batch_size:
            kwargs["batch_size"] = score_batch_size
        if config == "score_teacher_probs":
            with torch.no_grad():
                kwargs["teacher_probs"] = np.concatenate(
                    [
                        teacher(torch.from_numpy(X[i : i + 500])).numpy()
                        for i in range(0, n_score, 500)
                    ]
                )
        rss_setup = current_rss_mb()
        m = measure(lambda _: ad.score(X, **kwargs), repeats)
        work = n_score
    return {
        "config": config,
        "kind": kind,
        "unit": unit,
        "rate": work / m["median_s"],
        **m,
        "rss_after_setup_mb": rss_setup,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run(
    configs: Sequence[str] | None = None,
    n_fit: int = 1000,
    epochs: int = 2,
    n_score: int = 2000,
    repeats: int = 3,
    threads: int | None = None,
    score_batch_size: int | None = None,
    json_path: str | Path | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the benchmark, each configuration in a fresh subprocess.

    Parameters
    ----------
    configs
        Names from :data:`CONFIGS` (default: all, in that order).
    n_fit, epochs
        Instances and epochs of each ``fit``.
    n_score
        Instances of each ``score``.
    repeats
        Timed calls per configuration after one warm-up call; the median is reported.
    threads
        ``torch.set_num_threads`` in the children (default: torch's own choice).
    score_batch_size
        Batch size of ``score`` (default: the library's ``DEFAULT_BATCH_SIZE``).
    json_path
        Optional file to write the results to as JSON.
    verbose
        Print each result as it comes and the table at the end.

    Returns
    -------
    dict
        ``{'library', 'settings', 'machine', 'results': {config: {...}}}``; each result holds
        ``rate`` (median), ``unit``, ``first_s``, ``times_s``, ``median_s`` and ``peak_rss_mb``.

    Examples
    --------
    >>> run(configs=["score_teacher_probs"], n_score=256, repeats=1)["results"]  # doctest: +SKIP
    """
    configs = list(CONFIGS) if configs is None else list(configs)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    settings = {
        "n_fit": n_fit,
        "epochs": epochs,
        "n_score": n_score,
        "repeats": repeats,
        "threads": threads,
        "score_batch_size": score_batch_size,
        "fit_batch_size": FIT_BATCH_SIZE,
    }
    options = {k: v for k, v in settings.items() if k != "fit_batch_size"}
    out: dict[str, Any] = {
        "library": "distilldetect",
        "settings": settings,
        "machine": machine_info(),
        "results": {},
    }
    for config in configs:
        res = spawn_child(Path(__file__), config, options)
        out["results"][config] = res
        if verbose:
            print(
                f"  distilldetect {config:20s} {res['rate']:9.1f} {res['unit']:13s} "
                f"peak {res['peak_rss_mb']:6.0f} MiB",
                flush=True,
            )
    out["machine"]["loadavg_end"] = load_average()
    if verbose:
        print(format_results(out["results"], "distilldetect (PyTorch)"))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out


def _parser(description: str, configs: Sequence[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--child", choices=list(configs), help=argparse.SUPPRESS)
    p.add_argument("--configs", default=",".join(configs), help="comma-separated configurations")
    p.add_argument("--n-fit", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n-score", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: library's)"
    )
    p.add_argument("--score-batch-size", type=int, default=None)
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser(__doc__.splitlines()[0], list(CONFIGS)).parse_args(argv)
    if args.child:
        res = _child(
            args.child,
            args.n_fit,
            args.epochs,
            args.n_score,
            args.repeats,
            args.threads,
            args.score_batch_size,
        )
        print(json.dumps(res))
        return
    run(
        configs=[c for c in args.configs.split(",") if c],
        n_fit=args.n_fit,
        epochs=args.epochs,
        n_score=args.n_score,
        repeats=args.repeats,
        threads=args.threads,
        score_batch_size=args.score_batch_size,
        json_path=args.json,
    )


if __name__ == "__main__":
    main()
