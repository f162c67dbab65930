"""The examples in the docstrings of distilldetect.batch run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["inputs", "outputs", "drift", "_imports", "scoring", "local", "command", "__init__"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(
        "distilldetect.batch" if name == "__init__" else f"distilldetect.batch.{name}"
    )
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_ray_engine_doctests():
    pytest.importorskip("ray")
    from distilldetect.batch import ray_engine

    assert doctest.testmod(ray_engine).failed == 0
