"""Framework-free metrics used by the study: AUROC and the teacher's own uncertainty scores."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .base import check_array

__all__ = ["auroc", "predictive_entropy", "one_minus_max_prob"]


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of a score separating ``positive`` from ``negative`` instances.

    Equal to the probability that a random positive scores higher than a random negative
    (ties count one half), computed from ranks (Mann-Whitney U). NaN if either set is empty.

    Examples
    --------
    >>> auroc(np.array([2.0, 3.0]), np.array([1.0, 2.0]))
    0.875
    """
    positive = check_array(
        np.asarray(positive, dtype=np.float64).ravel(), "positive", allow_empty=True
    )
    negative = check_array(
        np.asarray(negative, dtype=np.float64).ravel(), "negative", allow_empty=True
    )
    n_pos, n_neg = len(positive), len(negative)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([positive, negative]))
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of class probabilities.

    Examples
    --------
    >>> predictive_entropy(np.array([[0.5, 0.5], [1.0, 0.0]])).round(4)
    array([0.6931, 0.    ])
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return -(np.asarray(probs, dtype=np.float64) * np.log(p)).sum(axis=1) + 0.0  # no -0.0


def one_minus_max_prob(probs: np.ndarray) -> np.ndarray:
    """``1 - max_k p_k`` per row: the teacher's lack of confidence.

    Examples
    --------
    >>> one_minus_max_prob(np.array([[0.2, 0.8]]))
    array([0.2])
    """
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)
