"""The README's quickstart runs as written (and scripts/quickstart.py is the same code)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def quickstart_block() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"## Quickstart\n\n```python\n(.*?)```", readme, re.S)
    assert match, "README has no quickstart block"
    return match.group(1)


def test_script_is_the_readme_quickstart():
    script = (ROOT / "scripts" / "quickstart.py").read_text()
    assert script.endswith(quickstart_block())


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST (Debian package) not installed")
def test_readme_quickstart_runs(tmp_path, capsys):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(quickstart_block(), "README.md quickstart", "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if "teacher accuracy" in line}
    assert set(lines) == {"none", "fog", "brightness"}, out
    assert "of images flagged" in lines["fog"] and "drift in" in lines["fog"]
    assert (tmp_path / "fmnist_detector" / "config.json").exists()
