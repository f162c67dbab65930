"""Drift tests on consecutive windows of scores, in row order, exactly as the saved detector.

The window decision is ``cd.predict(window_scores, preprocessed=True)`` with the saved
:class:`~distilldetect.KSDrift`: what ``cd.predict(raw_window)`` decides, because its
``preprocess_fn`` is the same detector's ``score``. A KSDrift with ``update_x_ref`` changes its
reference after every window, so windows are tested one after the other, in order, on one
freshly loaded copy (on the driver, whatever the engine).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DriftWindows"]


class DriftWindows:
    """Collect scores in row order and test every complete window of ``window`` rows.

    The last window holds the remaining rows and may be shorter (its ``n`` says so).

    Examples
    --------
    >>> import numpy as np
    >>> from distilldetect import KSDrift
    >>> cd = KSDrift(np.linspace(0, 1, 200), p_val=0.05, alternative="greater")
    >>> w = DriftWindows(cd, window=50)
    >>> rows = w.add(np.full(120, 5.0)) + w.finish()
    >>> [(r["window_start"], r["n"], r["is_drift"]) for r in rows]
    [(0, 50, True), (50, 50, True), (100, 20, True)]
    """

    def __init__(self, cd: Any, window: int) -> None:
        self.cd = cd
        self.window = int(window)
        self._parts: list[np.ndarray] = []
        self._buffered = 0
        self._start = 0
        self.rows: int = 0
        self.n_windows = 0
        self.n_drift = 0

    def add(self, scores: np.ndarray) -> list[dict[str, Any]]:
        """Add the next scores; return the rows of the windows completed by them."""
        scores = np.asarray(scores, dtype=np.float64)
        self._parts.append(scores)
        self._buffered += len(scores)
        self.rows += len(scores)
        out = []
        while self._buffered >= self.window:
            buf = np.concatenate(self._parts)
            out.append(self._test(buf[: self.window]))
            rest = buf[self.window :]
            self._parts = [rest] if len(rest) else []
            self._buffered = len(rest)
        return out

    def finish(self) -> list[dict[str, Any]]:
        """Test the last, shorter window if rows are left."""
        if not self._buffered:
            return []
        buf = np.concatenate(self._parts)
        self._parts, self._buffered = [], 0
        return [self._test(buf)]

    def _test(self, scores: np.ndarray) -> dict[str, Any]:
        data = self.cd.predict(scores, preprocessed=True)["data"]
        p_val = np.asarray(data["p_val"], dtype=np.float64).reshape(-1)
        distance = np.asarray(data["distance"], dtype=np.float64).reshape(-1)
        row = {
            "window_start": self._start,
            "n": len(scores),
            "p_val": float(p_val[0]),
            "distance": float(distance[0]),
            "is_drift": bool(data["is_drift"]),
        }
        self._start += len(scores)
        self.n_windows += 1
        self.n_drift += int(row["is_drift"])
        return row
