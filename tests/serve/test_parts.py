"""The service's parts on their own: micro-batcher, drift monitor, events log, dashboard."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
import pytest

from distilldetect.serve.batcher import MicroBatcher
from distilldetect.serve.dashboard import render_page
from distilldetect.serve.detector import LoadedDetector
from distilldetect.serve.monitor import DriftMonitor, EventLog


class _FakeAD:
    """Scores = the sum of each row; records every call's size and thread."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[int, int]] = []
        self.delay = delay
        self.threshold = 10.0

    def score(self, x, batch_size=256, teacher_probs=None):
        self.calls.append((len(x), threading.get_ident()))
        if (x < 0).any():
            raise ValueError("negative instance")
        time.sleep(self.delay)
        out = x.reshape(len(x), -1).sum(axis=1).astype(np.float64)
        if teacher_probs is not None:
            out += 1000
        return out


def _detector(ad, version="v1", cd=None) -> LoadedDetector:
    return LoadedDetector(
        ad=ad,
        cd=cd,
        path="-",
        version=version,
        input_shape=(2,),
        n_classes=2,
        threshold=10.0,
        reference_scores=None,
        drift_source=None,
        loaded_at=0.0,
        meta={},
    )


def test_batcher_gathers_concurrent_jobs_on_one_thread():
    ad = _FakeAD(delay=0.01)
    det = _detector(ad)
    batcher = MicroBatcher(lambda: det, max_batch=16, max_wait=0.005)

    async def main():
        xs = [np.full((1 + i % 3, 2), float(i), np.float32) for i in range(40)]
        results = await asyncio.gather(*(batcher.score(x) for x in xs))
        return xs, results

    try:
        xs, results = asyncio.run(main())
    finally:
        batcher.stop()
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_array_equal(r.scores, x.sum(axis=1))  # rows went back to their job
        assert r.detector is det
    sizes = [n for n, _ in ad.calls]
    assert sum(sizes) == sum(len(x) for x in xs)
    assert max(sizes) <= 16 and len(sizes) < 40  # batched, never above max_batch
    threads = {t for _, t in ad.calls}
    assert threads == {batcher.thread_ident} and threading.get_ident() not in threads


def test_batcher_isolates_a_failing_job_and_groups_teacher_probs():
    ad = _FakeAD(delay=0.02)
    det = _detector(ad)
    batcher = MicroBatcher(lambda: det, max_batch=64)

    async def main():
        ok = np.ones((2, 2), np.float32)
        bad = -np.ones((1, 2), np.float32)
        jobs = [
            batcher.score(ok),
            batcher.score(bad),
            batcher.score(ok, np.ones((2, 2))),
            batcher.score(ok),
        ]
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    assert isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[0].scores, [2, 2])
    np.testing.assert_array_equal(results[2].scores, [1002, 1002])
    np.testing.assert_array_equal(results[3].scores, [2, 2])


def test_batcher_skips_cancelled_jobs_and_drains_on_stop():
    ad = _FakeAD(delay=0.05)
    det = _detector(ad)
    batcher = MicroBatcher(lambda: det, max_batch=1)

    async def main():
        first = asyncio.ensure_future(batcher.score(np.ones((1, 2), np.float32)))
        await asyncio.sleep(0.01)  # the worker is busy with the first job
        gone = asyncio.ensure_future(batcher.score(np.full((1, 2), 7.0, np.float32)))
        await asyncio.sleep(0)
        gone.cancel()
        last = asyncio.ensure_future(batcher.score(np.full((1, 2), 3.0, np.float32)))
        return await first, await last

    try:
        a, b = asyncio.run(main())
    finally:
        batcher.stop()
    assert a.scores.tolist() == [2.0] and b.scores.tolist() == [6.0]
    assert [n for n, _ in ad.calls] == [1, 1]  # the cancelled job was never scored


def test_batcher_reads_the_detector_once_per_batch():
    ad1, ad2 = _FakeAD(delay=0.05), _FakeAD()
    current = {"d": _detector(ad1, "v1")}
    batcher = MicroBatcher(lambda: current["d"], max_batch=1)

    async def main():
        a = asyncio.ensure_future(batcher.score(np.ones((1, 2), np.float32)))
        await asyncio.sleep(0.01)  # batched on v1, now in its forward pass
        current["d"] = _detector(ad2, "v2")  # the swap
        b = asyncio.ensure_future(batcher.score(np.ones((1, 2), np.float32)))
        return await a, await b

    try:
        a, b = asyncio.run(main())
    finally:
        batcher.stop()
    assert a.detector.version == "v1" and b.detector.version == "v2"


