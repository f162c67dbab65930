"""Every endpoint and every class of bad input, against a real uvicorn server on loopback."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from servehelpers import LiveServer, metric_value, v2_request


@pytest.fixture(scope="module")
def live(detectors):
    """One server for the tests that do not change its state."""
    from distilldetect.serve import create_app

    srv = LiveServer(create_app(str(detectors["root"] / "cd"), name="digits", window=50))
    yield srv
    srv.stop()


# ---------------------------------------------------------------------- health and metadata
def test_health_and_server_metadata(live):
    with live.client() as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        meta = c.get("/v2").json()
        assert meta["name"] == "distilldetect" and meta["extensions"] == ["binary_tensor_data"]
        assert c.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}


def test_model_metadata(live, detectors):
    with live.client() as c:
        meta = c.get("/v2/models/digits").json()
        version = meta["versions"][0]
        assert meta["name"] == "digits"
        assert meta["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 8, 8]}
        assert meta["inputs"][1] == {"name": "teacher_probs", "datatype": "FP32", "shape": [-1, 10]}
        assert [o["name"] for o in meta["outputs"]] == ["instance_score", "is_adversarial"]
        assert [o["datatype"] for o in meta["outputs"]] == ["FP32", "BOOL"]
        assert meta["parameters"]["threshold"] == pytest.approx(detectors["threshold"])
        assert meta["parameters"]["drift_enabled"] is True
        same = c.get(f"/v2/models/digits/versions/{version}").json()
        assert same == meta
        assert c.get(f"/v2/models/digits/versions/{version}/ready").json()["ready"] is True


@pytest.mark.parametrize(
    "path",
    ["/v2/models/other", "/v2/models/other/ready", "/v2/models/digits/versions/0000/ready"],
)
def test_unknown_model_or_version_is_404(live, path):
    with live.client() as c:
        r = c.get(path)
    assert r.status_code == 404
    body = r.json()
    assert body["field"] in ("model_name", "model_version") and "error" in body


def test_unknown_path_and_method(live):
    with live.client() as c:
        r = c.get("/nope")
        assert r.status_code == 404 and r.json()["field"] == "path"
        r = c.get("/score")
        assert r.status_code == 405 and r.json()["field"] == "method"


# ------------------------------------------------------------------------------ inference
def test_infer_matches_offline_scores(live, detectors):
    ad, X = detectors["ad"], detectors["X"][:7]
    expected = ad.score(X)
    with live.client() as c:
        r = c.post("/v2/models/digits/infer", json=v2_request(X, id="req-1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "digits" and body["id"] == "req-1"
    assert len(body["model_version"]) == 12
    assert body["parameters"]["threshold"] == pytest.approx(ad.threshold)
    assert body["parameters"]["name"] == "ModelDistillation"
    scores, flags = body["outputs"]
    assert scores["name"] == "instance_score" and scores["datatype"] == "FP32"
    assert scores["shape"] == [7] and flags["shape"] == [7]
    np.testing.assert_allclose(scores["data"], expected.astype(np.float32), rtol=1e-5)
    assert flags["datatype"] == "BOOL"
    assert flags["data"] == (expected > ad.threshold).tolist()
    assert all(isinstance(v, bool) for v in flags["data"])


def test_infer_variants(live, detectors):
    ad, X = detectors["ad"], detectors["X"][:3]
    expected = ad.score(X)
    with live.client() as c:
        version = c.get("/v2/models/digits").json()["versions"][0]
        # nested data, a generated id, one output asked for, the versioned path
        body = {
            "inputs": [{"name": "x", "shape": [3, 8, 8], "datatype": "FP64", "data": X.tolist()}],
            "outputs": [{"name": "is_adversarial"}],
        }
        r = c.post(f"/v2/models/digits/versions/{version}/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert len(out["id"]) == 36  # UUID-shaped when the request has none
        again = c.post(f"/v2/models/digits/versions/{version}/infer", json=body).json()
        assert again["id"] != out["id"]  # and a new one for every request
        assert [o["name"] for o in out["outputs"]] == ["is_adversarial"]
        assert out["outputs"][0]["data"] == (expected > ad.threshold).tolist()
        # integer datatype
        zeros = {
            "inputs": [{"name": "x", "shape": [1, 8, 8], "datatype": "INT32", "data": [0] * 64}]
        }
        r = c.post("/v2/models/digits/infer", json=zeros)
        assert r.status_code == 200
        want = ad.score(np.zeros((1, 8, 8), np.float32))
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], want, rtol=1e-5)
        # a stale version
        r = c.post("/v2/models/digits/versions/abc/infer", json=v2_request(X))
        assert r.status_code == 404 and r.json()["field"] == "model_version"


def test_infer_with_teacher_probs(live, detectors):
    ad, X = detectors["ad"], detectors["X"][:5]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=5)
    expected = ad.score(X, teacher_probs=probs)
    with live.client() as c:
        r = c.post("/v2/models/digits/infer", json=v2_request(X, probs))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], expected, rtol=1e-5)


def test_plain_score(live, detectors):
    ad, X = detectors["ad"], detectors["X"][:4]
    probs = np.random.default_rng(1).dirichlet(np.ones(10), size=4)
    with live.client() as c:
        r = c.post("/score", json={"instances": X.tolist()})
        assert r.status_code == 200, r.text
        body = r.json()
        np.testing.assert_allclose(body["instance_score"], ad.score(X), rtol=1e-6)
        assert (
            body["is_adversarial"] == (np.asarray(body["instance_score"]) > ad.threshold).tolist()
        )
        assert body["threshold"] == pytest.approx(ad.threshold)
        r = c.post("/score", json={"instances": X.tolist(), "teacher_probs": probs.tolist()})
        assert r.status_code == 200
        np.testing.assert_allclose(
            r.json()["instance_score"], ad.score(X, teacher_probs=probs), rtol=1e-6
        )


# ------------------------------------------------------------------------------- bad input
def _x(n=1, shape=(8, 8), datatype="FP32", data=None, name="x"):
    size = n * int(np.prod(shape))
    return {
        "name": name,
        "shape": [n, *shape],
        "datatype": datatype,
        "data": [0.5] * size if data is None else data,
    }


def _tp(rows, n=1, k=10, datatype="FP32"):
    return {"name": "teacher_probs", "shape": [n, k], "datatype": datatype, "data": rows}


BAD_INFER = {
    "malformed JSON": (b'{"inputs": [', 400, "body"),
    "empty body": (b"", 400, "body"),
    "not an object": (b"[1, 2]", 422, "body"),
    "no inputs": ({}, 422, "inputs"),
    "empty inputs": ({"inputs": []}, 422, "inputs"),
    "unknown field": ({"inputs": [_x()], "extra": 1}, 422, "extra"),
    "unknown datatype": ({"inputs": [_x(datatype="FP33")]}, 422, "inputs[0].datatype"),
    "bytes datatype": ({"inputs": [_x(datatype="BYTES")]}, 422, "inputs[0].datatype"),
    "strings for FP32": ({"inputs": [_x(data=["a"] * 64)]}, 422, "inputs[0].data"),
    "nulls": ({"inputs": [_x(data=[None] * 64)]}, 422, "inputs[0].data"),
    "booleans for FP32": ({"inputs": [_x(data=[True] * 64)]}, 422, "inputs[0].data"),
    "floats for INT32": (
        {"inputs": [_x(datatype="INT32", data=[0.5] * 64)]},
        422,
        "inputs[0].data",
    ),
    "INT8 out of range": (
        {"inputs": [_x(datatype="INT8", data=[300] * 64)]},
        422,
        "inputs[0].data",
    ),
    "numbers for BOOL": ({"inputs": [_x(datatype="BOOL", data=[1] * 64)]}, 422, "inputs[0].data"),
    "too few values": ({"inputs": [_x(data=[0.5] * 63)]}, 422, "inputs[0].data"),
    "too many values": ({"inputs": [_x(data=[0.5] * 65)]}, 422, "inputs[0].data"),
    "nesting not the shape": (
        {
            "inputs": [
                {"name": "x", "shape": [1, 8, 8], "datatype": "FP32", "data": [[0.5] * 8] * 8}
            ]
        },
        422,
        "inputs[0].data",
    ),
    "ragged nesting": (
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [[1], [1, 2]]}]},
        422,
        "inputs[0].data",
    ),
    "negative size": (
        {"inputs": [{"name": "x", "shape": [-1, 8, 8], "datatype": "FP32", "data": []}]},
        422,
        "inputs[0].shape",
    ),
    "wrong instance shape": ({"inputs": [_x(shape=(8, 7))]}, 422, "inputs[0]"),
    "no instance": ({"inputs": [_x(n=0)]}, 422, "inputs[0]"),
    "beyond float32": ({"inputs": [_x(data=[1e300] * 64)]}, 422, "inputs[0]"),
    "NaN token": (
        b'{"inputs": [{"name": "x", "shape": [1, 1, 1], "datatype": "FP32", "data": [NaN]}]}',
        422,
        "inputs[0].data",
    ),
    "Infinity token": (
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [-Infinity]}]}',
        422,
        "inputs[0].data",
    ),
    "two instance inputs": ({"inputs": [_x(), _x(name="y")]}, 422, "inputs"),
    "teacher_probs only": ({"inputs": [_tp([0.1] * 10)]}, 422, "inputs"),
    "teacher_probs not probabilities": ({"inputs": [_x(), _tp([0.5] * 10)]}, 422, "inputs[1]"),
    "teacher_probs negative": (
        {"inputs": [_x(), _tp([-0.1, 1.1] + [0.0] * 8)]},
        422,
        "inputs[1]",
    ),
    "teacher_probs wrong classes": (
        {"inputs": [_x(), _tp([0.5, 0.5], k=2)]},
        422,
        "inputs[1]",
    ),
    "teacher_probs wrong rows": (
        {"inputs": [_x(), _tp([0.1] * 20, n=2)]},
        422,
        "inputs[1]",
    ),
    "teacher_probs NaN": (  # json.dumps writes NaN tokens
        {"inputs": [_x(), _tp([0.1] * 9 + [float("nan")])]},
        422,
        "inputs[1].data",
    ),
    "unknown output": ({"inputs": [_x()], "outputs": [{"name": "logits"}]}, 422, "outputs"),
    "id not a string": ({"inputs": [_x()], "id": 5}, 422, "id"),
    "no data": (
        {"inputs": [{"name": "x", "shape": [1, 8, 8], "datatype": "FP32"}]},
        422,
        "inputs[0].data",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INFER))
def test_bad_infer_requests_are_4xx_naming_the_field(live, case):
    body, status, field = BAD_INFER[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with live.client() as c:
        r = c.post(
            "/v2/models/digits/infer",
            content=content,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == status, (case, r.text)
        err = r.json()
        assert err["field"] == field, (case, err)
        assert err["error"] and "expected" in err and "got" in err
        # and the server keeps serving
        assert c.post("/v2/models/digits/infer", json={"inputs": [_x()]}).status_code == 200


# ------------------------------------------------------------- binary tensor data extension
def _binary(tensors, json_extra=None, **params):
    """Body and headers of a binary-extension request: ``tensors`` is a list of
    (name, array, datatype, raw bytes or None for the array's own)."""
    inputs, blobs = [], []
    for name, arr, datatype, raw in tensors:
        blob = arr.tobytes() if raw is None else raw
        blobs.append(blob)
        size = params.get("size", len(blob))
        inputs.append(
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": size},
            }
        )
    head = json.dumps({"inputs": inputs, **(json_extra or {})}).encode()
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }


