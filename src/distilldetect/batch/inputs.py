"""Readers of batch-scoring inputs: ``.npy`` files, folders of ``.npy`` shards, Parquet.

:func:`open_input` checks an input once, on the driver, and returns an :class:`InputSpec`: a
small, picklable description (files, row counts, instance shape, columns) that knows nothing
about the detector. :func:`plan_chunks` cuts the rows into contiguous :class:`Chunk` s and
:func:`read_chunk` reads one chunk in batches of at most ``batch_size`` rows. The local engine
reads every chunk in order; the Ray engine turns each chunk into a read task.

Nothing here loads a whole input: a ``.npy`` header is parsed (as a literal), then rows are read
through a memory map of the rows of one batch only, unmapped after the copy (so resident memory
does not grow with the file; Fortran-ordered files, rare, are mapped whole and sliced), Parquet
through ``pyarrow.parquet.ParquetFile.iter_batches`` one row group at a time. Nothing is
unpickled: ``.npy`` files holding Python objects are refused from their header.

Every problem with an input raises :class:`InputError` (a ``ValueError``) that names the file,
the column or the rows, what was expected and what was found.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..base import PROBABILITY_ATOL

__all__ = [
    "InputError",
    "InputSpec",
    "NpyArray",
    "Chunk",
    "Batch",
    "open_input",
    "plan_chunks",
    "read_chunk",
    "iter_batches",
    "check_teacher_probs",
    "arrow_to_numpy",
    "require_pyarrow",
]


class InputError(ValueError):
    """A batch-scoring input is missing, unreadable or does not fit the detector."""


def require_pyarrow() -> Any:
    """Import pyarrow, or say which extra installs it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "batch scoring reads and writes Parquet with pyarrow, which is not installed: "
            "pip install 'distilldetect[batch]' (or 'distilldetect[ray]' for the Ray engine)"
        ) from err
    return pyarrow


# ------------------------------------------------------------------------------------ .npy
@dataclass(frozen=True)
class NpyFile:
    """One ``.npy`` file: where its data start and what they hold (read from the header only)."""

    path: str
    n_rows: int
    row_shape: tuple[int, ...]
    dtype: str
    offset: int
    fortran_order: bool

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * math.prod(self.row_shape))


def _npy_file(path: Path, what: str) -> NpyFile:
    """Check one ``.npy`` file from its header (parsed as a literal, never unpickled)."""
    if not path.is_file():
        raise InputError(f"{what} {path} is not a file")
    try:
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
            except ValueError:
                raise InputError(
                    f"{what} {path} is not a .npy file (no NumPy magic string)"
                ) from None
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise InputError(
                    f"{what} {path} is a .npy file of format version {version}, which holds "
                    "structured records; store a plain numeric array"
                )
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{what} {path} cannot be read as .npy: {err}") from None
    if dtype.hasobject:
        raise InputError(
            f"{what} {path} holds Python objects (dtype object); reading them would run pickle, "
            "which is refused: store numbers"
        )
    if len(shape) == 0:
        raise InputError(f"{what} {path} holds a scalar; expected instances first (n, ...)")
    if dtype.kind not in "biuf":
        raise InputError(f"{what} {path} must hold numbers (bool, int or float), got dtype {dtype}")
    info = NpyFile(
        path=str(path),
        n_rows=int(shape[0]),
        row_shape=tuple(int(s) for s in shape[1:]),
        dtype=dtype.str,
        offset=int(offset),
        fortran_order=bool(fortran and len(shape) > 1),
    )
    if size < offset + info.n_rows * info.row_bytes:
        raise InputError(
            f"{what} {path} is truncated: its header announces {info.n_rows} rows of shape "
            f"{info.row_shape} ({offset + info.n_rows * info.row_bytes} bytes), the file has {size}"
        )
    return info


