"""The hand-checked request parser agrees with the pydantic models on every body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from distilldetect.serve.protocol import InferenceRequest, ScoreRequest, parse_request


def _outcome(model: type[BaseModel], body: bytes, parse) -> tuple[str, Any]:
    try:
        return "ok", parse(model, body).model_dump()
    except ValidationError as err:
        return "error", err.errors(include_url=False)


def _check(model: type[BaseModel], body: bytes) -> None:
    fast = _outcome(model, body, parse_request)
    reference = _outcome(model, body, lambda m, b: m.model_validate_json(b))
    assert repr(fast) == repr(reference), body[:300]  # repr: NaN equals NaN


VALID_INPUT = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.5, 1, -2.0]}
EDGE_BODIES: list[Any] = [
    {"inputs": [VALID_INPUT]},
    {"id": "r1", "parameters": {"a": 1}, "inputs": [VALID_INPUT], "outputs": [{"name": "y"}]},
    {"id": None, "parameters": None, "inputs": [VALID_INPUT], "outputs": None},
    {"inputs": [VALID_INPUT, {**VALID_INPUT, "name": "teacher_probs"}]},
    {"inputs": []},
    {"inputs": [VALID_INPUT] * 9},
    {"inputs": [VALID_INPUT], "outputs": [{"name": "y"}] * 9},
    {"inputs": [VALID_INPUT], "outputs": [{"nom": "y"}]},
    {"inputs": [VALID_INPUT], "outputs": [{"name": 3}]},
    {"inputs": [VALID_INPUT], "outputs": {"name": "y"}},
    {"inputs": [VALID_INPUT], "extra": 1},
    {"inputs": [VALID_INPUT], "id": 7},
    {"inputs": [VALID_INPUT], "id": "x" * 1025},
    {"inputs": [VALID_INPUT], "parameters": [1]},
    {"inputs": [{**VALID_INPUT, "shape": [1.0, 3.0]}]},  # lax ints: pydantic's call
    {"inputs": [{**VALID_INPUT, "shape": ["1", 3]}]},
    {"inputs": [{**VALID_INPUT, "shape": [True, 3]}]},
    {"inputs": [{**VALID_INPUT, "shape": []}]},
    {"inputs": [{**VALID_INPUT, "shape": [1] * 33}]},
    {"inputs": [{**VALID_INPUT, "shape": 3}]},
    {"inputs": [{**VALID_INPUT, "datatype": "FP33"}]},
    {"inputs": [{**VALID_INPUT, "datatype": "fp32"}]},
    {"inputs": [{**VALID_INPUT, "datatype": 32}]},
    {"inputs": [{**VALID_INPUT, "name": "n" * 257}]},
    {"inputs": [{**VALID_INPUT, "name": None}]},
    {"inputs": [{**VALID_INPUT, "data": "1,2,3"}]},
    {"inputs": [{**VALID_INPUT, "data": {"a": 1}}]},
    {"inputs": [{**VALID_INPUT, "parameters": {"content_type": "np"}}]},
    {"inputs": [{**VALID_INPUT, "parameters": "np"}]},
    {"inputs": [{**VALID_INPUT, "colour": "red"}]},
    {"inputs": [{k: v for k, v in VALID_INPUT.items() if k != "data"}]},
    {"inputs": [[1, 2, 3]]},
    {"instances": [[1, 2]]},
    [VALID_INPUT],
    "inputs",
    None,
]
SCORE_BODIES: list[Any] = [
    {"instances": [[0.5, 1.0]]},
    {"instances": [[0.5, 1.0]], "teacher_probs": [[0.2, 0.8]]},
    {"instances": [[0.5, 1.0]], "teacher_probs": None},
    {"instances": []},
    {"instances": "abc"},
    {"instances": [[1]], "teacher_probs": {"a": 1}},
    {"instances": [[1]], "extra": True},
    {"teacher_probs": [[1.0]]},
    [[0.5]],
]
RAW_BODIES = [b"", b"{", b"not json", b'{"inputs": [}', b"\xff\xfe", b"[]", b"1e999", b"NaN"]


@pytest.mark.parametrize("obj", EDGE_BODIES)
def test_infer_requests_parse_as_the_model_says(obj):
    _check(InferenceRequest, json.dumps(obj).encode())


@pytest.mark.parametrize("obj", SCORE_BODIES)
def test_score_requests_parse_as_the_model_says(obj):
    _check(ScoreRequest, json.dumps(obj).encode())


@pytest.mark.parametrize("body", RAW_BODIES)
def test_bodies_that_are_not_json_get_pydantics_error(body):
    for model in (InferenceRequest, ScoreRequest):
        assert _outcome(model, body, parse_request)[0] == "error"
        _check(model, body)


def test_nan_and_duplicate_keys_parse_as_the_model_says():
    _check(
        InferenceRequest,
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}',
    )
    _check(
        InferenceRequest,
        b'{"inputs": [], "inputs": [{"name": "x", "shape": [1], '
        b'"datatype": "FP32", "data": [Infinity]}]}',
    )


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
_json = st.recursive(
    _scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        "name",
        "shape",
        "datatype",
        "parameters",
        "data",
        "id",
        "inputs",
        "outputs",
        "instances",
        "teacher_probs",
        "other",
    ]
)


def _mutations(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    """``base`` with a few keys replaced, added or removed: bodies near the valid ones."""

    @st.composite
    def mutate(draw) -> Any:
        out = json.loads(json.dumps(base))
        for _ in range(draw(st.integers(0, 3))):
            target = out
            if (
                "inputs" in out
                and isinstance(out["inputs"], list)
                and out["inputs"]
                and draw(st.booleans())
                and isinstance(out["inputs"][0], dict)
            ):
                target = out["inputs"][0]
            key = draw(_keys)
            if draw(st.booleans()) and key in target:
                del target[key]
            else:
                target[key] = draw(_json)
        return out

    return mutate()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations({"id": "a", "inputs": [VALID_INPUT], "outputs": [{"name": "y"}]}))
def test_mutated_infer_requests_parse_as_the_model_says(obj):
    _check(InferenceRequest, json.dumps(obj).encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations({"instances": [[0.5, 1.0]], "teacher_probs": [[0.3, 0.7]]}))
def test_mutated_score_requests_parse_as_the_model_says(obj):
    _check(ScoreRequest, json.dumps(obj).encode())


def test_plain_bodies_skip_pydantics_validation_and_others_do_not(monkeypatch):
    calls = []
    real = InferenceRequest.model_validate_json.__func__

    def spy(cls, body, *args, **kwargs):
        calls.append(body)
        return real(cls, body, *args, **kwargs)

    monkeypatch.setattr(InferenceRequest, "model_validate_json", classmethod(spy))
    req = parse_request(InferenceRequest, json.dumps({"inputs": [VALID_INPUT]}).encode())
    assert calls == [] and req.inputs[0].data == [0.5, 1, -2.0]
    lax = json.dumps({"inputs": [{**VALID_INPUT, "shape": [1.0, 3.0]}]}).encode()
    assert parse_request(InferenceRequest, lax).inputs[0].shape == [1, 3]
    assert calls == [lax]
