"""The rolling harmful-drift monitor and its durable events log.

Every scored instance enters a window of the last ``window`` scores; each time ``drift_every``
more instances have been seen, the saved drift detector tests the window,
``cd.predict(window_scores, preprocessed=True)`` — exactly its own decision on those scores.
Each result is appended to the events file as one JSON line, flushed and ``fsync``'d before
the next one, so a crash or restart loses no result already reported; a restart appends to the
file and never truncates it.

The monitor runs on its own thread, fed in scoring order by the scoring worker, so neither the
KS test nor the ``fsync`` delays a forward pass.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .detector import LoadedDetector

__all__ = ["EventLog", "DriftMonitor", "utc_now"]

logger = logging.getLogger(__name__)


def utc_now() -> str:
    """The current UTC time, ISO 8601 with milliseconds and a 'Z'."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventLog:
    """Append-only JSON-lines file; every line is flushed and fsync'd when written.

    Opening never truncates. If the file ends in a partial line (a crash while writing), a
    newline is added first so that the next event starts a line of its own.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> log = EventLog(path)
    >>> log.append({"event": "drift", "p_val": 0.5})
    >>> log.close()
    >>> EventLog(path).path.read_text()
    '{"event": "drift", "p_val": 0.5}\\n'
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(os.fspath(path))
        if self.path.is_dir():
            raise ValueError(f"--events {self.path} is a folder; expected a file to append to")
        if not self.path.parent.is_dir():
            raise ValueError(f"--events {self.path}: the folder {self.path.parent} does not exist")
        created = not self.path.exists()
        try:
            self._file = open(self.path, "ab")  # O_APPEND: never truncates
        except OSError as err:
            raise ValueError(f"--events {self.path}: cannot open for appending: {err}") from err
        self._lock = threading.Lock()
        self.errors = 0
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        self._write(b"\n")
            if created:
                _fsync_dir(self.path.parent)
        except OSError as err:
            self._file.close()
            raise ValueError(f"--events {self.path}: cannot write: {err}") from err

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and fsync it (errors are logged and counted)."""
        line = json.dumps(record, allow_nan=False, separators=(", ", ": ")).encode() + b"\n"
        with self._lock:
            try:
                self._write(line)
            except (OSError, ValueError) as err:
                self.errors += 1
                logger.error("could not write an event to %s: %s", self.path, err)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _finite(value: float) -> float:
    return float(value) if np.isfinite(value) else 0.0


