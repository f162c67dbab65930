"""The ``distilldetect`` command.

    distilldetect experiment [--dataset fashion_mnist|cifar10] [--quick] [--out DIR] ...
    distilldetect corruptions [--subset all]
    distilldetect fetch fashion_mnist|cifar10|cifar10c [--data-dir DIR] [--corruption NAME ...]
    distilldetect serve DETECTOR_DIR [--host 127.0.0.1] [--port 8000] [--token-file FILE] ...
    distilldetect score DETECTOR_DIR INPUT OUTPUT [--engine local|ray] [--drift-window N] ...
    distilldetect adversarial [--attacks fgsm,pgd,cw,blackbox,adaptive] [--eps LIST] [--quick] ...
    distilldetect --version

Errors in arguments or data are reported as one line on stderr with exit status 2, before any
long work starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from tqdm.auto import tqdm

from ._version import __version__
from .serve import command as serve_command

__all__ = ["main", "build_parser"]


class _TqdmHandler(logging.Handler):
    """Log lines written through tqdm so they do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        text = message.splitlines()[0] if message else "invalid arguments"
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``distilldetect`` command."""
    parser = _Parser(
        prog="distilldetect",
        description="Adversarial-input and harmful-drift detection by model distillation.",
    )
    parser.add_argument("--version", action="version", version=f"distilldetect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    exp = sub.add_parser(
        "experiment",
        help="run the harmful-drift study (CIFAR-10-C example) end to end",
        description="Train (or load) a teacher, distil a student, corrupt evaluation images at "
        "severities 1-5 and measure harmful vs harmless drift detection. Writes results.json, "
        "report.md and figures.",
    )
    exp.add_argument(
        "--dataset", default="fashion_mnist", help="fashion_mnist (default) or cifar10"
    )
    exp.add_argument(
        "--data-dir", default=None, help="directory with the data set files (offline use)"
    )
    exp.add_argument(
        "--out", default=None, help="output directory (default results/<dataset>-<timestamp>)"
    )
    exp.add_argument(
        "--corruptions",
        type=_str_list,
        default=None,
        help="comma-separated names or 'all' (default)",
    )
    exp.add_argument("--severities", type=_int_list, default=[1, 2, 3, 4, 5], help="e.g. 1,3,5")
    exp.add_argument(
        "--fractions", type=_float_list, default=None, help="contamination fractions in [0, 1)"
    )
    exp.add_argument(
        "--n-eval", type=int, default=None, help="evaluation images corrupted per type"
    )
    exp.add_argument(
        "--n-ref", type=int, default=None, help="clean reference scores (default 1000)"
    )
    exp.add_argument(
        "--n-batches", type=int, default=None, help="batches per contamination level (default 100)"
    )
    exp.add_argument(
        "--batch-size", type=int, default=None, help="instances per batch (default 100)"
    )
    exp.add_argument("--p-val", type=float, default=None, help="significance level (default 0.05)")
    exp.add_argument(
        "--drift-test",
        default=None,
        help="the study's harmful-drift test: tail_rank (default) or one_sided (KS)",
    )
    exp.add_argument(
        "--n-draws", type=int, default=None, help="reference draws the drift part is repeated over"
    )
    exp.add_argument(
        "--power-batch-sizes",
        type=_int_list,
        default=None,
        help="batch sizes of the power table (default 10,20,50,100)",
    )
    exp.add_argument(
        "--teacher", default=None, help="directory of a cached teacher or a saved detector"
    )
    exp.add_argument("--teacher-epochs", type=int, default=None)
    exp.add_argument("--student", default=None, help="zoo model for the student")
    exp.add_argument("--student-epochs", type=int, default=None)
    exp.add_argument("--temperature", type=float, default=None)
    exp.add_argument("--loss-type", default=None, help="kld or xent")
    exp.add_argument("--augment", default=None, help="augmix: robust distillation, or none")
    exp.add_argument("--augment-level", type=float, default=None)
    exp.add_argument("--split", default=None, help="test (default) or validation (for tuning)")
    exp.add_argument("--n-train", type=int, default=None, help="subsample the training set")
    exp.add_argument("--seed", type=int, default=None)
    exp.add_argument("--cache-dir", default=None, help="cache for teachers and downloads")
    exp.add_argument("--quick", action="store_true", help="small settings, about a minute")
    exp.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")

    from .corruptions import SUBSETS

    cor = sub.add_parser(
        "corruptions",
        help="list the corruption types",
        description="List the CIFAR-10-C corruption types that distilldetect.corruptions.corrupt "
        "applies to any image batch.",
    )
    cor.add_argument(
        "--subset", default="all", choices=sorted(SUBSETS), help="which corruption types"
    )

    fetch = sub.add_parser(
        "fetch",
        help="download a data set into the cache (or check a local copy)",
        description="Make a data set available offline: look in --data-dir, $DISTILLDETECT_DATA, "
        "the Debian package and the cache; download (checked) only as a last resort.",
    )
    fetch.add_argument(
        "dataset", choices=["fashion_mnist", "cifar10", "cifar10c"], help="the data set"
    )
    fetch.add_argument(
        "--data-dir", default=None, help="folder holding the data set's files (offline use)"
    )
    fetch.add_argument(
        "--corruptions",
        type=_str_list,
        default=["all"],
        help="cifar10c only: comma-separated corruption names, or all",
    )

    serve_command.add_parser(sub)
    from .batch import command as batch_command

    batch_command.add_parser(sub)
    from .experiments import adversarial_command

    adversarial_command.add_parser(sub)
    _polish(parser)
    return parser


#: Two examples per subcommand, shown at the end of its --help.
EPILOGS: dict[str, str] = {
    "experiment": """examples:
  distilldetect experiment --quick --out results/quick        # about a minute
  distilldetect experiment --split validation --temperature 1  # tune, never on the test set""",
    "corruptions": """examples:
  distilldetect corruptions
  distilldetect corruptions --subset noise""",
    "fetch": """examples:
  distilldetect fetch fashion_mnist
  distilldetect fetch cifar10c --corruptions fog,snow --data-dir /data/cifar10c""",
    "serve": """examples:
  distilldetect serve detectors/fashion-drift --port 8000
  distilldetect serve detectors/fashion-drift --token-file token.txt --events events.jsonl""",
    "score": """examples:
  distilldetect score detectors/fashion-drift logs/x.npy scores.parquet --drift-window 1000
  distilldetect score detectors/fashion-drift logs/ scores.parquet --engine ray --workers 2""",
    "adversarial": """examples:
  distilldetect adversarial --quick --out results/adv-quick
  distilldetect adversarial --attacks fgsm,pgd,adaptive --eps 0.1,0.3""",
}


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions, keeps the epilogs' layout, and shows each option's default (unless it
    is None/False or the help already says it)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            text += f" (default: {shown})"
        return text