def _split_answer(r):
    length = int(r.headers["inference-header-content-length"])
    return json.loads(r.content[:length]), r.content[length:]


def test_binary_inputs_score_as_json_ones(live, detectors):
    ad, X = detectors["ad"], detectors["X"][:6]
    probs = np.random.default_rng(2).dirichlet(np.ones(10), size=6)
    with live.client() as c:
        body, headers = _binary([("x", X.astype("<f4"), "FP32", None)])
        r = c.post("/v2/models/digits/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"  # outputs as JSON unless asked
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], ad.score(X), rtol=1e-5)
        # both inputs binary (FP64 probabilities), all outputs asked for as binary
        body, headers = _binary(
            [("x", X.astype("<f4"), "FP32", None), ("teacher_probs", probs, "FP64", None)],
            {"parameters": {"binary_data_output": True}},
        )
        r = c.post("/v2/models/digits/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        head, raw = _split_answer(r)
        scores_out, flags_out = head["outputs"]
        assert "data" not in scores_out and scores_out["parameters"]["binary_data_size"] == 24
        assert flags_out["parameters"]["binary_data_size"] == 6 and len(raw) == 30
        expected = ad.score(X, teacher_probs=probs)
        np.testing.assert_allclose(np.frombuffer(raw[:24], "<f4"), expected, rtol=1e-5)
        assert np.frombuffer(raw[24:], np.uint8).tolist() == [
            int(v) for v in expected > ad.threshold
        ]
        # x binary, teacher_probs as JSON; only one output binary
        head_json = {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(X.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": X.astype("<f4").nbytes},
                },
                {
                    "name": "teacher_probs",
                    "shape": [6, 10],
                    "datatype": "FP64",
                    "data": probs.ravel().tolist(),
                },
            ],
            "outputs": [
                {"name": "instance_score"},
                {"name": "is_adversarial", "parameters": {"binary_data": True}},
            ],
        }
        head_bytes = json.dumps(head_json).encode()
        r = c.post(
            "/v2/models/digits/infer",
            content=head_bytes + X.astype("<f4").tobytes(),
            headers={"inference-header-content-length": str(len(head_bytes))},
        )
        assert r.status_code == 200, r.text
        head, raw = _split_answer(r)
        np.testing.assert_allclose(head["outputs"][0]["data"], expected, rtol=1e-5)
        assert (
            np.frombuffer(raw, np.uint8).astype(bool).tolist() == (expected > ad.threshold).tolist()
        )


