"""Batch scoring of files: ``score_files`` and the ``distilldetect score`` command.

Engines: ``local`` streams the input through the detector in this process; ``ray`` runs the same
scoring on a Ray Data pipeline (a pool of actors, each loading the detector once from its
folder). Both write the same Parquet output in input order. Needs pyarrow
(``pip install 'distilldetect[batch]'``); the Ray engine needs ``pip install 'distilldetect[ray]'``.

Examples
--------
>>> from distilldetect.batch import score_files
>>> score_files("detectors/fmnist", "traffic.parquet", "scores.parquet")  # doctest: +SKIP
"""

from __future__ import annotations

from .inputs import InputError, InputSpec, open_input
from .scoring import ENGINES, ScoreSummary, score_files

__all__ = ["score_files", "ScoreSummary", "InputError", "InputSpec", "open_input", "ENGINES"]
