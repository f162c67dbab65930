"""Run by `make bare` in a clean venv holding distilldetect alone (no framework, no extra).

The core works with numpy and SciPy only; a call that needs a framework says which extra to
install. Exits non-zero with a message if anything is wrong.
"""

from __future__ import annotations

import sys

import numpy as np

import distilldetect
from distilldetect import KSDrift, load_detector, save_detector
from distilldetect.corruptions import corrupt

heavy = {"torch", "tensorflow", "keras", "matplotlib", "fastapi", "ray", "onnxruntime", "art"}
loaded = heavy & set(sys.modules)
assert not loaded, f"import distilldetect imported {sorted(loaded)}"
for module in ("torch", "tensorflow", "matplotlib"):
    try:
        __import__(module)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{module} is installed in the bare venv: the check proves nothing")

rng = np.random.default_rng(0)
cd = KSDrift(rng.normal(size=(200, 3)), p_val=0.05)
assert cd.predict(rng.normal(loc=2.0, size=(50, 3)))["data"]["is_drift"] == 1
assert corrupt(
    rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8), "gaussian_noise", 3, seed=0
).shape == (
    2,
    16,
    16,
    3,
)
import tempfile  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    save_detector(cd, f"{tmp}/cd")
    assert load_detector(f"{tmp}/cd").p_val == 0.05

try:
    from distilldetect.models import build_model

    build_model("mlp")
except ImportError as err:
    assert "pip install 'distilldetect[torch]'" in str(err), err
else:
    raise SystemExit("build_model worked without torch")
print(f"bare install of distilldetect {distilldetect.__version__}: OK")