_X1 = np.full((1, 8, 8), 0.5, "<f4")
BAD_BINARY = {
    "header not a number": (*_binary([("x", _X1, "FP32", None)])[:1], "x", 400),
    "size not the shape's": (_binary([("x", _X1, "FP32", None)], size=100)[0], None, 422),
    "fewer bytes": (_binary([("x", _X1, "FP32", _X1.tobytes()[:-4])], size=256)[0], None, 422),
    "extra bytes": (_binary([("x", _X1, "FP32", _X1.tobytes() + b"\0")], size=256)[0], None, 422),
    "NaN": (_binary([("x", np.full((1, 8, 8), np.nan, "<f4"), "FP32", None)])[0], None, 422),
    "BOOL byte 2": (_binary([("x", np.full((1, 8, 8), 2, "u1"), "BOOL", None)])[0], None, 422),
    "BYTES": (_binary([("x", _X1, "BYTES", None)])[0], None, 422),
    "size a string": (_binary([("x", _X1, "FP32", None)], size="256")[0], None, 422),
}
BAD_BINARY_FIELDS = {
    "header not a number": "Inference-Header-Content-Length header",
    "size not the shape's": "inputs[0].parameters.binary_data_size",
    "fewer bytes": "body",
    "extra bytes": "body",
    "NaN": "inputs[0].data",
    "BOOL byte 2": "inputs[0].data",
    "BYTES": "inputs[0].datatype",
    "size a string": "inputs[0].parameters.binary_data_size",
}