@dataclass(frozen=True)
class NpyArray:
    """A virtual concatenation of ``.npy`` files along the first axis, read a row range at a time."""

    files: tuple[NpyFile, ...]
    starts: tuple[int, ...]

    @property
    def n_rows(self) -> int:
        return self.starts[-1] + self.files[-1].n_rows if self.files else 0

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.files[0].row_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.files[0].dtype)

    @classmethod
    def open(cls, path: str | os.PathLike, what: str) -> NpyArray:
        """A ``.npy`` file or a folder of ``.npy`` shards (in file-name order)."""
        p = Path(os.fspath(path))
        if not p.exists():
            raise InputError(f"{what} {p} does not exist")
        if p.is_dir():
            try:
                paths = sorted(q for q in p.iterdir() if q.suffix == ".npy")
            except OSError as err:
                raise InputError(f"{what} {p} cannot be listed: {err.strerror or err}") from None
            if not paths:
                raise InputError(f"{what} {p} is a folder without .npy files")
        else:
            paths = [p]
        files = tuple(_npy_file(q, what) for q in paths)
        first = files[0]
        for f in files[1:]:
            if f.row_shape != first.row_shape or f.dtype != first.dtype:
                raise InputError(
                    f"the shards of {what} {p} disagree: {first.path} holds rows of shape "
                    f"{first.row_shape} and dtype {np.dtype(first.dtype)}, {f.path} rows of "
                    f"shape {f.row_shape} and dtype {np.dtype(f.dtype)}"
                )
        starts = tuple(int(s) for s in np.cumsum([0] + [f.n_rows for f in files[:-1]]))
        array = cls(files, starts)
        if array.n_rows == 0:
            raise InputError(f"{what} {p} holds no rows")
        return array

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new array (only those rows are mapped, then unmapped)."""
        out = np.empty((stop - start, *self.row_shape), dtype=self.dtype)
        for f, f_start in zip(self.files, self.starts, strict=True):
            a, b = max(start, f_start), min(stop, f_start + f.n_rows)
            if a >= b:
                continue
            lo, hi = a - f_start, b - f_start
            try:
                if f.fortran_order:
                    mm = np.load(f.path, mmap_mode="r", allow_pickle=False)
                    out[a - start : b - start] = mm[lo:hi]
                else:
                    mm = np.memmap(
                        f.path,
                        dtype=self.dtype,
                        mode="r",
                        offset=f.offset + lo * f.row_bytes,
                        shape=(hi - lo, *f.row_shape),
                    )
                    out[a - start : b - start] = mm
            except (OSError, ValueError) as err:
                raise InputError(
                    f"{f.path}: rows {lo}-{hi - 1} cannot be read (was the file changed while "
                    f"it was being scored?): {err}"
                ) from None
            finally:
                mm = None  # unmap now: resident memory stays at one batch
        return out


# --------------------------------------------------------------------------------- Parquet
@dataclass(frozen=True)
class ParquetPart:
    """One Parquet file: its rows per row group."""

    path: str
    row_groups: tuple[int, ...]

    @property
    def n_rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class TensorLayout:
    """How a column holds one array per row.

    ``kind`` is ``'tensor'`` (pyarrow's fixed-shape tensor extension type), ``'fixed'`` (nested
    fixed-size lists) or ``'list'`` (nested variable-size lists, shape checked per batch).
    """

    kind: str
    shape: tuple[int | None, ...]
    value_type: str


def _layout(pa_type: Any) -> TensorLayout | None:
    """The layout of an Arrow type that holds numeric arrays, or None."""
    import pyarrow as pa

    if isinstance(pa_type, pa.FixedShapeTensorType):
        value = pa_type.value_type
        if not _numeric(value):
            return None
        perm = pa_type.permutation
        shape = tuple(int(s) for s in pa_type.shape)
        if perm and list(perm) != list(range(len(shape))):
            return TensorLayout("tensor_permuted", shape, str(value))
        return TensorLayout("tensor", shape, str(value))
    dims: list[int | None] = []
    kinds: set[str] = set()
    t = pa_type
    while True:
        if pa.types.is_fixed_size_list(t):
            dims.append(int(t.list_size))
            kinds.add("fixed")
            t = t.value_type
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            dims.append(None)
            kinds.add("list")
            t = t.value_type
        else:
            break
    if not dims or not _numeric(t):
        return None
    return TensorLayout("list" if "list" in kinds else "fixed", tuple(dims), str(t))


def _numeric(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def arrow_to_numpy(
    column: Any, layout: TensorLayout, shape: tuple[int, ...], name: str, first_row: int
) -> np.ndarray:
    """Convert an Arrow column holding one array of ``shape`` per row to ``(n, *shape)`` numpy.

    Nulls, and rows of another shape, raise :class:`InputError` naming the column and the row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    last = first_row + n - 1
    if arr.null_count:
        bad = int(np.flatnonzero(np.asarray(arr.is_null()))[0])
        raise InputError(f"column {name!r}: row {first_row + bad} is null")
    if layout.kind == "tensor":
        values = arr.storage.flatten()
    else:
        values = arr
        for level, dim in enumerate(shape):
            if values.null_count:
                raise InputError(f"column {name!r}: rows {first_row}-{last} hold null arrays")
            if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
                lengths = np.asarray(pc.list_value_length(values))
                wrong = np.flatnonzero(lengths != dim)
                if wrong.size:
                    row = first_row + int(wrong[0]) // max(1, math.prod(shape[:level]))
                    raise InputError(
                        f"column {name!r}: row {row} has {int(lengths[wrong[0]])} values at "
                        f"nesting level {level + 1}, expected {dim} (instances of shape {shape})"
                    )
            values = values.flatten()
    if values.null_count:
        raise InputError(f"column {name!r}: rows {first_row}-{last} hold null values")
    flat = values.to_numpy(zero_copy_only=False)
    expected = n * math.prod(shape)
    if flat.size != expected:
        raise InputError(
            f"column {name!r}: rows {first_row}-{last} hold {flat.size} values, expected "
            f"{expected} for instances of shape {shape}"
        )
    return flat.reshape((n, *shape))