def _polish(parser: argparse.ArgumentParser) -> None:
    """Every subcommand: the help formatter, its epilog of examples."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                child.formatter_class = _HelpFormatter
                if name in EPILOGS and not child.epilog:
                    child.epilog = EPILOGS[name]


_EXPERIMENT_FIELDS = {
    "data_dir": "data_dir",
    "out": "out",
    "corruptions": "corruptions",
    "severities": "severities",
    "fractions": "fractions",
    "n_eval": "n_eval",
    "n_ref": "n_ref",
    "n_batches": "n_batches",
    "batch_size": "batch_size",
    "p_val": "p_val",
    "drift_test": "drift_test",
    "n_draws": "n_draws",
    "power_batch_sizes": "power_batch_sizes",
    "teacher": "teacher_path",
    "teacher_epochs": "teacher_epochs",
    "student": "student",
    "student_epochs": "student_epochs",
    "temperature": "temperature",
    "loss_type": "loss_type",
    "augment": "augment",
    "augment_level": "augment_level",
    "split": "eval_split",
    "n_train": "n_train",
    "seed": "seed",
    "cache_dir": "cache_dir",
}


def _experiment(args: argparse.Namespace) -> int:
    from .experiments import harmful_drift as hd

    overrides = {
        field: getattr(args, arg)
        for arg, field in _EXPERIMENT_FIELDS.items()
        if getattr(args, arg) is not None
    }
    overrides["dataset"] = args.dataset
    if overrides.get("augment") == "none":
        overrides["augment"] = None
    overrides["verbose"] = not args.quiet
    if overrides.get("corruptions") == ["all"]:
        overrides["corruptions"] = "all"
    config = hd.quick_config(**overrides) if args.quick else hd.StudyConfig(**overrides)
    if config.out is None:
        config.out = str(hd.default_out_dir(config.dataset))
    try:
        # everything that can be wrong with the arguments or the data, before the long work
        hd.preflight(config)
    except (ValueError, TypeError, OSError) as err:
        return _error(err)
    results = hd.run(config)
    for s in sorted(results.severities, key=int):
        print(results.headline(s))
    print(f"results: {results.out}/results.json, report: {results.out}/report.md")
    return 0


def _corruptions(args: argparse.Namespace) -> int:
    from .corruptions import get_corruption_names

    print("\n".join(get_corruption_names(args.subset)))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from . import datasets

    if args.dataset == "fashion_mnist":
        (x, _), (xt, _) = datasets.load_fashion_mnist(data_dir=args.data_dir)
        print(f"Fashion-MNIST ready: {len(x)} training and {len(xt)} test images")
    elif args.dataset == "cifar10":
        (x, _), (xt, _) = datasets.load_cifar10(data_dir=args.data_dir)
        print(f"CIFAR-10 ready: {len(x)} training and {len(xt)} test images")
    else:
        names = (
            datasets.corruption_types_cifar10c()
            if args.corruptions == ["all"]
            else args.corruptions
        )
        for name in names:
            datasets.fetch_cifar10c(name, 1, data_dir=args.data_dir)
        print(f"CIFAR-10-C ready: {len(names)} corruption types")
    return 0


def _error(err: BaseException) -> int:
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    print(f"distilldetect: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distilldetect`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or an argument error (one line, status 2)
        return exit_.code if isinstance(exit_.code, int) else 2
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    pkg_logger = logging.getLogger("distilldetect")
    quiet = getattr(args, "quiet", False)
    if not quiet:
        pkg_logger.addHandler(handler)
        pkg_logger.setLevel(logging.INFO)
    try:
        if args.command == "experiment":
            return _experiment(args)
        if args.command == "corruptions":
            return _corruptions(args)
        if args.command == "serve":
            return serve_command.run(args)
        if args.command == "score":
            from .batch import command as batch_command

            return batch_command.run(args)
        if args.command == "adversarial":
            from .experiments import adversarial_command

            return adversarial_command.run(args)
        return _fetch(args)
    except (ValueError, TypeError, OSError) as err:
        if args.command in ("experiment", "score", "adversarial"):
            raise  # after the preflight: a real failure, keep its traceback
        return _error(err)
    except KeyboardInterrupt:
        print("distilldetect: interrupted", file=sys.stderr)
        return 130
    finally:
        pkg_logger.removeHandler(handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
