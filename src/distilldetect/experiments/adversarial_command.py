"""``distilldetect adversarial``: the command-line face of :func:`~.adversarial.run`.

    distilldetect adversarial [--dataset fashion_mnist|cifar10] [--data-dir DIR]
        [--attacks fgsm,pgd,cw,blackbox,adaptive] [--eps LIST] [--n-eval 1000] [--teacher DIR]
        [--loss-type kld|xent] [--temperature T] [--seed S] [--out DIR] [--quick] [-q]

Every problem with the arguments or the data is one line on stderr and exit status 2, found
before the attacks start. (The command lives beside the study rather than in ``attacks/``:
the study imports the attacks, and the rooms' import graph must stay acyclic.)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``adversarial`` subcommand to the ``distilldetect`` parser's subparsers."""
    from ..attacks import ATTACKS

    p = subparsers.add_parser(
        "adversarial",
        help="attack the teacher (FGSM, PGD, C&W, SimBA, adaptive) and measure detection",
        description="Attack test images that the teacher classifies correctly, score the "
        "adversarials with the distillation detector and the teacher's uncertainty, attack the "
        "detector itself (adaptive PGD) and an ensemble defence (gray-box and white-box). "
        "Writes results.json, report.md and figures.",
    )
    p.add_argument(
        "--dataset",
        default="fashion_mnist",
        choices=["fashion_mnist", "cifar10"],
        help="the data set",
    )
    p.add_argument(
        "--data-dir", default=None, help="directory with the data set files (offline use)"
    )
    p.add_argument(
        "--attacks",
        type=_names,
        default=None,
        help=f"comma-separated, of {','.join(ATTACKS)} (default: all)",
    )
    p.add_argument(
        "--eps",
        type=_floats,
        default=None,
        help="comma-separated L-inf budgets in the scaled input space (default 0.1,0.2,0.3,0.5; "
        "--quick: 0.5)",
    )
    p.add_argument(
        "--lambdas",
        type=_floats,
        default=None,
        help="adaptive attack's score weights (default 0,0.01,0.1,1,10; --quick: 0,0.1)",
    )
    p.add_argument(
        "--adaptive-steps",
        type=int,
        default=None,
        help="PGD steps of the adaptive attack, also against the defences (default 40; "
        "--quick: 10)",
    )
    p.add_argument(
        "--n-eval", type=int, default=None, help="images attacked (default 1000; --quick: 100)"
    )
    p.add_argument(
        "--teacher",
        default=None,
        help="a saved detector or cached teacher folder (default: the shipped Fashion-MNIST "
        "detector, else the study's cached teacher)",
    )
    p.add_argument(
        "--loss-type",
        default=None,
        choices=["kld", "xent"],
        help="detector's loss; a value other than the detector's fits a new student",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="detector's temperature; other than the detector's fits a new student",
    )
    p.add_argument(
        "--students",
        type=int,
        default=None,
        help="secret students of the ensemble defence, 0 to skip it (default 3; --quick: 2)",
    )
    p.add_argument(
        "--defence",
        type=_names,
        default=None,
        help="comma-separated defences: ensemble (secret-seed students) and/or robust (an "
        "adversarially distilled student) (default: ensemble)",
    )
    p.add_argument(
        "--defence-eps",
        type=float,
        default=None,
        help="eps of the ensemble defence's attacks (default: the largest adaptive eps)",
    )
    p.add_argument(
        "--robust-eps",
        type=float,
        default=None,
        help="training budget of the robust student (default: the defence eps)",
    )
    p.add_argument(
        "--robust-steps", type=int, default=None, help="PGD steps of robust training (default 5)"
    )
    p.add_argument(
        "--robust-p-adv",
        type=float,
        default=None,
        help="fraction of each training batch perturbed (default 0.5)",
    )
    p.add_argument(
        "--robust-epochs",
        type=int,
        default=None,
        help="epochs of the robust student (default: the ensemble's, 5; --quick: 1)",
    )
    p.add_argument(
        "--split", default=None, choices=["test", "validation"], help="test, or validation to tune"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default results/adversarial-<dataset>-<timestamp>)",
    )
    p.add_argument("--cache-dir", default=None, help="cache for teachers and downloads")
    p.add_argument("--quick", action="store_true", help="small settings, under two minutes")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    return p


def _error(err: BaseException) -> int:
    text = str(err)
    message = text.splitlines()[0] if text else type(err).__name__
    print(f"distilldetect: error: {message}", file=sys.stderr)
    return 2


_FIELDS = {
    "data_dir": "data_dir",
    "attacks": "attacks",
    "eps": "eps",
    "lambdas": "lambdas",
    "n_eval": "n_eval",
    "teacher": "teacher_path",
    "loss_type": "loss_type",
    "temperature": "temperature",
    "students": "n_students",
    "adaptive_steps": "adaptive_steps",
    "defence": "defences",
    "defence_eps": "defence_eps",
    "robust_eps": "robust_eps",
    "robust_steps": "robust_steps",
    "robust_p_adv": "robust_p_adv",
    "robust_epochs": "robust_epochs",
    "split": "eval_split",
    "seed": "seed",
    "out": "out",
    "cache_dir": "cache_dir",
}


def run(args: argparse.Namespace) -> int:
    """Run ``distilldetect adversarial``; returns the exit status."""
    from . import adversarial as adv
    from .config import overrides_from_args

    overrides = overrides_from_args(args, _FIELDS)
    overrides["dataset"] = args.dataset
    overrides["verbose"] = not args.quiet
    try:
        cfg = (
            adv.quick_adversarial_config(**overrides)
            if args.quick
            else adv.AdversarialConfig(**overrides)
        )
        if cfg.out is None:
            cfg.out = str(adv.default_out_dir(cfg.dataset))
        adv.preflight(cfg)  # everything that can be wrong, before the long work
    except (ValueError, TypeError, OSError) as err:
        return _error(err)
    results = adv.run(cfg)
    for name, entries in results["attacks"].items():
        for e in entries:
            a = e["auroc"]
            print(
                f"{name} eps={e['eps']:g}: success {e['attack_success_rate']:.3f} | AUROC "
                f"distillation {_f(a['distillation'])} entropy {_f(a['entropy'])} max_prob "
                f"{_f(a['max_prob'])}"
            )
    for e in results["adaptive"]:
        print(
            f"adaptive eps={e['eps']:g} lambda={e['lambda']:g}: success "
            f"{e['attack_success_rate']:.3f}, undetected {e['undetected_success_rate']:.3f}"
        )
    for e in results.get("adaptive_any_lambda", []):
        print(
            f"adaptive eps={e['eps']:g} any lambda: undetected {e['undetected_success_rate']:.3f}"
        )
    rob = results.get("defence_robust")
    if rob is not None:
        for name, entries in rob["attacks"].items():
            for e in entries:
                print(
                    f"robust defence {name} eps={e['eps']:g}: AUROC distillation "
                    f"{_f(e['auroc']['distillation'])}"
                )
        for e in rob["white_box"]:
            print(
                f"robust defence adaptive eps={e['eps']:g} lambda={e['lambda']:g}: undetected "
                f"white-box {e['undetected_success_rate']:.3f}"
            )
        for who, d in (("robust defence", rob), ("robust + plain pair", rob["pair"])):
            for e in d["white_box_any_lambda"]:
                print(
                    f"{who} adaptive eps={e['eps']:g} any lambda: undetected white-box "
                    f"{e['undetected_success_rate']:.3f}"
                )
    print(f"results: {results['out']}/results.json, report: {results['out']}/report.md")
    return 0


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"
