"""Request and response models of the service, and the decoding of tensors into numpy arrays.

The ``/v2`` models follow the Open Inference Protocol (the KServe / MLServer / Triton "V2"
REST protocol, ``specification/protocol/inference_rest.md`` of ``kserve/open-inference-protocol``):

* inference request ``{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype",
  "parameters"?, "data"}], "outputs"?: [{"name", "parameters"?}]}``;
* inference response ``{"model_name", "model_version"?, "id", "parameters"?, "outputs":
  [{"name", "shape", "datatype", "parameters"?, "data"}]}``;
* errors ``{"error": "<message>"}`` (here with ``field``, ``expected`` and ``got`` added).

Tensor ``data`` is row-major, flat or nested as the shape says. Every check that can fail on a
client's payload raises :class:`APIError` (a 4xx answer naming the field, what was expected and
what came); nothing a client sends reaches the model unchecked.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "APIError",
    "DATATYPES",
    "Datatype",
    "RequestInput",
    "RequestOutput",
    "InferenceRequest",
    "ResponseOutput",
    "InferenceResponse",
    "MetadataTensor",
    "MetadataModelResponse",
    "MetadataServerResponse",
    "LiveResponse",
    "ReadyResponse",
    "ModelReadyResponse",
    "ScoreRequest",
    "ScoreResponse",
    "DriftResult",
    "DriftResponse",
    "ReloadResponse",
    "ErrorResponse",
    "short",
    "BINARY_HEADER",
    "BinaryResponse",
    "split_binary",
    "decode_binary",
    "wants_binary",
    "decode_tensor",
    "check_instances",
    "plain_array",
    "check_teacher_probs",
    "OUTPUT_NAMES",
    "TEACHER_PROBS",
]

#: Tensor datatypes of the protocol (``BYTES`` is refused for this model: inputs are numbers).
DATATYPES: tuple[str, ...] = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)
Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
_INT_RANGES = {
    name: (int(np.iinfo(dt).min), int(np.iinfo(dt).max))
    for name, dt in [
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
    ]
}
_FLOATS = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}

#: Name of the optional second input: the teacher's probabilities for the instances.
TEACHER_PROBS: str = "teacher_probs"
#: Outputs of the model, in the order they are returned.
OUTPUT_NAMES: tuple[str, ...] = ("instance_score", "is_adversarial")
#: Most axes an input may declare (instances first).
MAX_AXES: int = 32

Scalar = str | int | float | bool


class APIError(Exception):
    """A client error: answered as ``status`` with ``{"error", "field", "expected", "got"}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        expected: str | None = None,
        got: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.expected = expected
        self.got = got
        self.headers = headers

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        for key in ("field", "expected", "got"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def short(value: Any, limit: int = 80) -> str:
    """A bounded description of a client's value for error messages (never the whole payload)."""
    if isinstance(value, (bytes, bytearray)):
        text = f"{len(value)} bytes"
    elif isinstance(value, list):
        text = f"a list of {len(value)} items"
    elif isinstance(value, dict):
        text = f"an object with {len(value)} keys"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------ open inference protocol
class RequestInput(_Model):
    """One input tensor of an inference request."""

    name: str = Field(max_length=256, description="'x' for the instances, or 'teacher_probs'")
    shape: list[int] = Field(
        min_length=1,
        max_length=MAX_AXES,
        description="full shape of the batch, instances first: [n, *input_shape]",
    )
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        default=None,
        description="row-major tensor contents, flat or nested; left out when the tensor is "
        "sent as binary data (parameters.binary_data_size, binary tensor data extension)",
    )


class RequestOutput(_Model):
    """An output asked for by name (all outputs are returned when none is asked for)."""

    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Model):
    """Inference request of the Open Inference Protocol."""

    id: str | None = Field(default=None, max_length=1024)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=8)
    outputs: list[RequestOutput] | None = Field(default=None, max_length=8)