def _parquet_parts(path: Path, what: str) -> tuple[tuple[ParquetPart, ...], Any]:
    """The Parquet files of ``path`` (a file or a folder of ``*.parquet``) and their schema."""
    import pyarrow.parquet as pq

    if path.is_dir():
        try:
            paths = sorted(q for q in path.iterdir() if q.suffix == ".parquet")
        except OSError as err:
            raise InputError(f"{what} {path} cannot be listed: {err.strerror or err}") from None
    else:
        paths = [path]
    parts = []
    schema = None
    for q in paths:
        try:
            f = pq.ParquetFile(q)
        except OSError as err:
            raise InputError(f"{what} {q} is not a readable Parquet file: {err}") from None
        except Exception as err:  # pyarrow raises ArrowInvalid (a ValueError) and others
            raise InputError(f"{what} {q} is not a readable Parquet file: {err}") from None
        with f:
            meta = f.metadata
            groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
            file_schema = f.schema_arrow
        if schema is None:
            schema = file_schema
        elif not file_schema.equals(schema, check_metadata=False):
            raise InputError(
                f"the Parquet files of {what} {path} have different schemas: {paths[0].name} "
                f"has {schema}, {q.name} has {file_schema}"
            )
        parts.append(ParquetPart(str(q), groups))
    return tuple(parts), schema


