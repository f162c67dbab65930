"""Hot reload: atomic swaps, refused folders, requests in flight during reloads."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from servehelpers import copy_detector, metric_value

TOKEN = "reload-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def folder(detectors, tmp_path):
    return copy_detector(detectors["root"] / "cd", tmp_path / "served")


def _version(c) -> str:
    return c.get("/v2/models/digits", headers=AUTH).json()["versions"][0]


def test_reload_swaps_in_the_new_folder(serve, detectors, folder, tmp_path):
    from distilldetect import save_detector

    X = detectors["X"][:20]
    scores = detectors["ad"].score(X)
    events = tmp_path / "events.jsonl"
    live = serve(folder, token=TOKEN, window=20, drift_every=10, events=events)
    with live.client(headers=AUTH) as c:
        v1 = _version(c)
        r = c.post("/score", json={"instances": X.tolist()})
        assert r.json()["is_adversarial"] == (scores > detectors["threshold"]).tolist()
        save_detector(detectors["cd_other"], folder)  # atomic replace, threshold 0.5
        r = c.post("/admin/reload")
        assert r.status_code == 200, r.text
        body = r.json()
        v2 = body["model_version"]
        assert body == {
            "reloaded": True,
            "model_version": v2,
            "previous_version": v1,
            "drift_enabled": True,
        }
        assert v2 != v1 and _version(c) == v2
        r = c.post("/score", json={"instances": X.tolist()})
        assert r.json()["model_version"] == v2 and r.json()["threshold"] == 0.5
        assert r.json()["is_adversarial"] == (scores > 0.5).tolist()
        live.service.monitor.wait_idle()
        drift = c.get("/drift").json()
        text = c.get("/metrics").text
    # the window restarted with the new detector: scores of two detectors are not mixed
    assert drift["model_version"] == v2 and drift["n_window"] == 20 and drift["n_seen"] == 40
    assert metric_value(text, "distilldetect_reloads_total", result="ok") == 1
    assert metric_value(text, "distilldetect_model_info", model_version=v2) == 1
    assert metric_value(text, "distilldetect_model_info", model_version=v1) == 0
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds == ["start", "drift", "drift", "reload", "drift", "drift"]


def _corrupt_weights(folder):
    path = next(folder.rglob("distilled_model.safetensors"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _hostile_config(folder):
    config = folder / "config.json"
    data = json.loads(config.read_text())
    data["files"][0]["file"] = "../../../../etc/passwd"
    config.write_text(json.dumps(data))


def _deep_json(folder):
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)


def _no_threshold(folder, detectors):
    from distilldetect import ModelDistillation, save_detector

    ad = detectors["ad"]
    bare = ModelDistillation(distilled_model=ad.distilled_model, model=ad.model)
    bare.input_shape = ad.input_shape
    shutil.rmtree(folder)
    save_detector(bare, folder)


BAD_FOLDERS = {
    "corrupt weights": lambda folder, d: _corrupt_weights(folder),
    "path traversal": lambda folder, d: _hostile_config(folder),
    "deep JSON": lambda folder, d: _deep_json(folder),
    "not JSON": lambda folder, d: (folder / "config.json").write_bytes(b"\x00\xff garbage"),
    "missing": lambda folder, d: shutil.rmtree(folder),
    "no threshold": _no_threshold,
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_folder_is_refused_and_old_detector_keeps_serving(serve, detectors, folder, case):
    X = detectors["X"][:5]
    live = serve(folder, token=TOKEN)
    with live.client(headers=AUTH) as c:
        v1 = _version(c)
        BAD_FOLDERS[case](folder, detectors)
        r = c.post("/admin/reload")
        assert r.status_code == 409, (case, r.text)
        assert v1 in r.json()["error"] and r.json()["field"] == "detector folder"
        r = c.post("/score", json={"instances": X.tolist()})
        assert r.status_code == 200 and r.json()["model_version"] == v1
        np.testing.assert_allclose(r.json()["instance_score"], detectors["ad"].score(X))
        assert _version(c) == v1
        assert c.get("/v2/health/ready").json() == {"ready": True}
        text = c.get("/metrics").text
    assert metric_value(text, "distilldetect_reloads_total", result="refused") == 1


def test_requests_in_flight_during_reloads_use_one_detector_each(serve, detectors, folder):
    """Concurrent scoring while the folder flips between two thresholds and is reloaded:
    every answer is consistent with the one version it names."""
    from distilldetect import save_detector
    from distilldetect.saving import detector_parts

    X = detectors["X"]
    offline = detectors["ad"].score(X[:40])
    live = serve(folder, token=TOKEN)
    with live.client(headers=AUTH) as c:
        v1 = _version(c)
    thresholds = {v1: detectors["threshold"]}
    answers: list[dict] = []
    errors: list[str] = []

    done = threading.Event()

    def client(k: int) -> None:
        with live.client(headers=AUTH) as c:
            for i in range(300):  # bounded; stops once the reloads are over
                if done.is_set() and i >= 5:
                    break
                rows = slice((k * 7 + i) % 36, (k * 7 + i) % 36 + 4)
                r = c.post("/score", json={"instances": X[rows].tolist()})
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                answers.append({"rows": rows, **r.json()})

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        with live.client(headers=AUTH) as c:
            for i in range(4):
                target = detectors["cd_other"] if i % 2 == 0 else detectors["cd"]
                save_detector(target, folder)
                r = c.post("/admin/reload")
                assert r.status_code == 200, r.text
                thresholds[r.json()["model_version"]] = detector_parts(target)[0].threshold
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors
    assert len(answers) >= 20
    assert set(thresholds.values()) == {detectors["threshold"], 0.5}
    assert len({a["model_version"] for a in answers}) >= 2  # answers came from both sides
    for a in answers:
        threshold = thresholds[a["model_version"]]
        assert a["threshold"] == threshold
        np.testing.assert_allclose(a["instance_score"], offline[a["rows"]], rtol=1e-6)
        assert a["is_adversarial"] == (np.asarray(a["instance_score"]) > threshold).tolist()


def test_factory_returning_the_served_module_is_refused(detectors):
    from distilldetect.serve.detector import load_folder

    ad = detectors["ad"]
    with pytest.raises(ValueError, match="new module on each call"):
        load_folder(detectors["root"] / "cd", model_factory=lambda: ad.model, in_use=(ad.model,))


def test_loaded_detector_is_frozen_and_a_replaced_one_is_collected(serve, detectors, folder):
    """The heap is frozen after each load (garbage collection skips the frameworks and the
    models); a detector replaced by a reload is still collected, not kept frozen forever."""
    import gc
    import weakref

    from distilldetect import save_detector

    live = serve(folder, token=TOKEN, freeze_heap=True)
    assert gc.get_freeze_count() > 0
    first = weakref.ref(live.service.detector.ad)
    with live.client(headers=AUTH) as c:
        for other in ("cd_other", "cd"):
            save_detector(detectors[other], folder)
            assert c.post("/admin/reload").status_code == 200
    assert live.service.detector.ad is not first()
    gc.collect()
    assert first() is None, "the first detector is still alive after two reloads"
    gc.unfreeze()  # leave this test process as it was