class ResponseOutput(BaseModel):
    """One output tensor of an inference response."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Scalar] | None = None
    data: list[float] | list[bool]


class InferenceResponse(BaseModel):
    """Inference response of the Open Inference Protocol."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str | None = None
    id: str
    parameters: dict[str, Scalar] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a variable-size axis")


class MetadataModelResponse(BaseModel):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Scalar] | None = None


class MetadataServerResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


# ---------------------------------------------------------------------------- plain JSON
class ScoreRequest(_Model):
    """Plain scoring: a list of instances, optionally the teacher's probabilities for them."""

    instances: list[Any] = Field(min_length=1, description="instances, each of the input shape")
    teacher_probs: list[Any] | None = Field(
        default=None, description="(n, classes) probabilities of the teacher for the instances"
    )


class ScoreResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    instance_score: list[float]
    is_adversarial: list[bool]
    threshold: float
    model_version: str


class DriftResult(BaseModel):
    p_val: float
    is_drift: bool
    threshold: float
    distance: float
    n_window: int
    n_seen: int
    flagged_rate: float
    updated_at: str
    model_version: str


class DriftResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    enabled: bool
    reason: str | None = None
    p_val: float | None = None
    is_drift: bool | None = None
    n_window: int
    n_seen: int
    threshold: float | None = None
    updated_at: str | None = None
    window: int
    drift_every: int
    model_version: str
    history: list[DriftResult]


class ReloadResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    reloaded: bool
    model_version: str
    previous_version: str
    drift_enabled: bool


class ErrorResponse(BaseModel):
    error: str
    field: str | None = None
    expected: str | None = None
    got: str | None = None
    errors: list[dict[str, Any]] | None = None


