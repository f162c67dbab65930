"""The command line explains itself: help on every flag, examples per subcommand, one-line errors."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from distilldetect import __version__
from distilldetect.cli import build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_flag_has_a_help_line_and_every_subcommand_two_examples():
    for name, parser in subcommands().items():
        missing = [a.dest for a in parser._actions if not a.help and a.help != argparse.SUPPRESS]
        assert missing == [], f"{name}: options without help: {missing}"
        examples = [line for line in (parser.epilog or "").splitlines() if "distilldetect " in line]
        assert len(examples) >= 2, f"{name} has fewer than two examples in its epilog"
        text = parser.format_help()
        assert "examples:" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["corruptions", "--subset", "nope"],
        ["fetch", "imagenet"],
        ["score"],
        ["serve"],
        ["experiment", "--severities", "one"],
        ["no-such-command"],
    ],
)
def test_argument_errors_are_one_line_with_exit_status_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err


def test_python_dash_m_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "distilldetect", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == f"distilldetect {__version__}"


def test_corruptions_lists_names(capsys):
    assert main(["corruptions", "--subset", "noise"]) == 0
    assert capsys.readouterr().out.split() == ["gaussian_noise", "shot_noise", "impulse_noise"]