@pytest.mark.parametrize("case", sorted(BAD_BINARY))
def test_bad_binary_requests_are_4xx_naming_the_field(live, case):
    body, header, status = BAD_BINARY[case]
    head_length = body.index(b"}]}") + 3
    headers = {"inference-header-content-length": header or str(head_length)}
    with live.client() as c:
        r = c.post("/v2/models/digits/infer", content=body, headers=headers)
        assert r.status_code == status, (case, r.text)
        assert r.json()["field"] == BAD_BINARY_FIELDS[case], (case, r.json())
        assert c.post("/v2/models/digits/infer", json={"inputs": [_x()]}).status_code == 200


def test_binary_inputs_without_the_header_or_with_data_are_refused(live):
    body, headers = _binary([("x", _X1, "FP32", None)])
    with live.client() as c:
        r = c.post(
            "/v2/models/digits/infer",
            content=body[: int(headers["inference-header-content-length"])],
        )
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "Inference-Header-Content-Length header"
        both = {"inputs": [{**_x(), "parameters": {"binary_data_size": 256}}]}
        head = json.dumps(both).encode()
        r = c.post(
            "/v2/models/digits/infer",
            content=head + _X1.tobytes(),
            headers={"inference-header-content-length": str(len(head))},
        )
        assert r.status_code == 422 and r.json()["field"] == "inputs[0].data", r.text
        r = c.post(  # a header beyond the body
            "/v2/models/digits/infer",
            content=head,
            headers={"inference-header-content-length": str(len(head) + 1)},
        )
        assert r.status_code == 400, r.text