class DriftMonitor:
    """Rolling window of scores, tested for harmful drift every ``drift_every`` instances.

    Parameters
    ----------
    window
        Scores kept (the most recent ones).
    drift_every
        Instances between two tests.
    events
        An :class:`EventLog`, or None.
    history
        Results kept in memory for ``/drift`` and the dashboard.
    on_result
        ``on_result(result_dict)`` after each test (metrics), on the monitor thread.
    name
        Model name written into events.
    """

    def __init__(
        self,
        window: int = 1000,
        drift_every: int = 100,
        events: EventLog | None = None,
        history: int = 500,
        on_result: Callable[[dict[str, Any]], None] | None = None,
        name: str = "distilldetect",
    ) -> None:
        self.window = int(window)
        self.drift_every = int(drift_every)
        self.events = events
        self.name = name
        self._on_result = on_result
        self._lock = threading.Lock()
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self._scores = np.empty(0, dtype=np.float64)
        self._detector: LoadedDetector | None = None
        self._n_seen = 0
        self._n_flagged = 0
        self._since = 0
        self._n_tests = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="distilldetect-monitor", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ feeding
    def _put(self, item: Any) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(item)

    def set_detector(self, detector: LoadedDetector, reason: str = "start") -> None:
        """Start a new window for ``detector`` (its scores are not comparable with the old)."""
        self._put(("detector", detector, reason))

    def add(self, detector: LoadedDetector, scores: np.ndarray) -> None:
        """Queue scores computed by ``detector`` (from the scoring worker, in scoring order)."""
        self._put(("scores", detector, scores))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is processed (for tests and shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Process what is queued, then stop the thread and close the events log."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        if self.events is not None:
            self.events.close()

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                kind, detector, payload = item
                if kind == "detector":
                    self._switch(detector, payload)
                else:
                    self._ingest(detector, payload)
            except Exception:  # keep monitoring whatever one item did
                logger.exception("drift monitor failed on an update")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _switch(self, detector: LoadedDetector, reason: str) -> None:
        previous = self._detector
        with self._lock:
            self._detector = detector
            self._scores = np.empty(0, dtype=np.float64)
            self._since = 0  # a reload starts a new window; n_seen keeps counting
        if self.events is not None:
            self.events.append(
                {
                    "event": reason,
                    "time": utc_now(),
                    "model_name": self.name,
                    "model_version": detector.version,
                    "previous_version": None if previous is None else previous.version,
                    "drift_enabled": detector.drift_enabled,
                    "window": self.window,
                    "drift_every": self.drift_every,
                }
            )

    def _ingest(self, detector: LoadedDetector, scores: np.ndarray) -> None:
        if detector is not self._detector:
            return  # scored by a detector that was replaced since: not comparable
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        threshold = detector.threshold
        while len(scores):
            take = scores[: self.drift_every - self._since]
            scores = scores[len(take) :]
            with self._lock:
                self._scores = np.concatenate([self._scores, take])[-self.window :]
                self._n_seen += len(take)
                self._n_flagged += int((take > threshold).sum())
                self._since += len(take)
                due = self._since >= self.drift_every
                if due:
                    self._since = 0
                    window = self._scores.copy()
                    n_seen = self._n_seen
            if due and detector.cd is not None:
                self._test(detector, window, n_seen)

    def _test(self, detector: LoadedDetector, window: np.ndarray, n_seen: int) -> None:
        pred = detector.cd.predict(window, preprocessed=True)["data"]
        p_val = float(np.asarray(pred["p_val"]).reshape(-1)[0])
        distance = float(np.asarray(pred["distance"]).reshape(-1)[0])
        result = {
            "p_val": _finite(p_val),
            "is_drift": bool(pred["is_drift"]),
            "threshold": float(np.asarray(pred["threshold"]).reshape(-1)[0]),
            "distance": _finite(distance),
            "n_window": int(len(window)),
            "n_seen": int(n_seen),
            "flagged_rate": float((window > detector.threshold).mean()),
            "updated_at": utc_now(),
            "model_version": detector.version,
        }
        with self._lock:
            self._history.append(result)
            self._n_tests += 1
        if self.events is not None:
            self.events.append(
                {"event": "drift", "time": result["updated_at"], "model_name": self.name, **result}
            )
        if self._on_result is not None:
            self._on_result(result)

    # ------------------------------------------------------------------ reading
    def snapshot(self, history: int | None = None) -> dict[str, Any]:
        """State for ``/drift``: latest result, counts, recent history (oldest first)."""
        with self._lock:
            detector = self._detector
            items = list(self._history)
            n_window = int(len(self._scores))
            n_seen = self._n_seen
        latest = items[-1] if items else None
        if history is not None:
            items = items[-history:] if history > 0 else []
        enabled = detector is not None and detector.drift_enabled
        reason = None
        if not enabled:
            reason = (
                "drift monitoring is off: the detector folder holds a ModelDistillation only. "
                "Save ad.drift_detector(x_ref) with save_detector, or start the server with "
                "--reference FILE.npy (clean instances held out from the student's training)"
            )
        elif latest is None:
            reason = f"no test yet: the first runs after {self.drift_every} scored instances"
        return {
            "enabled": enabled,
            "reason": reason,
            "p_val": None if latest is None else latest["p_val"],
            "is_drift": None if latest is None else latest["is_drift"],
            "n_window": n_window,
            "n_seen": n_seen,
            "threshold": None if latest is None else latest["threshold"],
            "updated_at": None if latest is None else latest["updated_at"],
            "window": self.window,
            "drift_every": self.drift_every,
            "model_version": "" if detector is None else detector.version,
            "history": items,
        }

    def window_scores(self) -> np.ndarray:
        with self._lock:
            return self._scores.copy()

    def counts(self) -> tuple[int, int, int]:
        """(instances seen, instances flagged, drift tests run) since start."""
        with self._lock:
            return self._n_seen, self._n_flagged, self._n_tests
