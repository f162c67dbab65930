"""``python -m distilldetect``: the same command line as ``distilldetect``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":  # pragma: no branch
    sys.exit(main())