BAD_SCORE = {
    "no instances": ({}, "instances"),
    "empty instances": ({"instances": []}, "instances"),
    "wrong shape": ({"instances": [[0.5] * 8]}, "instances"),
    "strings": ({"instances": [[["a"] * 8] * 8]}, "instances"),
    "ragged": ({"instances": [[[0.5] * 8] * 8, [[0.5] * 8] * 7]}, "instances"),
    "teacher_probs logits": (
        {"instances": [[[0.5] * 8] * 8], "teacher_probs": [[3.0] * 10]},
        "teacher_probs",
    ),
    "teacher_probs one class": (
        {"instances": [[[0.5] * 8] * 8], "teacher_probs": [[1.0]]},
        "teacher_probs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SCORE))
def test_bad_score_requests_are_422(live, case):
    body, field = BAD_SCORE[case]
    with live.client() as c:
        r = c.post("/score", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_score_nan_in_instances(live):
    body = json.dumps({"instances": [[[float("nan")] * 8] * 8]})  # Python writes NaN tokens
    assert "NaN" in body
    with live.client() as c:
        r = c.post("/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "instances"
    assert "64 NaN" in r.json()["error"]


def test_query_validation(live):
    with live.client() as c:
        r = c.get("/drift", params={"history": "many"})
        assert r.status_code == 422 and r.json()["field"] == "query.history"
        r = c.get("/drift", params={"history": 10_000})
        assert r.status_code == 422


# ----------------------------------------------------------------------------- size limits
def test_body_over_limit_is_413_before_parsing(serve, detectors):
    live = serve(detectors["root"] / "cd", max_request_mb=0.01)  # 10 485 bytes
    junk = b"{" + b"x" * 20_000  # not JSON: a parser would answer 400
    with live.client() as c:
        r = c.post("/score", content=junk, headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert r.json()["field"] == "body" and "Content-Length" in r.json()["got"]

    def chunks():  # no Content-Length: the server counts bytes as they arrive
        for _ in range(20):
            yield b"x" * 1000

    with live.client() as c:
        r = c.post("/score", content=chunks())
        assert r.status_code == 413, r.text
        assert "streamed" in r.json()["got"]
    with live.client() as c:  # a small body still works
        r = c.post("/score", json={"instances": detectors["X"][:1].tolist()})
        assert r.status_code == 200


def test_batch_over_max_batch_is_413(serve, detectors):
    live = serve(detectors["root"] / "cd", max_batch=4)
    X = detectors["X"][:5]
    with live.client() as c:
        r = c.post("/v2/models/digits/infer", json=v2_request(X))
        assert r.status_code == 413 and r.json()["field"] == "inputs[0]"
        r = c.post("/score", json={"instances": X.tolist()})
        assert r.status_code == 413 and r.json()["field"] == "instances"
        assert c.post("/score", json={"instances": X[:4].tolist()}).status_code == 200


# ---------------------------------------------------------------------------------- auth
def test_token_auth(serve, detectors):
    import base64

    token = "t0ken-" + "x" * 26
    live = serve(detectors["root"] / "cd", token=token)
    good = {"Authorization": f"Bearer {token}"}
    X = detectors["X"][:2]
    with live.client() as c:
        assert c.get("/v2/health/live").status_code == 200  # health stays open
        assert c.get("/v2/health/ready").status_code == 200
        for method, path in [
            ("GET", "/v2/models/digits"),
            ("GET", "/metrics"),
            ("GET", "/drift"),
            ("GET", "/"),
            ("POST", "/score"),
            ("POST", "/admin/reload"),
            ("GET", "/openapi.json"),
            ("GET", "/v2"),
        ]:
            r = c.request(method, path)
            assert r.status_code == 401, path
            assert r.json()["field"] == "Authorization header"
            assert "www-authenticate" in r.headers
        r = c.get("/drift", headers={"Authorization": f"Bearer {token}x"})
        assert r.status_code == 401 and r.json()["got"] == "a wrong token"
        r = c.get("/drift", headers={"Authorization": token})  # no scheme
        assert r.status_code == 401
        r = c.post("/score", json={"instances": X.tolist()}, headers=good)
        assert r.status_code == 200
        r = c.post("/v2/models/digits/infer", json=v2_request(X), headers=good)
        assert r.status_code == 200
        basic = base64.b64encode(f"anyone:{token}".encode()).decode()
        r = c.get("/", headers={"Authorization": f"Basic {basic}"})
        assert r.status_code == 200 and "<svg" in r.text
        assert c.get("/").headers["www-authenticate"].startswith("Basic")
        assert c.get("/metrics", headers=good).status_code == 200


def test_unauthenticated_startup_warns(serve, detectors, caplog):
    with caplog.at_level(logging.WARNING, logger="distilldetect.serve"):
        serve(detectors["root"] / "cd")
    assert any("UNAUTHENTICATED" in r.getMessage() for r in caplog.records)


def test_reload_refused_without_a_token(live):
    with live.client() as c:
        r = c.post("/admin/reload")
    assert r.status_code == 403 and "--token-file" in r.json()["error"]


# ------------------------------------------------------------------------------- metrics
def test_metrics_count_requests_and_scores(serve, detectors):
    live = serve(detectors["root"] / "cd", window=50, drift_every=20)
    X = detectors["X"]
    with live.client() as c:
        for i in range(6):
            assert c.post("/score", json={"instances": X[i : i + 3].tolist()}).status_code == 200
        for _ in range(2):
            assert c.post("/score", json={"instances": []}).status_code == 422
        live.service.monitor.wait_idle()
        text = c.get("/metrics").text
    assert (
        metric_value(
            text, "distilldetect_requests_total", endpoint="/score", method="POST", status="200"
        )
        == 6
    )
    assert (
        metric_value(
            text, "distilldetect_requests_total", endpoint="/score", method="POST", status="422"
        )
        == 2
    )
    assert (
        metric_value(
            text, "distilldetect_request_duration_seconds_count", endpoint="/score", status="200"
        )
        == 6
    )
    assert metric_value(text, "distilldetect_instances_scored_total") == 18
    assert metric_value(text, "distilldetect_instance_score_count") == 18
    flagged = int(
        (
            detectors["ad"].score(np.concatenate([X[i : i + 3] for i in range(6)]))
            > detectors["threshold"]
        ).sum()
    )
    assert metric_value(text, "distilldetect_instances_flagged_total") == flagged
    assert metric_value(text, "distilldetect_drift_enabled") == 1
    assert metric_value(text, "distilldetect_model_info", model_name="digits") == 1
    assert "distilldetect_drift_p_value" in text
