"""``distilldetect score``: the command-line face of :func:`~distilldetect.batch.score_files`.

    distilldetect score DETECTOR_DIR INPUT OUTPUT [--engine local|ray] [--ray-address ADDR]
        [--workers N|MIN:MAX] [--batch-size B] [--instances-column C] [--id-column C]
        [--teacher-probs COLUMN|FILE] [--threshold T] [--drift-window N]
        [--model module:factory] [--distilled-model module:factory] [--overwrite] [-q]

Every problem with the arguments, the input, the output, the detector or the Ray address is one
line on stderr and exit status 2, found before the scoring starts; rows that cannot be scored
(found while scoring) too, and no output is left behind.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def _workers(text: str) -> int | tuple[int, int]:
    try:
        if ":" in text:
            low, high = text.split(":", 1)
            return (int(low), int(high))
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N or MIN:MAX (an autoscaling pool), got {text!r}"
        ) from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``score`` subcommand to the ``distilldetect`` parser's subparsers."""
    p = subparsers.add_parser(
        "score",
        help="score a file of instances with a saved detector (locally or on Ray)",
        description="Score every instance of INPUT (.npy, folder of .npy shards, Parquet) with "
        "the detector saved in DETECTOR_DIR and write OUTPUT (Parquet: row_id, instance_score, "
        "is_adversarial, in input order). With --drift-window N, also test every window of N "
        "rows with the saved drift detector (<OUTPUT stem>.drift.parquet).",
    )
    p.add_argument("detector_dir", metavar="DETECTOR_DIR", help="folder written by save_detector")
    p.add_argument("input", metavar="INPUT", help=".npy file, folder of .npy shards, or Parquet")
    p.add_argument("output", metavar="OUTPUT", help="Parquet file to write")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: stream on this machine; ray: Ray Data actors (the [ray] extra)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="host:port of a running Ray cluster (or 'auto'); default: start a local one",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="Ray actors: N, or MIN:MAX for an autoscaling pool (default 1)",
    )
    p.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="Ray CPUs per actor (default 1)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="instances per forward pass")
    p.add_argument("--instances-column", default=None, help="Parquet column of the instances")
    p.add_argument("--id-column", default=None, help="Parquet column of ids copied to OUTPUT")
    p.add_argument(
        "--teacher-probs",
        default=None,
        metavar="COLUMN|FILE",
        help="logged teacher probabilities: a Parquet column, or a .npy file for .npy inputs",
    )
    p.add_argument("--threshold", type=float, default=None, help="override the saved threshold")
    p.add_argument(
        "--drift-window",
        type=int,
        default=None,
        help="rows per drift test (needs a drift detector)",
    )
    p.add_argument(
        "--model", default=None, metavar="MODULE:FACTORY", help="teacher the folder cannot rebuild"
    )
    p.add_argument(
        "--distilled-model",
        default=None,
        metavar="MODULE:FACTORY",
        help="student the folder cannot rebuild",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    return p


def _error(err: BaseException) -> int:
    text = str(err)
    message = text.splitlines()[0] if text else type(err).__name__
    print(f"distilldetect: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run ``distilldetect score``; returns the exit status."""
    from .inputs import InputError
    from .scoring import execute, prepare

    quiet = bool(getattr(args, "quiet", False))
    saved_levels = {}
    if quiet:  # Ray and its Data library log on their own loggers
        for name in ("ray", "ray.data"):
            saved_levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        try:
            plan = prepare(
                args.detector_dir,
                args.input,
                args.output,
                engine=args.engine,
                ray_address=args.ray_address,
                workers=args.workers,
                cpus_per_worker=args.cpus_per_worker,
                batch_size=args.batch_size,
                instances_column=args.instances_column,
                id_column=args.id_column,
                teacher_probs=args.teacher_probs,
                threshold=args.threshold,
                drift_window=args.drift_window,
                model=args.model,
                distilled_model=args.distilled_model,
                overwrite=args.overwrite,
                verbose=not quiet,
            )
        except (ValueError, TypeError, OSError, ModuleNotFoundError) as err:
            return _error(err)
        try:
            summary = execute(plan)
        except InputError as err:  # rows that cannot be scored, found while scoring
            return _error(err)
        for line in summary.lines():
            print(line)
        return 0
    finally:
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
