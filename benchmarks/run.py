"""Run distilldetect's benchmark and, when the reference venv exists, alibi-detect's, interleaved.

Each configuration runs in a fresh subprocess (see ``bench_core.py``). The two libraries'
configurations alternate (ours, theirs, ours, ...) so that both see the same machine load, and
the ratios printed at the end come from this one run.

Usage::

    .venv/bin/python benchmarks/run.py                      # ours (+ reference if built)
    .venv/bin/python benchmarks/run.py --json results/bench.json --rounds 2
    .venv/bin/python benchmarks/run.py --no-reference

Targets, as ratios to the reference: on the zoo's models (issue 2) fit >= 5x, score >= 1.5x,
peak RSS <= 0.6x; on models written outside the zoo (``user_models.py``, issue 10) fit >= 6x,
score >= 2x, peak RSS <= 0.45x.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_core  # noqa: E402

REFERENCE_SCRIPT = HERE / "reference" / "bench_alibi.py"
REFERENCE_PYTHON = HERE.parent / ".venv-reference" / "bin" / "python"

# (ours, reference) pairs compared, with the target ratio (None: reported only)
COMPARISONS: list[tuple[str, str, float | None]] = [
    ("fit_cached", "fit", 5.0),
    ("fit_uncached", "fit", None),
    ("score", "score", 1.5),
    ("score", "score_batch128", None),
    ("score_teacher_probs", "score", None),
    # a user's own models (outside the zoo; issue 10's targets: fit >= 6x, score >= 2x)
    ("fit_user", "fit", 6.0),
    ("score_user", "score", 2.0),
    ("fit_user_optimized", "fit", 6.0),
    ("score_user_optimized", "score", 2.0),
    ("score_user_bf16", "score", 2.0),
]
RSS_TARGET = 0.6
RSS_TARGET_USER = 0.45
# interleaved order: each reference configuration next to the ones compared with it (the
# reference's fit and score run twice per round, beside the zoo's and the user's models)
ORDER: list[tuple[str, str]] = [
    ("ours", "fit_cached"),
    ("reference", "fit"),
    ("ours", "fit_uncached"),
    ("ours", "fit_user"),
    ("reference", "fit"),
    ("ours", "fit_user_optimized"),
    ("ours", "score"),
    ("reference", "score"),
    ("ours", "score_teacher_probs"),
    ("reference", "score_batch128"),
    ("ours", "score_user"),
    ("reference", "score"),
    ("ours", "score_user_optimized"),
    ("ours", "score_user_bf16"),
]


def _median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[0])
    out["rate"] = statistics.median(r["rate"] for r in runs)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["rounds"] = [r["rate"] for r in runs]
    return out


def run(
    n_fit: int = 1000,
    epochs: int = 2,
    n_score: int = 2000,
    repeats: int = 3,
    rounds: int = 1,
    threads: int | None = None,
    reference: bool | None = None,
    json_path: str | Path | None = None,
) -> dict[str, Any]:
    """Run both benchmarks interleaved and return results and ratios.

    Parameters
    ----------
    n_fit, epochs, n_score, repeats, threads
        As in :func:`bench_core.run`, for both libraries.
    rounds
        Times the whole interleaved sequence is repeated; rates are the median over rounds.
    reference
        Run the reference (default: when ``.venv-reference/bin/python`` exists).
    json_path
        Optional JSON output file.

    Returns
    -------
    dict
        ``{'settings', 'machine', 'ours', 'reference', 'ratios'}``.

    Examples
    --------
    >>> run(n_fit=200, epochs=1, n_score=400, repeats=1, reference=False)  # doctest: +SKIP
    """
    if reference is None:
        reference = REFERENCE_PYTHON.exists()
    settings = {
        "n_fit": n_fit,
        "epochs": epochs,
        "n_score": n_score,
        "repeats": repeats,
        "threads": threads,
    }
    machine = bench_core.machine_info()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"ours": {}, "reference": {}}
    for r in range(rounds):
        for side, config in ORDER:
            if side == "reference" and not reference:
                continue
            if side == "ours":
                res = bench_core.spawn_child(HERE / "bench_core.py", config, settings)
            else:
                res = bench_core.spawn_child(
                    REFERENCE_SCRIPT, config, settings, python=str(REFERENCE_PYTHON)
                )
            runs[side].setdefault(config, []).append(res)
            name = "distilldetect" if side == "ours" else "alibi-detect"
            print(
                f"[round {r + 1}/{rounds}] {name:13s} {config:20s} {res['rate']:9.1f} "
                f"{res['unit']:13s} peak {res['peak_rss_mb']:6.0f} MiB",
                flush=True,
            )
    ours = {c: _median_result(v) for c, v in runs["ours"].items()}
    ref = {c: _median_result(v) for c, v in runs["reference"].items()}
    machine["loadavg_end"] = bench_core.load_average()
    ratios: dict[str, Any] = {}
    if ref:
        for mine, theirs, target in COMPARISONS:
            ratios[f"{mine} / {theirs}"] = {
                "ratio": ours[mine]["rate"] / ref[theirs]["rate"],
                "target": target,
            }
        for kind in ("fit", "score"):
            theirs = max(r["peak_rss_mb"] for r in ref.values() if r["kind"] == kind)
            for label, user, target in (("", False, RSS_TARGET), (" user", True, RSS_TARGET_USER)):
                mine = max(
                    (r["peak_rss_mb"] for c, r in ours.items()
                     if r["kind"] == kind and ("_user" in c) == user),
                    default=None,
                )  # fmt: skip
                if mine is not None:
                    ratios[f"peak RSS{label} {kind}"] = {
                        "ratio": mine / theirs,
                        "target": target,
                        "max": True,
                    }
        mine = max(r["peak_rss_mb"] for r in ours.values())
        theirs = max(r["peak_rss_mb"] for r in ref.values())
        ratios["peak RSS (max over configs)"] = {
            "ratio": mine / theirs,
            "target": RSS_TARGET,
            "max": True,
        }
    out = {
        "settings": settings,
        "machine": machine,
        "ours": ours,
        "reference": ref,
        "ratios": ratios,
    }
    print()
    print(report(out))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out


def report(out: dict[str, Any]) -> str:
    """The results as a plain-text table (also valid Markdown)."""
    s, m = out["settings"], out["machine"]
    lines = [
        f"fit: {s['n_fit']} instances x {s['epochs']} epochs, batch 128; score: {s['n_score']} "
        f"instances; median of {s['repeats']} timed calls after a warm-up; "
        f"{m['cpus']} CPUs, load average {_load(m.get('loadavg'))} at start, "
        f"{_load(m.get('loadavg_end'))} at end",
        "",
        "| library | configuration | rate | unit | first call s | peak RSS MiB |",
        "|---|---|---:|---|---:|---:|",
    ]
    for side, name in (("ours", "distilldetect"), ("reference", "alibi-detect 0.13.0")):
        for config, r in out[side].items():
            lines.append(
                f"| {name} | {config} | {r['rate']:.1f} | {r['unit']} | {r['first_s']:.2f} "
                f"| {r['peak_rss_mb']:.0f} |"
            )
    if out["ratios"]:
        lines += ["", "| ratio (ours / reference) | value | target | met |", "|---|---:|---:|---|"]
        for name, r in out["ratios"].items():
            target = r["target"]
            if target is None:
                met, tgt = "", ""
            elif r.get("max"):
                met, tgt = ("yes" if r["ratio"] <= target else "NO"), f"<= {target}"
            else:
                met, tgt = ("yes" if r["ratio"] >= target else "NO"), f">= {target}"
            lines.append(f"| {name} | {r['ratio']:.2f} | {tgt} | {met} |")
    else:
        lines += ["", "(no reference: build it with `make bench-reference`)"]
    return "\n".join(lines)


def run_tensorflow(n_fit: int, epochs: int, n_score: int) -> dict[str, Any] | None:
    """Our tf.keras backend on the same architectures and sizes, in a fresh process; None when
    TensorFlow is not installed."""
    if importlib.util.find_spec("tensorflow") is None:
        print("\n(tf.keras backend not measured: install the tensorflow extra)")
        return None
    cmd = [sys.executable, str(HERE / "bench_tensorflow.py"), "--n-fit", str(n_fit)]
    cmd += ["--epochs", str(epochs), "--n-score", str(n_score)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = json.loads(out[out.index("{") :])
    print(
        f"\ndistilldetect, tf.keras backend (same models, one fit and one score call): fit "
        f"{result['fit_inst_epoch_per_s']:.1f} inst*epoch/s, score {result['score_inst_per_s']:.1f} "
        f"inst/s (tracing {result['trace_seconds']:.1f} s once), TensorFlow {result['tensorflow']}"
    )
    return result


def _load(avg: Sequence[float] | None) -> str:
    return "?" if not avg else "/".join(f"{a:.2f}" for a in avg)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-fit", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n-score", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--reference", dest="reference", action="store_true", default=None)
    g.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--json", default=None)
    p.add_argument("--no-tensorflow", action="store_true", help="skip our tf.keras backend")
    a = p.parse_args(argv)
    if a.reference and not REFERENCE_PYTHON.exists():
        p.error(f"{REFERENCE_PYTHON} not found: build it with `make bench-reference`")
    out = run(a.n_fit, a.epochs, a.n_score, a.repeats, a.rounds, a.threads, a.reference, a.json)
    if not a.no_tensorflow:
        out["tensorflow_backend"] = run_tensorflow(a.n_fit, a.epochs, a.n_score)
        if a.json is not None:
            Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
