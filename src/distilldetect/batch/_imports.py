"""``module:factory`` import paths for models that the detector folder cannot rebuild.

A saved detector whose teacher is a black-box callable, or whose models are torch modules outside
the model zoo, needs the models passed again on load. On the command line (and for Ray workers,
which each load the detector themselves) they are named by an import path: ``module:factory``,
where ``factory()`` returns the model.
"""

from __future__ import annotations

from typing import Any

__all__ = ["resolve_model", "is_import_path"]


def is_import_path(value: Any) -> bool:
    """Whether ``value`` looks like ``'module:factory'``."""
    return isinstance(value, str) and ":" in value


def resolve_model(value: Any, name: str) -> Any:
    """The model named by ``value``: None and objects as they are, ``'module:factory'`` built.

    Parameters
    ----------
    value
        None, a model object, or an import path ``'package.module:factory'`` (the factory may
        be a dotted attribute path, ``'module:Class.build'``); it is called without arguments.
    name
        Argument name for messages (``model``, ``distilled_model``).

    Examples
    --------
    >>> resolve_model("collections:OrderedDict", "model")
    OrderedDict()
    """
    if value is None or not isinstance(value, str):
        return value
    from ..models import import_factory

    return import_factory(value, name)()
