"""Drift detectors (numpy and SciPy only; no deep-learning framework is imported).

:class:`KSDrift` runs a two-sample Kolmogorov-Smirnov test per feature against a reference set.
For *harmful* drift, test a :class:`~distilldetect.ModelDistillation` detector's scores one-sided,
``alternative='greater'`` (test scores larger than the reference): ``ad.drift_detector(X_clean)``.
"""

from .ks import KSDrift, fdr

__all__ = ["KSDrift", "fdr"]