# -------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class InputSpec:
    """A checked input: what to read and how (small and picklable, sent to Ray read tasks).

    Attributes
    ----------
    path
        The input as given.
    kind
        ``'npy'`` (a file or a folder of shards) or ``'parquet'`` (a file or a folder of files).
    n_rows
        Number of instances.
    instance_shape
        Shape of one instance.
    dtype
        Numpy dtype of the instances as read.
    instances
        The ``.npy`` rows (``kind='npy'``).
    parts
        The Parquet files (``kind='parquet'``).
    instances_column, id_column, teacher_probs_column
        Parquet column names (None where unused).
    teacher_probs
        Logged teacher probabilities of ``.npy`` inputs: a ``.npy`` file or folder with one row
        per instance.
    n_classes
        Width of the logged teacher probabilities, or None.
    """

    path: str
    kind: str
    n_rows: int
    instance_shape: tuple[int, ...]
    dtype: str
    instances: NpyArray | None = None
    parts: tuple[ParquetPart, ...] = ()
    instances_column: str | None = None
    instances_layout: TensorLayout | None = None
    id_column: str | None = None
    id_type: Any = None
    teacher_probs_column: str | None = None
    teacher_probs_layout: TensorLayout | None = None
    teacher_probs: NpyArray | None = None
    n_classes: int | None = None

    @property
    def row_bytes(self) -> int:
        """Bytes of one instance as read."""
        return int(np.dtype(self.dtype).itemsize * math.prod(self.instance_shape))

    @property
    def files(self) -> list[str]:
        """Every file that is read."""
        if self.kind == "npy":
            assert self.instances is not None
            out = [f.path for f in self.instances.files]
            if self.teacher_probs is not None:
                out += [f.path for f in self.teacher_probs.files]
            return out
        return [p.path for p in self.parts]


