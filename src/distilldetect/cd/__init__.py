"""Drift detectors (numpy and SciPy only; no deep-learning framework is imported).

:class:`KSDrift` runs a two-sample Kolmogorov-Smirnov test per feature against a reference set
(alibi-detect's detector). For *harmful* drift, test a :class:`~distilldetect.ModelDistillation`
detector's scores one-sided: ``ad.drift_detector(X_clean)`` is KS with
``alternative='greater'``; ``ad.drift_detector(X_clean, test='tail_rank')`` is
:class:`TailRankDrift`, a one-sided tail-weighted rank test with more power when a fraction of a
batch moves into the upper tail of the scores (and as quiet on harmless drift).
"""

from .ks import KSDrift, fdr
from .tail_rank import TailRankDrift

__all__ = ["KSDrift", "TailRankDrift", "fdr"]
