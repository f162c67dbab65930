"""Run the docstring examples of the package as doctests (only here: tests/ has its own tests).

Enabling ``--doctest-modules`` for the whole run would also import every test module and
conftest a second time as a doctest module, which clashes between the folders' conftests.
"""

from __future__ import annotations

from _pytest.doctest import DoctestModule


def pytest_collect_file(file_path, parent):  # noqa: ANN001, ANN201 - pytest hook
    if file_path.suffix == ".py" and file_path.name != "conftest.py":
        return DoctestModule.from_parent(parent, path=file_path)
    return None