def open_input(
    path: str | os.PathLike,
    *,
    instances_column: str | None = None,
    id_column: str | None = None,
    teacher_probs: str | os.PathLike | None = None,
) -> InputSpec:
    """Check an input and describe it.

    Parameters
    ----------
    path
        A ``.npy`` file, a folder of ``.npy`` shards (read in file-name order), a Parquet file,
        or a folder of Parquet files.
    instances_column
        Parquet: the column of instances (nested fixed-size lists, variable-size lists, or a
        fixed-shape tensor column). Default: the only such column that is not named by
        ``teacher_probs``.
    id_column
        Parquet: a column of row identifiers copied into the output.
    teacher_probs
        Logged teacher probabilities: for Parquet the name of a column of ``(k,)`` lists, for
        ``.npy`` inputs a ``.npy`` file or folder of shards of shape ``(n, k)``.

    Returns
    -------
    InputSpec

    Raises
    ------
    InputError
        Missing, unreadable or empty input, object dtype, missing or ambiguous columns.

    Examples
    --------
    >>> spec = open_input("traffic/2024-05.parquet", teacher_probs="probs")  # doctest: +SKIP
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"input must be a path, got {type(path).__name__}")
    p = Path(os.fspath(path))
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if not os.access(p, os.R_OK):
        raise InputError(f"input {p} is not readable (permission denied)")
    kind = _input_kind(p)
    if kind == "npy":
        for name, value in (("instances_column", instances_column), ("id_column", id_column)):
            if value is not None:
                raise InputError(
                    f"{name}={value!r} applies to Parquet inputs; {p} is .npy (row ids are the "
                    "row positions)"
                )
        instances = NpyArray.open(p, "input")
        spec = InputSpec(
            path=str(p),
            kind="npy",
            n_rows=instances.n_rows,
            instance_shape=instances.row_shape,
            dtype=instances.dtype.str,
            instances=instances,
        )
        if teacher_probs is not None:
            if not isinstance(teacher_probs, (str, os.PathLike)):
                raise TypeError(
                    f"teacher_probs must be a path for .npy inputs, got {type(teacher_probs)}"
                )
            probs = NpyArray.open(teacher_probs, "teacher_probs")
            if len(probs.row_shape) != 1 or probs.row_shape[0] < 2:
                raise InputError(
                    f"teacher_probs {teacher_probs} must have shape (n, k) with k >= 2 classes, "
                    f"got rows of shape {probs.row_shape}"
                )
            if probs.dtype.kind != "f":
                raise InputError(
                    f"teacher_probs {teacher_probs} must hold floating-point probabilities, got "
                    f"dtype {probs.dtype}"
                )
            if probs.n_rows != instances.n_rows:
                raise InputError(
                    f"teacher_probs {teacher_probs} has {probs.n_rows} rows but input {p} has "
                    f"{instances.n_rows}: one row of probabilities per instance is needed"
                )
            spec = _replace(spec, teacher_probs=probs, n_classes=probs.row_shape[0])
        return spec
    return _open_parquet(p, instances_column, id_column, teacher_probs)


def _replace(spec: InputSpec, **changes: Any) -> InputSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)


def _input_kind(p: Path) -> str:
    if p.is_dir():
        try:
            suffixes = {q.suffix for q in p.iterdir() if q.is_file()}
        except OSError as err:
            raise InputError(f"input {p} cannot be listed: {err.strerror or err}") from None
        has_npy, has_parquet = ".npy" in suffixes, ".parquet" in suffixes
        if has_npy and has_parquet:
            raise InputError(
                f"input folder {p} holds both .npy and .parquet files; give one kind of shards"
            )
        if not (has_npy or has_parquet):
            raise InputError(f"input folder {p} holds no .npy or .parquet files")
        return "npy" if has_npy else "parquet"
    if p.suffix == ".npy":
        return "npy"
    if p.suffix in (".parquet", ".pq"):
        return "parquet"
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError as err:
        raise InputError(f"input {p} cannot be read: {err.strerror or err}") from None
    if head == b"\x93NUMPY":
        return "npy"
    if head[:4] == b"PAR1":
        return "parquet"
    raise InputError(
        f"input {p} is neither a .npy file, a Parquet file, nor a folder of .npy or .parquet files"
    )


def _open_parquet(
    p: Path, instances_column: str | None, id_column: str | None, teacher_probs: Any
) -> InputSpec:
    require_pyarrow()
    for name, value in (
        ("instances_column", instances_column),
        ("id_column", id_column),
        ("teacher_probs", teacher_probs),
    ):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a column name (str) for Parquet inputs, got {value!r}")
    parts, schema = _parquet_parts(p, "input")
    names = list(schema.names)
    for arg, column in (
        ("instances_column", instances_column),
        ("id_column", id_column),
        ("teacher_probs", teacher_probs),
    ):
        if column is not None and column not in names:
            raise InputError(f"input {p} has no column {column!r} ({arg}); its columns are {names}")
    used = {c for c in (id_column, teacher_probs) if c is not None}
    if instances_column is None:
        candidates = [
            n for n in names if n not in used and _layout(schema.field(n).type) is not None
        ]
        if len(candidates) != 1:
            what = "no column" if not candidates else f"{len(candidates)} columns {candidates}"
            raise InputError(
                f"input {p} has {what} of numeric arrays that could hold the instances; name "
                f"it with instances_column (--instances-column); columns: {names}"
            )
        instances_column = candidates[0]
    if instances_column in used:
        raise InputError(
            f"instances_column {instances_column!r} is also the id or teacher-probs column"
        )
    layout = _layout(schema.field(instances_column).type)
    if layout is None:
        raise InputError(
            f"column {instances_column!r} of {p} has type {schema.field(instances_column).type}; "
            "expected one numeric array per row: nested fixed-size lists, lists, or a "
            "fixed_shape_tensor column"
        )
    n_rows = sum(part.n_rows for part in parts)
    if n_rows == 0:
        raise InputError(f"input {p} holds no rows")
    if layout.kind == "tensor_permuted":
        raise InputError(
            f"column {instances_column!r} of {p} is a fixed_shape_tensor with a permutation "
            f"({schema.field(instances_column).type}); store row-major tensors (no permutation)"
        )
    shape = layout.shape
    if any(d is None for d in shape):
        shape = _first_row_shape(parts, instances_column, layout)
    import pyarrow as pa

    value_dtype = np.dtype(pa.type_for_alias(layout.value_type).to_pandas_dtype())
    spec = InputSpec(
        path=str(p),
        kind="parquet",
        n_rows=n_rows,
        instance_shape=tuple(int(d) for d in shape if d is not None),
        dtype=value_dtype.str,
        parts=parts,
        instances_column=instances_column,
        instances_layout=layout,
        id_column=id_column,
        id_type=None if id_column is None else schema.field(id_column).type,
    )
    if teacher_probs is not None:
        tl = _layout(schema.field(teacher_probs).type)
        if (
            tl is None
            or len(tl.shape) != 1
            or not pa.types.is_floating(pa.type_for_alias(tl.value_type))
        ):
            raise InputError(
                f"teacher_probs column {teacher_probs!r} of {p} has type "
                f"{schema.field(teacher_probs).type}; expected one list of k floating-point "
                "probabilities per row"
            )
        k = tl.shape[0]
        if k is None:
            k = _first_row_shape(parts, teacher_probs, tl)[0]
        if k < 2:
            raise InputError(
                f"teacher_probs column {teacher_probs!r} has {k} value per row; probabilities "
                "of k >= 2 classes are needed"
            )
        spec = _replace(
            spec, teacher_probs_column=teacher_probs, teacher_probs_layout=tl, n_classes=int(k)
        )
    return spec


def _first_row_shape(
    parts: Sequence[ParquetPart], column: str, layout: TensorLayout
) -> tuple[int, ...]:
    """The shape of the first row of a variable-size list column (later rows are checked)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for part in parts:
        if part.n_rows == 0:
            continue
        with pq.ParquetFile(part.path) as f:
            arr = next(f.iter_batches(batch_size=1, columns=[column])).column(0).slice(0, 1)
        shape: list[int] = []
        for _ in layout.shape:
            if arr.null_count or len(arr) == 0:
                raise InputError(f"column {column!r}: row 0 is null or empty")
            shape.append(int(pc.list_value_length(arr)[0].as_py()))
            arr = arr.flatten()
        return tuple(shape)
    raise InputError(f"column {column!r} holds no rows")


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Chunk:
    """Contiguous rows ``[start, stop)`` of one file (``file`` indexes the input's files).

    For Parquet, ``row_groups`` are the file's row groups that hold exactly these rows.
    """

    start: int
    stop: int
    file: int
    row_groups: tuple[int, ...] = ()


