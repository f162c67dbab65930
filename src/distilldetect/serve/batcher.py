"""Adaptive micro-batching: concurrent requests scored in one forward pass, on worker threads.

Every model forward of the service runs on a worker thread of a :class:`MicroBatcher`.
Requests put a job on the workers' queue and await its future; a worker takes the first job,
then every job already queued (up to ``max_batch`` instances), and scores them together. When
it saw concurrent requests it also waits up to ``max_wait`` for more, so that under load
batches fill up while an idle server answers a lone request at once. With several workers
(``workers``) one batch is scored while the next one gathers, so small batches keep every core
busy; forwards of one model overlap only where the backend allows it (a sealed torch model on
the fast path; other models take their lock, see
:func:`distilldetect.backends.torch.runtime.inference`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .detector import LoadedDetector

__all__ = ["MicroBatcher", "ScoreResult", "WorkerStopped"]

logger = logging.getLogger(__name__)


class WorkerStopped(RuntimeError):
    """The scoring worker is stopped (the server is shutting down)."""


class ScoreResult:
    """Scores of one request and the detector that computed them."""

    __slots__ = ("scores", "detector")

    def __init__(self, scores: np.ndarray, detector: LoadedDetector) -> None:
        self.scores = scores
        self.detector = detector


class _Job:
    __slots__ = ("x", "teacher_probs", "call", "future", "loop", "n")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future,
        x: np.ndarray | None = None,
        teacher_probs: np.ndarray | None = None,
        call: Callable[[], Any] | None = None,
    ) -> None:
        self.loop = loop
        self.future = future
        self.x = x
        self.teacher_probs = teacher_probs
        self.call = call
        self.n = 0 if x is None else len(x)


def _resolve(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client gone): nothing to deliver
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _deliver(job: _Job, value: Any, error: BaseException | None) -> None:
    """Hand a result to the job's event loop (ignored if that loop is gone)."""
    try:
        job.loop.call_soon_threadsafe(_resolve, job.future, value, error)
    except RuntimeError:  # the loop is closed: the request is gone
        pass


def _resolve_many(items: list[tuple[asyncio.Future, Any]]) -> None:
    for future, value in items:
        _resolve(future, value, None)


