"""The ``distilldetect`` command.

    distilldetect experiment [--pretrained | --teacher PATH] [--data DIR] [--quick] [--out DIR] ...
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


def _path_list(text: str) -> str | list[str]:
    """A folder, or comma-separated files."""
    parts = _str_list(text)
    return parts[0] if len(parts) == 1 else parts


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

    from .backends.zoo_args import MODEL_NAMES
    from .corruptions import get_corruption_names
    from .experiments.config import DATASETS, DRIFT_TESTS, StudyConfig

    study = StudyConfig()
    exp = sub.add_parser(
        "experiment",
        help="run the harmful-drift study (Fashion-MNIST by default) end to end",
        description="Get a teacher (shipped with --pretrained, trained and cached, or your own with "
        "--teacher), distil a student, corrupt evaluation images at severities 1-5 and measure "
        "how well the distillation score and drift tests tell harmful drift (the teacher turns "
        "wrong) from harmless drift. Writes results.json, report.md, report.html, figures and the "
        "fitted detector (detector/) into --out. The study's defaults differ from the library's "
        "(they were tuned for drift on a validation split): they are shown below.",
    )
    data = exp.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=None,
        choices=[d for d in DATASETS if d != "user"],
        help="a known data set (default: fashion_mnist; with --data: your own)",
    )
    data.add_argument(
        "--data-dir", default=None, help="folder with the known data set's files (offline use)"
    )
    data.add_argument(
        "--data",
        type=_path_list,
        default=None,
        metavar="DIR_OR_FILES",
        help="your own images: a folder with x_train.npy, y_train.npy, x_test.npy, y_test.npy, "
        "or an image folder with one sub-folder per class (train/ and test/ optional); or the "
        "four .npy files, comma-separated",
    )
    data.add_argument(
        "--preprocess",
        default=None,
        choices=["scale_by_instance", "unit", "raw"],
        help="uint8 images to model input: x/255 scaled by instance (the study's), x/255, or "
        "0-255 as floats; give your own teacher's preprocessing (default: scale_by_instance)",
    )
    data.add_argument(
        "--split",
        default=None,
        choices=["test", "validation"],
        help="evaluate on the test set, or on a validation split of the training data (to tune "
        "settings; never tune on the test set) (default: test)",
    )
    data.add_argument(
        "--n-train", type=int, default=None, help="subsample the training set (default: all)"
    )
    models = exp.add_argument_group("teacher and student")
    how = models.add_mutually_exclusive_group()
    how.add_argument(
        "--pretrained",
        action="store_true",
        help="use the teacher and student shipped with distilldetect (Fashion-MNIST): no training",
    )
    how.add_argument(
        "--train",
        action="store_true",
        help="train the teacher (or take it from the cache) and the student (the default)",
    )
    how.add_argument(
        "--teacher",
        default=None,
        metavar="PATH",
        help="your teacher: a cached teacher or saved detector folder, a .keras file (safe mode), "
        "an .onnx file (extra [onnx]), or module:factory (with --teacher-weights)",
    )
    models.add_argument(
        "--teacher-weights",
        default=None,
        metavar="FILE",
        help="weights for a module:factory --teacher (.safetensors or .weights.h5)",
    )
    models.add_argument(
        "--teacher-epochs",
        type=int,
        default=None,
        help=f"epochs of teacher training (default: {study.teacher_epochs})",
    )
    models.add_argument(
        "--student",
        default=None,
        choices=sorted(MODEL_NAMES),
        help="zoo model of the student (default: the data set's, see README)",
    )
    models.add_argument(
        "--student-epochs",
        type=int,
        default=None,
        help=f"epochs of distillation (default: {study.student_epochs})",
    )
    models.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"temperature of the teacher's softmax in the loss (default: {study.temperature}; "
        "the library's is 1)",
    )
    models.add_argument(
        "--loss-type",
        default=None,
        choices=["kld", "xent"],
        help=f"distillation loss (default: {study.loss_type}; the library's is kld)",
    )
    models.add_argument(
        "--augment",
        default=None,
        choices=["augmix", "none"],
        help=f"augment the student's training inputs (default: {study.augment})",
    )
    models.add_argument(
        "--augment-level",
        type=float,
        default=None,
        help=f"AugMix strength in (0, 1] (default: {study.augment_level})",
    )
    models.add_argument(
        "--cache-dir",
        default=None,
        help="cache of trained teachers and downloads (default: $DISTILLDETECT_CACHE or "
        "~/.cache/distilldetect)",
    )
    drift = exp.add_argument_group("corruptions and drift tests")
    drift.add_argument(
        "--corruptions",
        type=_str_list,
        default=None,
        help=f"comma-separated corruption names, or all (default: all); one of: "
        f"{', '.join(get_corruption_names('all'))}",
    )
    drift.add_argument(
        "--severities", type=_int_list, default=None, help="e.g. 1,3,5 (default: 1,2,3,4,5)"
    )
    drift.add_argument(
        "--fractions",
        type=_float_list,
        default=None,
        help="contamination fractions in [0, 1) (default: 0,0.1,...,0.9)",
    )
    drift.add_argument(
        "--n-eval",
        type=int,
        default=None,
        help=f"evaluation images corrupted per type (default: {study.n_eval})",
    )
    drift.add_argument(
        "--n-ref", type=int, default=None, help=f"clean reference scores (default: {study.n_ref})"
    )
    drift.add_argument(
        "--n-batches",
        type=int,
        default=None,
        help=f"batches per contamination level and reference draw (default: {study.n_batches})",
    )
    drift.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"instances per batch (default: {study.batch_size})",
    )
    drift.add_argument(
        "--p-val", type=float, default=None, help=f"significance level (default: {study.p_val})"
    )
    drift.add_argument(
        "--drift-test",
        default=None,
        choices=list(DRIFT_TESTS),
        help="the study's harmful-drift test: tail-weighted rank test or one-sided KS (default: "
        f"{study.drift_test})",
    )
    drift.add_argument(
        "--tail-power",
        type=float,
        default=None,
        help=f"weight exponent of the tail-rank test (default: {study.tail_power:g})",
    )
    drift.add_argument(
        "--n-draws",
        type=int,
        default=None,
        help=f"reference draws the drift part is repeated over (default: {study.n_draws})",
    )
    drift.add_argument(
        "--power-batch-sizes",
        type=_int_list,
        default=None,
        help="batch sizes of the power table (default: 10,20,50,100)",
    )
    run = exp.add_argument_group("run")
    run.add_argument(
        "--seed", type=int, default=None, help=f"seed of everything (default: {study.seed})"
    )
    run.add_argument(
        "--out", default=None, help="output folder (default: results/<dataset>-<timestamp>)"
    )
    run.add_argument(
        "--quick", action="store_true", help="small settings for a first look (about a minute)"
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")

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
  distilldetect experiment --pretrained --out results/demo     # the shipped models, no training
  distilldetect experiment --quick --out results/quick         # trains small models, a minute
  distilldetect experiment --data my_images/ --teacher my_net.onnx --preprocess unit
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
    "tail_power": "tail_power",
    "n_draws": "n_draws",
    "power_batch_sizes": "power_batch_sizes",
    "teacher": "teacher_path",
    "teacher_weights": "teacher_weights",
    "data": "data",
    "preprocess": "preprocess",
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
    from .experiments.config import overrides_from_args

    overrides = overrides_from_args(args, _EXPERIMENT_FIELDS)
    if args.dataset is not None:
        overrides["dataset"] = args.dataset
    if args.pretrained:
        overrides["pretrained"] = True
    if overrides.get("augment") == "none":
        overrides["augment"] = None
    overrides["verbose"] = not args.quiet
    if overrides.get("corruptions") == ["all"]:
        overrides["corruptions"] = "all"
    try:
        config = hd.quick_config(**overrides) if args.quick else hd.StudyConfig(**overrides)
        if config.out is None:
            config.out = str(hd.default_out_dir(config.dataset))
        # everything that can be wrong with the arguments or the data, before the long work
        hd.preflight(config)
    except (ValueError, TypeError, OSError) as err:
        return _error(err)
    results = hd.run(config)
    for s in sorted(results.severities, key=int):
        print(results.headline(s))
    print(
        f"results: {results.out}/results.json, report: {results.out}/report.md, "
        f"detector: {results.out}/detector"
    )
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