# --------------------------------------------------------------- binary tensor data extension
#: Header giving the length of the JSON part of a body that carries binary tensors after it.
BINARY_HEADER: str = "inference-header-content-length"
_BINARY_DTYPES = {
    "BOOL": "u1",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


class BinaryResponse:
    """An answer of the binary tensor data extension: the JSON part, then the raw bytes."""

    __slots__ = ("header", "data")

    def __init__(self, header: dict[str, Any], data: bytes) -> None:
        self.header = header
        self.data = data

    def encode(self) -> tuple[bytes, int]:
        """The body to send and the length of its JSON part (the header's value).

        Examples
        --------
        >>> BinaryResponse({"a": 1}, b"xy").encode()
        (b'{"a": 1}xy', 8)
        """
        head = json.dumps(self.header).encode()
        return head + self.data, len(head)


def split_binary(body: bytes, header_value: str | None) -> tuple[bytes, bytes | None]:
    """The JSON part and the binary part of ``body`` (``None`` without the extension's header).

    Examples
    --------
    >>> split_binary(b'{"a": 1}xyz', "8")
    (b'{"a": 1}', b'xyz')
    >>> split_binary(b'{}', None)
    (b'{}', None)
    """
    if header_value is None:
        return body, None
    try:
        length = int(header_value)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise APIError(
            400,
            f"the Inference-Header-Content-Length header must be the byte length of the JSON "
            f"part of the body (0 to {len(body)}), got {short(header_value)}",
            field="Inference-Header-Content-Length header",
            expected=f"an integer in [0, {len(body)}]",
            got=short(header_value),
        )
    return body[:length], body[length:]


def _binary_size(tensor: RequestInput, field: str) -> int | None:
    params = tensor.parameters or {}
    if "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if type(size) is not int or size < 0:
        raise APIError(
            422,
            f"{field}.parameters.binary_data_size must be a byte count >= 0, got {short(size)}",
            field=f"{field}.parameters.binary_data_size",
            expected="an integer >= 0",
            got=short(size),
        )
    if tensor.data is not None:
        raise APIError(
            422,
            f"{field} has both data and parameters.binary_data_size; send one of them",
            field=f"{field}.data",
            expected="no data for a binary tensor",
            got="data and binary_data_size",
        )
    return size


def decode_binary(inputs: list[RequestInput], binary: bytes | None) -> dict[int, np.ndarray]:
    """Arrays of the inputs sent as binary data, by input index, checked like JSON tensors.

    The binary part holds, in the order of ``inputs``, ``binary_data_size`` bytes for each
    input that declares it: little-endian, row-major, BOOL as one byte 0 or 1.

    Raises
    ------
    APIError
        (422) for a declared size that is not a byte count, or that does not match the
        shape and datatype, a binary part longer or shorter than the sizes declared, a
        ``BYTES`` tensor, BOOL bytes other than 0 / 1, NaN or infinite floats; (400) for
        binary tensors without the extension's header.

    Examples
    --------
    >>> t = RequestInput(name="x", shape=[1, 2], datatype="FP32",
    ...                  parameters={"binary_data_size": 8})
    >>> decode_binary([t], np.array([[1.5, 2]], "<f4").tobytes())[0]
    array([[1.5, 2. ]], dtype=float32)
    """
    out: dict[int, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(inputs):
        field = f"inputs[{i}]"
        size = _binary_size(tensor, field)
        if size is None:
            continue
        if binary is None:
            raise APIError(
                400,
                f"{field} declares binary_data_size but the request has no "
                "Inference-Header-Content-Length header marking where the JSON part ends",
                field="Inference-Header-Content-Length header",
                expected="the byte length of the JSON part",
                got="no header",
            )
        datatype = tensor.datatype
        _check_numeric(datatype, field)
        _check_shape(tensor.shape, field)
        dtype = np.dtype(_BINARY_DTYPES[datatype])
        n = math.prod(tensor.shape)
        if size != n * dtype.itemsize:
            raise APIError(
                422,
                f"{field}.parameters.binary_data_size is {size} bytes, but shape "
                f"{tensor.shape} of {datatype} needs {n * dtype.itemsize}",
                field=f"{field}.parameters.binary_data_size",
                expected=f"{n * dtype.itemsize} bytes",
                got=f"{size} bytes",
            )
        if offset + size > len(binary):
            raise APIError(
                422,
                f"the binary part of the body has {len(binary)} bytes, fewer than the inputs "
                f"declare (at least {offset + size})",
                field="body",
                expected=f"at least {offset + size} bytes after the JSON part",
                got=f"{len(binary)} bytes",
            )
        arr = np.frombuffer(binary, dtype=dtype, count=n, offset=offset).reshape(tensor.shape)
        offset += size
        if datatype == "BOOL":
            if arr.size and int(arr.max()) > 1:
                raise APIError(
                    422,
                    f"{field} is BOOL, whose binary bytes must be 0 or 1, got {int(arr.max())}",
                    field=f"{field}.data",
                    expected="bytes 0 or 1",
                    got=f"a byte {int(arr.max())}",
                )
            arr = arr.astype(bool)
        elif datatype in _FLOATS:
            _check_finite(arr, field)
        out[i] = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    if binary is not None and offset != len(binary):
        raise APIError(
            422,
            f"the binary part of the body has {len(binary)} bytes, but the inputs declare "
            f"{offset} (binary_data_size of each binary input)",
            field="body",
            expected=f"{offset} bytes after the JSON part",
            got=f"{len(binary)} bytes",
        )
    return out


def wants_binary(request: InferenceRequest, output: str) -> bool:
    """Whether ``output`` is asked for as binary data (``binary_data`` on the output, or
    ``binary_data_output`` on the request).

    Examples
    --------
    >>> req = InferenceRequest.model_validate(
    ...     {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
    ...      "parameters": {"binary_data_output": True}})
    >>> wants_binary(req, "instance_score")
    True
    """
    for o in request.outputs or []:
        if o.name == output and o.parameters and "binary_data" in o.parameters:
            return o.parameters["binary_data"] is True
    return bool(request.parameters and request.parameters.get("binary_data_output") is True)


# ------------------------------------------------------------------------------- decoding
def _numeric_array(data: list[Any], field: str, datatype: str) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as err:
        raise APIError(
            422,
            f"{field} must be a flat or regularly nested list of {datatype} values, but its "
            f"nesting is ragged or it mixes lists and values ({err})",
            field=field,
            expected="a regular (flat or nested) list of values",
            got="a ragged list",
        ) from None
    kind = arr.dtype.kind
    if datatype == "BOOL":
        ok = kind == "b"
        wanted = "booleans"
    elif datatype in _FLOATS:
        ok = kind in "iuf"
        wanted = "numbers"
    else:
        ok = kind in "iu"
        wanted = "integers"
    if not ok or arr.dtype == object:
        got = {
            "b": "booleans",
            "f": "non-integer numbers",
            "U": "strings",
            "S": "strings",
            "O": "nulls, objects or out-of-range integers",
        }.get(kind, f"values of numpy kind {kind!r}")
        if kind in "iu":
            got = "integers"
        raise APIError(
            422,
            f"{field} must hold {wanted} for datatype {datatype}, got {got}",
            field=field,
            expected=f"{wanted} ({datatype})",
            got=got,
        )
    return arr


def _check_numeric(datatype: str, field: str) -> None:
    if datatype == "BYTES":
        raise APIError(
            422,
            f"{field}.datatype must be numeric (FP32, FP64, FP16, INT*, UINT* or BOOL), got BYTES",
            field=f"{field}.datatype",
            expected="a numeric datatype",
            got="BYTES",
        )


def _check_shape(shape: list[int], field: str) -> None:
    if any(s < 0 for s in shape):
        raise APIError(
            422,
            f"{field}.shape must be sizes >= 0, got {shape}",
            field=f"{field}.shape",
            expected="non-negative sizes",
            got=str(shape),
        )


def _check_finite(arr: np.ndarray, field: str) -> None:
    if not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise APIError(
            422,
            f"{field}.data must be finite, got {n_nan} NaN and {n_inf} infinite values",
            field=f"{field}.data",
            expected="finite numbers",
            got=f"{n_nan} NaN and {n_inf} infinite values",
        )


def decode_tensor(tensor: RequestInput, field: str) -> np.ndarray:
    """The tensor's data as a numpy array of its declared shape, checked against its datatype.

    Values keep the type JSON gave them (integers stay integers); the caller casts.

    Raises
    ------
    APIError
        (422) for a ``BYTES`` tensor, data that is not of the datatype (strings for numbers,
        floats for integers, out-of-range integers), a data length or nesting that does not
        match ``shape``, or NaN / infinite values.

    Examples
    --------
    >>> t = RequestInput(name="x", shape=[2, 2], datatype="FP32", data=[0.5, 1, 2, 3])
    >>> decode_tensor(t, "inputs[0]").tolist()
    [[0.5, 1.0], [2.0, 3.0]]
    """
    datatype = tensor.datatype
    shape = tensor.shape
    _check_numeric(datatype, field)
    if tensor.data is None:
        raise APIError(
            422,
            f"{field}.data is missing: send the values as data, or as binary data with "
            "parameters.binary_data_size (binary tensor data extension)",
            field=f"{field}.data",
            expected="a list of values",
            got="nothing (the field is missing)",
        )
    _check_shape(shape, field)
    size = math.prod(shape)
    arr = _numeric_array(tensor.data, f"{field}.data", datatype)
    if arr.size != size or (arr.ndim != 1 and list(arr.shape) != shape):
        plural = "" if arr.size == 1 else "s"
        got = (
            f"{arr.size} value{plural}"
            if arr.ndim == 1
            else f"nested data of shape {list(arr.shape)}"
        )
        raise APIError(
            422,
            f"{field}.data does not match {field}.shape {shape}: expected {size} values "
            f"(flat or nested as the shape), got {got}",
            field=f"{field}.data",
            expected=f"{size} values for shape {shape}",
            got=got,
        )
    if datatype in _FLOATS:
        if arr.dtype.kind == "f":
            _check_finite(arr, field)
    elif datatype != "BOOL" and arr.size:
        lo, hi = _INT_RANGES[datatype]
        amin, amax = int(arr.min()), int(arr.max())
        if amin < lo or amax > hi:
            raise APIError(
                422,
                f"{field}.data holds values outside the range of {datatype} [{lo}, {hi}]: "
                f"minimum {amin}, maximum {amax}",
                field=f"{field}.data",
                expected=f"integers in [{lo}, {hi}]",
                got=f"values in [{amin}, {amax}]",
            )
    return arr.reshape(shape)


def plain_array(data: list[Any], field: str) -> np.ndarray:
    """A regular nested list of finite numbers as a numpy array, else an APIError (422).

    Examples
    --------
    >>> plain_array([[1, 2], [3, 4]], "instances").shape
    (2, 2)
    """
    arr = _numeric_array(data, field, "FP64")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise APIError(
            422,
            f"{field} must be finite, got {n_nan} NaN and {n_inf} infinite values",
            field=field,
            expected="finite numbers",
            got=f"{n_nan} NaN and {n_inf} infinite values",
        )
    return arr


def check_instances(
    x: np.ndarray, field: str, input_shape: tuple[int, ...], max_batch: int
) -> np.ndarray:
    """``x`` as float32 ``(n, *input_shape)`` with ``1 <= n <= max_batch``, else an APIError."""
    expected = [-1, *input_shape]
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(input_shape):
        raise APIError(
            422,
            f"{field} must have shape [n, {', '.join(map(str, input_shape))}] (instances of "
            f"shape {list(input_shape)}), got shape {list(x.shape)}",
            field=field,
            expected=f"shape {expected}",
            got=f"shape {list(x.shape)}",
        )
    n = x.shape[0]
    if n == 0:
        raise APIError(
            422,
            f"{field} holds no instance (shape {list(x.shape)}); at least one is needed",
            field=field,
            expected="at least 1 instance",
            got="0 instances",
        )
    if n > max_batch:
        raise APIError(
            413,
            f"{field} holds {n} instances, more than --max-batch {max_batch}; split the request",
            field=field,
            expected=f"at most {max_batch} instances",
            got=f"{n} instances",
        )
    if x.dtype.kind == "f":
        # values beyond float32's range would become inf in the model
        big = float(np.abs(x).max())
        if big > float(np.finfo(np.float32).max):
            raise APIError(
                422,
                f"{field} holds values too large for float32 (max |x| = {big:.3g})",
                field=field,
                expected="finite float32 values",
                got=f"max |x| = {big:.3g}",
            )
    return np.ascontiguousarray(x, dtype=np.float32)


def check_teacher_probs(p: np.ndarray, field: str, n: int, n_classes: int) -> np.ndarray:
    """``p`` as float64 ``(n, n_classes)`` probabilities (rows >= 0 summing to 1), else an APIError."""
    from ..base import PROBABILITY_ATOL

    if p.shape != (n, n_classes):
        raise APIError(
            422,
            f"{field} must have shape [{n}, {n_classes}] (one row of {n_classes} class "
            f"probabilities per instance), got shape {list(p.shape)}",
            field=field,
            expected=f"shape [{n}, {n_classes}]",
            got=f"shape {list(p.shape)}",
        )
    p = np.asarray(p, dtype=np.float64)
    if not np.isfinite(p).all():
        raise APIError(
            422,
            f"{field} must be finite probabilities, got NaN or infinite values",
            field=field,
            expected="finite probabilities",
            got="NaN or infinite values",
        )
    lo = float(p.min())
    sums = p.sum(axis=1)
    if lo < 0 or bool((np.abs(sums - 1.0) > PROBABILITY_ATOL).any()):
        raise APIError(
            422,
            f"{field} are not probabilities: expected rows >= 0 summing to 1 (within "
            f"{PROBABILITY_ATOL}), got minimum {lo:.4g} and row sums in "
            f"[{float(sums.min()):.4g}, {float(sums.max()):.4g}] (logits? apply a softmax)",
            field=field,
            expected="rows >= 0 summing to 1",
            got=f"minimum {lo:.4g}, row sums in [{float(sums.min()):.4g}, {float(sums.max()):.4g}]",
        )
    return p