def _deliver_many(jobs: list[_Job], values: list[Any]) -> None:
    """Hand the results of a batch over, one wake-up of each event loop for all of them."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
    for job, value in zip(jobs, values, strict=True):
        by_loop.setdefault(job.loop, []).append((job.future, value))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_many, items)
        except RuntimeError:  # the loop is closed: its requests are gone
            pass


_STOP = object()


class MicroBatcher:
    """Score jobs from many requests together on one worker thread.

    Parameters
    ----------
    get_detector
        Returns the detector to use; read once per batch, so a reload between batches applies
        to the next batch and a batch in progress finishes on the detector it started with.
    max_batch
        Most instances per forward pass.
    max_wait
        Seconds the worker may wait for more jobs once it has seen concurrent requests.
    on_scored
        ``on_scored(detector, scores)`` after each scored group, on a
        worker thread, in scoring order with one worker (the drift monitor and metrics).
    on_batch
        ``on_batch(n_instances, n_jobs, seconds)`` after each forward group.
    workers
        Worker threads scoring batches side by side (1: one batch at a time). The callbacks
        are never called concurrently.
    """

    def __init__(
        self,
        get_detector: Callable[[], LoadedDetector],
        *,
        max_batch: int = 1024,
        max_wait: float = 0.002,
        on_scored: Callable[[LoadedDetector, np.ndarray], None] | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
        workers: int = 1,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self._get_detector = get_detector
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self._on_scored = on_scored
        self._on_batch = on_batch
        self._callbacks = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._live = workers
        self._live_lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._run,
                name="distilldetect-scorer" if k == 0 else f"distilldetect-scorer-{k}",
                daemon=True,
            )
            for k in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        self.thread_idents = tuple(t.ident for t in self._threads)
        self.thread_ident = self.thread_idents[0]

    # ------------------------------------------------------------------ client side
    async def score(self, x: np.ndarray, teacher_probs: np.ndarray | None = None) -> ScoreResult:
        """Scores of the instances ``x`` (float32, checked), computed on the worker."""
        if self._stopped.is_set():
            raise WorkerStopped("the server is shutting down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(loop, future, x=x, teacher_probs=teacher_probs))
        return await future

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the worker (between batches) and return its result."""
        if self._stopped.is_set():
            raise WorkerStopped("the server is shutting down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(loop, future, call=fn))
        return await future

    def call_sync(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn()`` on the worker from a thread without an event loop (startup)."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def wrapped() -> None:
            try:
                box["value"] = fn()
            except BaseException as err:  # handed back to the caller
                box["error"] = err
            finally:
                done.set()

        self._queue.put(wrapped)
        if not done.wait(timeout):
            raise TimeoutError("the scoring worker did not answer in time")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs, then stop the workers."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._queue.put(_STOP)  # each worker that sees it puts it back for the next one
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) and not self._stopped.is_set()

    def queued(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------ worker side
    def _next(self, carry: list[Any], timeout: float | None) -> Any:
        if carry:
            return carry.pop()
        if timeout is None:
            return self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _gather(
        self, carry: list[Any], batch: list[_Job], n: int, deadline: float
    ) -> tuple[int, bool]:
        """Add queued jobs to ``batch`` until ``max_batch`` or ``deadline``; (n, stop seen)."""
        while n < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                nxt = self._next(carry, remaining if remaining > 0 else 0)
            except queue.Empty:
                break
            if nxt is _STOP:
                return n, True
            if callable(nxt) or nxt.call is not None or n + nxt.n > self.max_batch:
                carry.append(nxt)  # this worker runs it first in its next round
                break
            batch.append(nxt)
            n += nxt.n
        return n, False

    def _run(self) -> None:
        busy = False  # whether the previous batch came from concurrent requests
        carry: list[Any] = []  # at most one job taken from the queue but not yet run
        while True:
            item = self._next(carry, None)
            if item is _STOP:
                break
            if callable(item):  # call_sync
                item()
                continue
            if item.call is not None:
                self._run_call(item)
                continue
            batch = [item]
            n, stop = self._gather(carry, batch, item.n, 0.0)  # what is queued already
            if not stop and not carry and (busy or len(batch) > 1) and self.max_wait > 0:
                # under load: wait a little for the requests that are on their way
                n, stop = self._gather(carry, batch, n, time.perf_counter() + self.max_wait)
            busy = len(batch) > 1
            try:
                self._process(batch)
            except Exception as err:  # a bug here must not kill the worker
                logger.exception("scoring a batch failed")
                for job in batch:
                    _deliver(job, None, err)
            if stop:
                break
        self._queue.put(_STOP)  # for the next worker
        leftovers = list(carry)
        with self._live_lock:
            self._live -= 1
            last = self._live == 0
        if last:  # drain: answer what is left so that no request waits forever
            while True:
                try:
                    leftovers.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        for job in leftovers:
            if job is _STOP:
                continue
            if callable(job):
                job()
            elif job.call is not None:
                self._run_call(job)
            else:
                self._process([job])

    def _run_call(self, job: _Job) -> None:
        try:
            value, error = job.call(), None
        except Exception as err:
            value, error = None, err
        _deliver(job, value, error)

    def _process(self, batch: list[_Job]) -> None:
        live = [j for j in batch if not j.future.cancelled()]
        if not live:
            return
        detector = self._get_detector()
        plain = [j for j in live if j.teacher_probs is None]
        given = [j for j in live if j.teacher_probs is not None]
        for group in (plain, given):
            if group:
                self._score_group(detector, group)

    def _score_group(self, detector: LoadedDetector, group: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            scores = self._score(detector, group)
        except Exception as err:
            if len(group) == 1:
                job = group[0]
                _deliver(job, None, err)
                return
            # isolate the job that fails; the others are scored on their own
            for job in group:
                self._score_group(detector, [job])
            return
        elapsed = time.perf_counter() - start
        if self._on_batch is not None:
            with self._callbacks:
                self._on_batch(len(scores), len(group), elapsed)
        offset = 0
        values = []
        for job in group:
            values.append(ScoreResult(scores[offset : offset + job.n], detector))
            offset += job.n
        _deliver_many(group, values)
        with self._callbacks:
            if self._on_scored is not None:
                try:
                    self._on_scored(detector, scores)
                except Exception:  # monitoring must never fail a request
                    logger.exception("recording scores failed")

    @staticmethod
    def _score(detector: LoadedDetector, group: list[_Job]) -> np.ndarray:
        xs = [j.x for j in group]
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        tp = None
        if group[0].teacher_probs is not None:
            tps = [j.teacher_probs for j in group]
            tp = tps[0] if len(tps) == 1 else np.concatenate(tps)
        return detector.ad.score(x, batch_size=max(len(x), 1), teacher_probs=tp)
