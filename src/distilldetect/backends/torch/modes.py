"""Modes of torch modules, safely shared between threads: one lock per module, modes restored.

A module's ``training`` flags are shared state: inference switches them to eval and back, and
training to train. :func:`preserve_modes` does both under the module's own re-entrant lock, so
concurrent callers never see a mode set by another thread, and every sub-module's own mode is
restored exactly (a user's mixed train/eval state included).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import torch

__all__ = ["model_lock", "preserve_modes"]

_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises everything that changes ``model``'s modes.

    Inference holds it for each forward call (modes switched to eval and back inside it), and a
    :class:`Trainer` holds it for the whole training block, so no thread ever sees a module in a
    mode another thread set. One lock per module object, created on first use.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


@contextlib.contextmanager
def preserve_modes(
    model: torch.nn.Module, training: bool | None = None
) -> Iterator[torch.nn.Module]:
    """Hold ``model``'s lock, optionally set its mode, and restore every sub-module's own mode.

    Parameters
    ----------
    model
        The module.
    training
        ``False`` for eval mode, ``True`` for train mode, None to leave the modes as they are
        (only restore them afterwards).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    >>> net[1].eval()  # a mixed state is restored exactly
    Dropout(p=0.5, inplace=False)
    >>> with preserve_modes(net, training=False):
    ...     net[0].training
    False
    >>> net.training, net[1].training
    (True, False)
    """
    with model_lock(model):
        modes = [(m, m.training) for m in model.modules()]
        try:
            if training is not None:
                model.train(training)
            yield model
        finally:
            for module, mode in modes:
                module.training = mode
