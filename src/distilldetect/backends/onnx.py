"""ONNX models as black-box teachers (ONNX Runtime; the ``[onnx]`` extra).

An ONNX file is a protobuf graph of standard operators: loading it runs no code from the file.
:class:`OnnxTeacher` wraps an ``onnxruntime.InferenceSession`` as a callable from a numpy batch
to class probabilities, the form any teacher may take (distillation needs only its outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import files
from ..base import describe

__all__ = ["OnnxTeacher", "MAX_ONNX_BYTES", "save_teacher", "load_teacher"]

#: Largest ONNX file read (2 GiB, protobuf's own limit).
MAX_ONNX_BYTES: int = 2**31 - 1

_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class OnnxTeacher:
    """A classifier in an ONNX file, called on numpy batches (CPU execution provider).

    Parameters
    ----------
    path
        The ``.onnx`` file. The model must take one input (instances first) and return class
        probabilities as its first output (end the exported model with a softmax).

    Examples
    --------
    >>> teacher = OnnxTeacher("classifier.onnx")  # doctest: +SKIP
    >>> teacher(x_batch).shape  # doctest: +SKIP
    (128, 10)
    """

    def __init__(self, path: str | Path, *, data: bytes | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(
                f"an ONNX teacher needs ONNX Runtime: pip install 'distilldetect[onnx]' ({err})"
            ) from err
        self.path = Path(path)
        if data is None:
            data = files.read_limited(self.path, MAX_ONNX_BYTES, "an ONNX model")
        self.model_bytes = data  # what the session runs: saved with a detector as it is
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own error types
            raise ValueError(f"{self.path} is not a valid ONNX model: {err}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(
                f"{self.path} has {len(inputs)} inputs; a teacher takes one batch of instances"
            )
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape
        self.dtype = _TYPES.get(inputs[0].type)
        if self.dtype is None:
            raise ValueError(f"{self.path}: unsupported input type {inputs[0].type}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array, got {describe(x)}")
        if np.issubdtype(self.dtype, np.integer) and x.dtype.kind == "f":
            raise TypeError(
                f"{self.path} expects {np.dtype(self.dtype).name} inputs, got floats ({x.dtype}); "
                "they will not be silently truncated"
            )
        try:
            out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, self.dtype)})
        except Exception as err:  # onnxruntime's InvalidArgument etc.
            raise ValueError(
                f"{self.path} could not process a batch of shape {x.shape} (the model expects "
                f"{self.input_shape}): {err}"
            ) from None
        return np.asarray(out[0])

    def __repr__(self) -> str:
        return f"OnnxTeacher({str(self.path)!r})"

    def describe(self) -> dict[str, Any]:
        """The file and its input, for reports."""
        return {"path": str(self.path), "input": self.input_name, "shape": self.input_shape}


def save_teacher(teacher: OnnxTeacher, directory: Path, name: str) -> dict[str, Any]:
    """Write the ONNX graph ``teacher`` runs into ``directory`` as ``<name>.onnx``; its entry.

    Examples
    --------
    >>> entry = save_teacher(teacher, data_dir, "model")  # doctest: +SKIP
    >>> entry["files"]  # doctest: +SKIP
    ['model.onnx']
    """
    file = f"{name}.onnx"
    files.write_new(directory / file, teacher.model_bytes)
    return {"name": name, "framework": "onnx", "format": "onnx", "files": [file]}


def load_teacher(directory: Path, entry: dict[str, Any]) -> OnnxTeacher:
    """An :class:`OnnxTeacher` from a saved entry; the file is checked against its SHA-256
    (``entry['checksums']``) and the session runs the bytes that were checked."""
    (file,) = entry["files"]
    path = directory / file
    data = files.read_checked(path, entry["checksums"][file], "a saved ONNX teacher")
    return OnnxTeacher(path, data=data)
