"""distilldetect: adversarial-input and harmful-drift detection by model distillation.

Importing the package does not import a deep-learning framework; backends are loaded when a
model of theirs is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .ad import ModelDistillation
from .utils import predict_batch, scale_by_instance

__all__ = [
    "__version__",
    "ModelDistillation",
    "KSDrift",
    "save_detector",
    "load_detector",
    "predict_batch",
    "scale_by_instance",
]

_LAZY = {
    "KSDrift": "distilldetect.cd",
    "save_detector": "distilldetect.saving",
    "load_detector": "distilldetect.saving",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distilldetect' has no attribute {name!r}")
