"""The rolling harmful-drift monitor and its events log, through a real server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from servehelpers import metric_value


def _offline(cd, window: np.ndarray) -> dict:
    pred = cd.predict(window, preprocessed=True)["data"]
    return {"p_val": float(pred["p_val"][0]), "is_drift": bool(pred["is_drift"])}


def test_window_and_tests_are_the_saved_detectors_decisions(serve, detectors, tmp_path):
    ad, cd, X = detectors["ad"], detectors["cd"], detectors["X"]
    events = tmp_path / "events.jsonl"
    live = serve(detectors["root"] / "cd", window=50, drift_every=20, events=events)
    sizes = [7, 13, 25, 30]  # 75 instances: tests after 20, 40 and 60
    batches = np.split(X[:75], np.cumsum(sizes)[:-1])
    with live.client() as c:
        for b in batches:
            assert c.post("/score", json={"instances": b.tolist()}).status_code == 200
        assert live.service.monitor.wait_idle()
        drift = c.get("/drift").json()
        metrics = c.get("/metrics").text
    scores = ad.score(X[:75])
    expected = [
        _offline(cd, scores[:20]),
        _offline(cd, scores[:40]),
        _offline(cd, scores[10:60]),  # the window keeps the last 50
    ]
    history = drift["history"]
    assert [h["n_seen"] for h in history] == [20, 40, 60]
    assert [h["n_window"] for h in history] == [20, 40, 50]
    for got, want in zip(history, expected, strict=True):
        assert got["p_val"] == pytest.approx(want["p_val"], rel=1e-9, abs=1e-300)
        assert got["is_drift"] is want["is_drift"]
        assert got["threshold"] == pytest.approx(0.05)
    assert drift["enabled"] is True and drift["n_seen"] == 75 and drift["n_window"] == 50
    assert (
        drift["p_val"] == history[-1]["p_val"] and drift["updated_at"] == history[-1]["updated_at"]
    )
    with live.client() as c:  # the latest result does not depend on how much history is asked
        short = c.get("/drift", params={"history": 0}).json()
    assert short["history"] == [] and short["p_val"] == drift["p_val"]
    assert short["is_drift"] == drift["is_drift"] and short["reason"] is None
    flagged = [float((scores[a:b] > ad.threshold).mean()) for a, b in [(0, 20), (0, 40), (10, 60)]]
    assert [h["flagged_rate"] for h in history] == pytest.approx(flagged)
    assert metric_value(metrics, "distilldetect_drift_p_value") == pytest.approx(
        history[-1]["p_val"]
    )
    assert (
        metric_value(metrics, "distilldetect_drift_tests_total", result="no_drift")
        + metric_value(metrics, "distilldetect_drift_tests_total", result="drift")
        == 3
    )
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["event"] for e in lines] == ["start", "drift", "drift", "drift"]
    assert [e["p_val"] for e in lines[1:]] == [h["p_val"] for h in history]
    assert all(e["model_name"] == "digits" for e in lines)


def test_harmful_drift_is_flagged(serve, detectors):
    ad, cd = detectors["ad"], detectors["cd"]
    noise = np.random.default_rng(0).uniform(0, 1, size=(100, 8, 8)).astype(np.float32)
    clean = detectors["X"][:100]
    assert _offline(cd, ad.score(noise))["is_drift"]  # the case is a real one
    assert not _offline(cd, ad.score(clean))["is_drift"]
    live = serve(detectors["root"] / "cd", window=100, drift_every=100)
    with live.client() as c:
        c.post("/score", json={"instances": clean.tolist()})
        live.service.monitor.wait_idle()
        assert c.get("/drift").json()["is_drift"] is False
        c.post("/score", json={"instances": noise.tolist()})
        live.service.monitor.wait_idle()
        drift = c.get("/drift").json()
        text = c.get("/metrics").text
    assert drift["is_drift"] is True and drift["p_val"] < 0.05
    assert metric_value(text, "distilldetect_drift_is_drift") == 1
    assert metric_value(text, "distilldetect_drift_tests_total", result="drift") == 1


def test_events_survive_a_restart_and_a_torn_line(serve, detectors, tmp_path, monkeypatch):
    import distilldetect.serve.monitor as monitor

    synced = []
    real_fsync = monitor.os.fsync
    monkeypatch.setattr(monitor.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    events = tmp_path / "events.jsonl"
    X = detectors["X"]
    live = serve(detectors["root"] / "cd", window=20, drift_every=10, events=events)
    with live.client() as c:
        c.post("/score", json={"instances": X[:30].tolist()})
    live.service.monitor.wait_idle()
    live.stop()
    first = events.read_text().splitlines()
    assert [json.loads(x)["event"] for x in first] == ["start", "drift", "drift", "drift"]
    assert len(synced) >= 4  # every event fsync'd
    with open(events, "ab") as f:  # a crash in the middle of a line
        f.write(b'{"event": "drift", "p_va')
    live = serve(detectors["root"] / "cd", window=20, drift_every=10, events=events)
    with live.client() as c:
        c.post("/score", json={"instances": X[:10].tolist()})
    live.service.monitor.wait_idle()
    live.stop()
    lines = events.read_text().splitlines()
    assert lines[:4] == first  # never truncated
    assert lines[4] == '{"event": "drift", "p_va'  # the torn line is kept as it was
    assert [json.loads(x)["event"] for x in lines[5:]] == ["start", "drift"]


def test_no_drift_detector_says_so(serve, detectors):
    live = serve(detectors["root"] / "ad")
    with live.client() as c:
        c.post("/score", json={"instances": detectors["X"][:150].tolist()})
        live.service.monitor.wait_idle()
        drift = c.get("/drift").json()
        assert c.get("/v2/models/digits").json()["parameters"]["drift_enabled"] is False
        text = c.get("/metrics").text
    assert drift["enabled"] is False and drift["p_val"] is None and drift["history"] == []
    assert "--reference" in drift["reason"] and "drift_detector" in drift["reason"]
    assert drift["n_seen"] == 150
    assert metric_value(text, "distilldetect_drift_enabled") == 0


def test_reference_file_builds_the_drift_detector(serve, detectors):
    ad, X = detectors["ad"], detectors["X"]
    reference = np.load(detectors["root"] / "reference.npy")
    live = serve(detectors["root"] / "ad", reference=reference, window=40, drift_every=40)
    with live.client() as c:
        c.post("/score", json={"instances": X[:40].tolist()})
        live.service.monitor.wait_idle()
        drift = c.get("/drift").json()
    want = _offline(ad.drift_detector(reference, p_val=0.05), ad.score(X[:40]))
    assert drift["enabled"] is True
    assert drift["p_val"] == pytest.approx(want["p_val"], rel=1e-9)


def test_reference_with_a_drift_folder_is_refused(detectors):
    from distilldetect.serve import create_app

    reference = np.load(detectors["root"] / "reference.npy")
    with pytest.raises(ValueError, match="already holds a drift detector"):
        create_app(str(detectors["root"] / "cd"), reference=reference)
