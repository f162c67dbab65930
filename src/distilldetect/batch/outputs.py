"""Writing the outputs of batch scoring: Parquet files that appear whole or not at all.

:class:`AtomicParquetWriter` writes to a temporary file in the output's folder, flushes and
fsyncs it, and renames it over the final name (``os.replace``) only when everything is written;
on error the temporary file is removed and an existing output is left as it was.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import InputError, require_pyarrow

__all__ = [
    "AtomicParquetWriter",
    "output_paths",
    "check_output",
    "scores_schema",
    "drift_schema",
    "ROW_ID",
    "SCORE",
    "FLAG",
]

logger = logging.getLogger(__name__)

#: Column names of the scores table.
ROW_ID, SCORE, FLAG = "row_id", "instance_score", "is_adversarial"
#: Rows buffered before a Parquet row group is written.
ROW_GROUP_ROWS = 1 << 16
#: Arrow types buffered in numpy arrays.
_FIXED = {"int64": np.int64, "double": np.float64, "bool": np.bool_}


def output_paths(output: str | os.PathLike, with_drift: bool) -> tuple[Path, Path | None]:
    """The scores file and, with drift windows, ``<output without .parquet>.drift.parquet``.

    Examples
    --------
    >>> [str(p) for p in output_paths("out/scores.parquet", True)]
    ['out/scores.parquet', 'out/scores.drift.parquet']
    """
    path = Path(os.fspath(output))
    if not with_drift:
        return path, None
    stem = path.name[: -len(".parquet")] if path.name.endswith(".parquet") else path.name
    return path, path.with_name(stem + ".drift.parquet")


def check_output(path: Path, overwrite: bool, inputs: Sequence[str], what: str = "output") -> None:
    """Refuse an output that exists (unless ``overwrite``), is a folder, is an input, or whose
    folder is missing or not writable."""
    if path.name in ("", ".", ".."):
        raise InputError(f"{what} {path} must be a file name")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"the folder of {what} {path} does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"the folder of {what} {path} is not writable: {parent}")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name such as scores.parquet")
    if path.exists() or path.is_symlink():
        resolved = path.resolve()
        for name in inputs:
            if Path(name).resolve() == resolved:
                raise InputError(f"{what} {path} is also an input file; write the scores elsewhere")
        if not overwrite:
            raise InputError(
                f"{what} {path} exists; pass --overwrite (overwrite=True) to replace it"
            )


def scores_schema(id_field: Any = None, metadata: dict[str, str] | None = None) -> Any:
    """``row_id`` int64, the id column if any, ``instance_score`` float64, ``is_adversarial``."""
    pa = require_pyarrow()
    fields = [pa.field(ROW_ID, pa.int64(), nullable=False)]
    if id_field is not None:
        fields.append(id_field)
    fields += [pa.field(SCORE, pa.float64(), nullable=False), pa.field(FLAG, pa.bool_())]
    return pa.schema(fields, metadata=metadata)


def drift_schema(metadata: dict[str, str] | None = None) -> Any:
    """One row per window: ``window_start, n, p_val, distance, is_drift``."""
    pa = require_pyarrow()
    return pa.schema(
        [
            pa.field("window_start", pa.int64(), nullable=False),
            pa.field("n", pa.int64(), nullable=False),
            pa.field("p_val", pa.float64(), nullable=False),
            pa.field("distance", pa.float64(), nullable=False),
            pa.field("is_drift", pa.bool_(), nullable=False),
        ],
        metadata=metadata,
    )


class AtomicParquetWriter:
    """A ``pyarrow.parquet.ParquetWriter`` on a temporary file renamed into place at the end.

    Use as a context manager, or call :meth:`commit` / :meth:`abort` yourself. Rows given to
    :meth:`write` are buffered into row groups of ``row_group_rows``.

    Examples
    --------
    >>> with AtomicParquetWriter("scores.parquet", schema) as w:  # doctest: +SKIP
    ...     w.write({"row_id": ids, "instance_score": s, "is_adversarial": flags})
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: Any,
        *,
        overwrite: bool = False,
        row_group_rows: int = ROW_GROUP_ROWS,
    ) -> None:
        pa = require_pyarrow()
        import pyarrow.parquet as pq

        self.path = Path(os.fspath(path))
        if (self.path.exists() or self.path.is_symlink()) and not overwrite:
            raise InputError(f"{self.path} exists; pass overwrite=True to replace it")
        self.schema = schema
        self.row_group_rows = int(row_group_rows)
        self.tmp = self.path.with_name(
            f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        )
        self._pa = pa
        # Fixed-width columns are copied into buffers allocated once: holding on to the small
        # arrays of every batch until a row group is full would fragment the heap (and grow
        # resident memory with the input); other columns are kept as Arrow arrays.
        self._fixed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._other: dict[str, list[Any]] = {}
        for f in schema:
            dtype = _FIXED.get(str(f.type))
            if dtype is not None:
                n = self.row_group_rows
                self._fixed[f.name] = (np.empty(n, dtype=dtype), np.ones(n, dtype=bool))
            else:
                self._other[f.name] = []
        self._buffered = 0
        self.n_rows = 0
        self._done = False
        self._writer = pq.ParquetWriter(str(self.tmp), schema)

    def write(self, columns: dict[str, Any]) -> None:
        """Append rows given as ``{column: numpy array or pyarrow array}``."""
        missing = [f.name for f in self.schema if columns.get(f.name) is None]
        if missing:
            raise ValueError(f"columns {missing} are missing")
        n = len(next(iter(columns.values())))
        done = 0
        while done < n:
            take = min(n - done, self.row_group_rows - self._buffered)
            for f in self.schema:
                part = columns[f.name][done : done + take]
                if f.name in self._fixed:
                    values, valid = self._fixed[f.name]
                    a, b = self._buffered, self._buffered + take
                    values[a:b], valid[a:b] = self._numpy(part, values.dtype)
                else:
                    self._other[f.name].append(self._arrow(part, f))
            self._buffered += take
            done += take
            if self._buffered == self.row_group_rows:
                self._flush()
        self.n_rows += n

    def _numpy(self, value: Any, dtype: np.dtype) -> tuple[np.ndarray, Any]:
        pa = self._pa
        if isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        if isinstance(value, pa.Array):
            if value.null_count:
                return value.fill_null(False).to_numpy(zero_copy_only=False), np.asarray(
                    value.is_valid()
                )
            return value.to_numpy(zero_copy_only=False), True
        return np.asarray(value, dtype=dtype), True

    def _arrow(self, value: Any, field: Any) -> Any:
        pa = self._pa
        if isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        if isinstance(value, pa.Array):
            return value if value.type == field.type else value.cast(field.type)
        if isinstance(value, np.ndarray) and value.dtype == object:
            return pa.array(list(value), type=field.type)
        return pa.array(value, type=field.type)

    def _flush(self) -> None:
        if not self._buffered:
            return
        pa, n = self._pa, self._buffered
        arrays = []
        for f in self.schema:
            if f.name in self._fixed:
                values, valid = self._fixed[f.name]
                mask = None if valid[:n].all() else ~valid[:n]
                arrays.append(pa.array(values[:n], type=f.type, mask=mask))
            else:
                arrays.append(pa.concat_arrays(self._other[f.name]))
                self._other[f.name] = []
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        self._writer.write_table(table, row_group_size=n)
        del table, arrays
        self._buffered = 0

    def commit(self) -> Path:
        """Finish the file, fsync it and rename it over the final name."""
        if self._done:
            raise RuntimeError(f"{self.path} is already committed or aborted")
        try:
            self._flush()
            self._writer.close()
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            self.abort()
            raise
        self._done = True
        logger.debug("wrote %s (%d rows)", self.path, self.n_rows)
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary file; the final name is not touched."""
        if self._done:
            return
        self._done = True
        try:
            self._writer.close()
        except Exception:  # the file is being thrown away
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> AtomicParquetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


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