def test_two_workers_score_batches_side_by_side_and_never_overlap_callbacks():
    """With workers=2 two batches are in their forward pass at once, every job gets its own
    rows back, and on_scored / on_batch are never called concurrently."""

    class Overlapping(_FakeAD):
        """Counts how many forward passes are in progress at once."""

        def __init__(self, delay):
            super().__init__(delay)
            self.now = self.most = 0
            self.guard = threading.Lock()

        def score(self, x, batch_size=256, teacher_probs=None):
            with self.guard:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                return super().score(x, batch_size, teacher_probs)
            finally:
                with self.guard:
                    self.now -= 1

    ad = Overlapping(delay=0.03)
    det = _detector(ad)
    inside = {"now": 0, "most": 0}
    guard = threading.Lock()
    seen: list[int] = []

    def on_scored(detector, scores):
        with guard:
            inside["now"] += 1
            inside["most"] = max(inside["most"], inside["now"])
        time.sleep(0.002)
        seen.extend(scores.astype(int).tolist())
        with guard:
            inside["now"] -= 1

    batcher = MicroBatcher(lambda: det, max_batch=4, max_wait=0.0, workers=2, on_scored=on_scored)
    assert len(set(batcher.thread_idents)) == 2

    async def main():
        xs = [np.full((1, 2), float(i), np.float32) for i in range(24)]
        return xs, await asyncio.gather(*(batcher.score(x) for x in xs))

    try:
        xs, results = asyncio.run(main())
    finally:
        batcher.stop()
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_array_equal(r.scores, x.sum(axis=1))
    assert {t for _, t in ad.calls} == set(batcher.thread_idents)  # both workers scored
    assert sorted(seen) == sorted(2 * i for i in range(24))  # every score recorded once
    assert inside["most"] == 1  # callbacks one at a time
    assert len(ad.calls) >= 6 and ad.most == 2  # batches of <= 4; two forwards at once


def test_two_workers_drain_on_stop_and_answer_every_job():
    ad = _FakeAD(delay=0.02)
    det = _detector(ad)
    batcher = MicroBatcher(lambda: det, max_batch=1, workers=2)

    async def main():
        futures = [
            asyncio.ensure_future(batcher.score(np.full((1, 2), float(i), np.float32)))
            for i in range(6)
        ]
        await asyncio.sleep(0.005)
        stopper = asyncio.get_running_loop().run_in_executor(None, batcher.stop)
        results = await asyncio.gather(*futures)
        await stopper
        return results

    results = asyncio.run(main())
    assert [r.scores.tolist() for r in results] == [[2.0 * i] for i in range(6)]
    assert not batcher.alive and not any(t.is_alive() for t in batcher._threads)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_batcher_refuses_a_bad_worker_count(bad):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        MicroBatcher(lambda: None, workers=bad)


class _FakeCD:
    def __init__(self) -> None:
        self.windows: list[np.ndarray] = []

    def predict(self, x, preprocessed=False):
        assert preprocessed is True
        self.windows.append(np.array(x))
        return {
            "data": {
                "p_val": np.array([0.5]),
                "is_drift": 0,
                "threshold": 0.05,
                "distance": np.array([0.1]),
            }
        }


def test_monitor_tests_at_every_multiple_and_keeps_the_window(tmp_path):
    cd = _FakeCD()
    det = _detector(_FakeAD(), cd=cd)
    mon = DriftMonitor(window=5, drift_every=3, events=EventLog(tmp_path / "e.jsonl"))
    mon.set_detector(det)
    mon.add(det, np.arange(7.0))  # tests after 3 and 6
    mon.add(det, np.arange(7.0, 10.0))  # and after 9
    assert mon.wait_idle()
    assert [w.tolist() for w in cd.windows] == [[0, 1, 2], [1, 2, 3, 4, 5], [4, 5, 6, 7, 8]]
    snap = mon.snapshot()
    assert snap["n_seen"] == 10 and snap["n_window"] == 5
    assert [h["n_seen"] for h in snap["history"]] == [3, 6, 9]
    # a new detector starts a new window; late scores of the old one are dropped
    new = dataclasses.replace(det, version="v2")
    mon.set_detector(new, "reload")
    mon.add(det, np.arange(3.0))
    mon.add(new, np.array([1.0, 2.0]))
    assert mon.wait_idle()
    assert mon.window_scores().tolist() == [1.0, 2.0]
    mon.close()
    kinds = [
        line.split('"event": "')[1].split('"')[0]
        for line in (tmp_path / "e.jsonl").read_text().splitlines()
    ]
    assert kinds == ["start", "drift", "drift", "drift", "reload"]


def test_event_log_refuses_a_folder_and_a_missing_parent(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        EventLog(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        EventLog(tmp_path / "no" / "e.jsonl")


def test_dashboard_escapes_names_and_draws_charts():
    hist = [
        {
            "p_val": p,
            "is_drift": p < 0.05,
            "threshold": 0.05,
            "distance": 0.1,
            "n_window": 100,
            "n_seen": 100 * (i + 1),
            "flagged_rate": 0.1 * i,
            "updated_at": "2024-01-01T00:00:00Z",
            "model_version": "abc",
        }
        for i, p in enumerate([0.5, 0.2, 1e-3, 1e-9])
    ]
    rng = np.random.default_rng(0)
    state = {
        "drift": {
            "enabled": True,
            "reason": None,
            "p_val": 1e-9,
            "is_drift": True,
            "n_window": 100,
            "window": 1000,
            "history": hist,
        },
        "window": rng.lognormal(-1, 1, 100),
        "reference": rng.lognormal(-2, 1, 500),
        "threshold": 0.5,
        "n_scored": 400,
        "n_flagged": 40,
        "requests": 12,
        "started": 0.0,
        "authenticated": False,
    }
    page = render_page(state, name="<script>alert(1)</script>", version="v", refresh=2)
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert page.count("<svg") == 3 and "DRIFT" in page and "<polyline" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


@pytest.mark.parametrize(
    "module",
    ["app", "batcher", "command", "dashboard", "detector", "metrics", "monitor", "protocol"],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"distilldetect.serve.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