@dataclass
class Batch:
    """At most ``batch_size`` consecutive rows: row ids ``start, start + 1, ...``."""

    start: int
    x: np.ndarray
    teacher_probs: np.ndarray | None = None
    ids: Any = None  # a pyarrow Array of the id column, or None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def row_ids(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self.x), dtype=np.int64)


def plan_chunks(spec: InputSpec, target_rows: int | None = None) -> list[Chunk]:
    """Cut the input into contiguous chunks, in row order, none crossing a file.

    ``target_rows`` None gives one chunk per file; otherwise ``.npy`` chunks have at most
    ``target_rows`` rows and Parquet chunks are runs of whole row groups of about that many rows.
    """
    chunks: list[Chunk] = []
    if spec.kind == "npy":
        assert spec.instances is not None
        for i, (f, start) in enumerate(
            zip(spec.instances.files, spec.instances.starts, strict=True)
        ):
            if f.n_rows == 0:
                continue
            step = f.n_rows if target_rows is None else max(1, int(target_rows))
            for a in range(0, f.n_rows, step):
                chunks.append(Chunk(start + a, start + min(a + step, f.n_rows), i))
        return chunks
    start = 0
    for i, part in enumerate(spec.parts):
        groups: list[int] = []
        rows = 0
        chunk_start = start
        for g, n in enumerate(part.row_groups):
            if n == 0:
                continue
            groups.append(g)
            rows += n
            if target_rows is not None and rows >= target_rows:
                chunks.append(Chunk(chunk_start, chunk_start + rows, i, tuple(groups)))
                chunk_start += rows
                groups, rows = [], 0
        if groups:
            chunks.append(Chunk(chunk_start, chunk_start + rows, i, tuple(groups)))
        start += part.n_rows
    return chunks


def read_chunk(spec: InputSpec, chunk: Chunk, batch_size: int) -> Iterator[Batch]:
    """Read one chunk in batches of at most ``batch_size`` rows."""
    if spec.kind == "npy":
        assert spec.instances is not None
        for a in range(chunk.start, chunk.stop, batch_size):
            b = min(a + batch_size, chunk.stop)
            probs = None if spec.teacher_probs is None else spec.teacher_probs.read(a, b)
            yield Batch(a, spec.instances.read(a, b), probs)
        return
    yield from _read_parquet_chunk(spec, chunk, batch_size)


def _read_parquet_chunk(spec: InputSpec, chunk: Chunk, batch_size: int) -> Iterator[Batch]:
    import pyarrow.parquet as pq

    assert spec.instances_column is not None and spec.instances_layout is not None
    columns = [spec.instances_column]
    if spec.teacher_probs_column is not None:
        columns.append(spec.teacher_probs_column)
    if spec.id_column is not None:
        columns.append(spec.id_column)
    path = spec.parts[chunk.file].path
    start = chunk.start
    try:
        with pq.ParquetFile(path) as f:
            for rb in f.iter_batches(
                batch_size=batch_size, row_groups=list(chunk.row_groups), columns=columns
            ):
                n = rb.num_rows
                x = arrow_to_numpy(
                    rb.column(spec.instances_column),
                    spec.instances_layout,
                    spec.instance_shape,
                    spec.instances_column,
                    start,
                )
                probs = None
                if spec.teacher_probs_column is not None:
                    assert spec.teacher_probs_layout is not None and spec.n_classes is not None
                    probs = arrow_to_numpy(
                        rb.column(spec.teacher_probs_column),
                        spec.teacher_probs_layout,
                        (spec.n_classes,),
                        spec.teacher_probs_column,
                        start,
                    )
                ids = None if spec.id_column is None else rb.column(spec.id_column)
                yield Batch(start, x, probs, ids)
                start += n
    except InputError:
        raise
    except OSError as err:
        raise InputError(f"{path} cannot be read: {err}") from None
    if start != chunk.stop:
        raise InputError(
            f"{path}: read {start - chunk.start} rows where its metadata announced "
            f"{chunk.stop - chunk.start} (was the file changed while it was being scored?)"
        )


def iter_batches(spec: InputSpec, batch_size: int) -> Iterator[Batch]:
    """Every row of the input in order, in batches of at most ``batch_size`` rows."""
    for chunk in plan_chunks(spec):
        yield from read_chunk(spec, chunk, batch_size)


def check_teacher_probs(spec: InputSpec, batch_size: int = 65536) -> None:
    """Check every row of the logged teacher probabilities (reads that column only).

    Rows must be finite, non-negative and sum to one within ``PROBABILITY_ATOL``; the first bad
    row is named.
    """
    if spec.n_classes is None:
        return
    name = (
        f"teacher_probs column {spec.teacher_probs_column!r}"
        if spec.kind == "parquet"
        else f"teacher_probs {spec.teacher_probs.files[0].path if spec.teacher_probs else ''}"
    )
    for start, probs in _iter_teacher_probs(spec, batch_size):
        bad_value = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1)
        sums = probs.sum(axis=1, dtype=np.float64)
        bad = bad_value | (np.abs(sums - 1.0) > PROBABILITY_ATOL)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{name}: row {start + i} is not a probability vector (values "
                f"{np.array2string(probs[i], precision=4, threshold=12)}, sum {sums[i]:.4g}); "
                "expected non-negative values summing to 1 (log softmax outputs, not logits)"
            )


def _iter_teacher_probs(spec: InputSpec, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    if spec.kind == "npy":
        assert spec.teacher_probs is not None
        for a in range(0, spec.n_rows, batch_size):
            yield a, spec.teacher_probs.read(a, min(a + batch_size, spec.n_rows))
        return
    import pyarrow.parquet as pq

    assert spec.teacher_probs_column is not None and spec.teacher_probs_layout is not None
    start = 0
    for part in spec.parts:
        with pq.ParquetFile(part.path) as f:
            for rb in f.iter_batches(batch_size=batch_size, columns=[spec.teacher_probs_column]):
                probs = arrow_to_numpy(
                    rb.column(0),
                    spec.teacher_probs_layout,
                    (spec.n_classes,),
                    spec.teacher_probs_column,
                    start,
                )
                yield start, probs
                start += rb.num_rows
