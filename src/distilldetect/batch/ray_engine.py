"""The Ray engine: the same scoring as the local engine, on a Ray Data pipeline.

::

    ray.data.read_datasource(RowChunks(spec))                 # contiguous row ranges, row ids
      .map_batches(Scorer, concurrency=N, batch_size=B)       # each actor loads the detector once
      .write_parquet(<staging folder beside OUTPUT>)
    driver: staging files in row order -> OUTPUT (+ drift windows) through the atomic writer

Why a datasource of our own rather than ``ray.data.read_numpy`` / ``read_parquet``: those readers
give no row positions, so the ids of the output could not be checked against the input, and
``read_numpy`` loads every file whole into one block. :class:`RowChunks` makes one read task per
contiguous row range (``.npy`` rows through a memory map of that range, Parquet by row groups),
puts the row id of every row into the block, and reuses the local engine's readers and checks.
Ordering is kept by Ray Data (``preserve_order``) and *verified* by the driver from the row ids.

Actors load the detector through :func:`~distilldetect.load_detector` from the folder (which
every node must see at the same path); models the folder cannot rebuild are named by import
paths, so no model is pickled. The drift windows are tested on the driver, in row order, with
the driver's own loaded copy of the drift detector.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .inputs import Chunk, InputError, InputSpec, plan_chunks, read_chunk

if TYPE_CHECKING:
    from .scoring import Plan, ResultSink

__all__ = ["run_ray", "check_ray", "RowChunks", "Scorer", "connect_timeout"]

logger = logging.getLogger(__name__)

#: Seconds to wait for a Ray GCS port to accept a connection.
connect_timeout: float = 5.0
#: Target bytes of instances per read task / block.
BLOCK_BYTES = 32 * 1024 * 1024
#: Ray CPUs reserved by a read or write task: none, so that they never wait for CPUs held by
#: the scoring actors (a pool as large as the cluster would otherwise starve its own input).
#: Their number is capped by ``IO_CONCURRENCY`` (reads) and Ray Data's memory backpressure.
IO_CPUS = 0
IO_CONCURRENCY = 4
_X, _P, _ID = "__instances", "__teacher_probs", "row_id"


try:
    import ray
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask
except ModuleNotFoundError as _err:  # pragma: no cover - exercised without the extra
    raise ModuleNotFoundError(
        "engine='ray' needs Ray Data, which is not installed: pip install 'distilldetect[ray]'"
    ) from _err


def _parse_address(address: str) -> tuple[str, int]:
    text = address[len("ray://") :] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"ray_address must be 'host:port' (or 'auto'), got {address!r}")
    return host.strip("[]"), int(port)


def check_ray(address: str | None) -> None:
    """Ray Data is importable and, for an address, something answers there (bounded wait)."""
    if address is None:
        return
    if ray.is_initialized():
        raise InputError(
            f"ray_address={address!r} given, but Ray is already initialised in this process; "
            "call without ray_address to use that cluster, or ray.shutdown() first"
        )
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
        if found is None:
            raise InputError(
                "ray_address='auto' but no Ray cluster started by 'ray start' was found on this "
                "machine"
            )
        address = found
    host, port = _parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=connect_timeout):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        if isinstance(err, socket.timeout):
            reason = f"no answer within {connect_timeout:g} s"
        raise InputError(
            f"no Ray cluster answers at {address} ({reason}); start one with "
            "'ray start --head' or check the address"
        ) from None


# ----------------------------------------------------------------------------- datasource
def _chunk_table(spec: InputSpec, batch: Any) -> Any:
    """A read block: row ids, the instances as flat fixed-size lists, teacher probs, ids."""
    import pyarrow as pa

    n = len(batch)
    width = int(math.prod(spec.instance_shape))
    flat = np.ascontiguousarray(batch.x).reshape(-1)
    columns = {
        _ID: pa.array(batch.row_ids),
        _X: pa.FixedSizeListArray.from_arrays(pa.array(flat), width),
    }
    if batch.teacher_probs is not None:
        probs = np.ascontiguousarray(batch.teacher_probs).reshape(-1)
        columns[_P] = pa.FixedSizeListArray.from_arrays(pa.array(probs), int(spec.n_classes))
    if spec.id_column is not None:
        columns[spec.id_column] = batch.ids
    assert all(len(c) == n for c in columns.values())
    return pa.table(columns)


def _read_rows(spec: InputSpec, chunk: Chunk, block_rows: int) -> Any:
    for batch in read_chunk(spec, chunk, block_rows):
        yield _chunk_table(spec, batch)


class RowChunks(Datasource):
    """One read task per contiguous row range of the input; every block carries ``row_id``."""

    def __init__(self, spec: InputSpec, chunks: list[Chunk], block_rows: int) -> None:
        super().__init__()
        self.spec = spec
        self.chunks = chunks
        self.block_rows = block_rows

    def _row_bytes(self) -> int:
        return self.spec.row_bytes + 8 + 8 * (self.spec.n_classes or 0)

    def estimate_inmemory_data_size(self) -> int:
        return int(self.spec.n_rows * self._row_bytes())

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[Any]:
        files = self.spec.files
        tasks = []
        for c in self.chunks:
            n = c.stop - c.start
            meta = BlockMetadata(
                num_rows=n,
                size_bytes=int(n * self._row_bytes()),
                input_files=[files[c.file]],
                exec_stats=None,
            )
            read = functools.partial(_read_rows, self.spec, c, self.block_rows)
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self) -> str:
        return "DistilldetectRows"


# --------------------------------------------------------------------------------- scorer
class Scorer:
    """The ``map_batches`` actor: loads the detector once, scores pyarrow batches.

    Constructed on each worker from plain values (a folder path and import paths), so no model
    object is ever pickled.
    """

    def __init__(
        self,
        detector_dir: str,
        model: str | None,
        distilled_model: str | None,
        threshold: float | None,
        instance_shape: tuple[int, ...],
        n_classes: int,
        batch_size: int,
        id_column: str | None,
        input_name: str,
    ) -> None:
        from .. import load_detector
        from ..saving import detector_parts
        from ._imports import resolve_model

        detector = load_detector(
            detector_dir,
            model=resolve_model(model, "model"),
            distilled_model=resolve_model(distilled_model, "distilled_model"),
        )
        self.ad, _ = detector_parts(detector)
        self.threshold = threshold
        self.shape = tuple(instance_shape)
        self.n_classes = n_classes
        self.batch_size = batch_size
        self.id_column = id_column
        self.input_name = input_name

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        from .inputs import Batch
        from .scoring import flags_of, score_batch

        n = table.num_rows
        row_ids = table.column(_ID).combine_chunks()
        if n == 0:
            columns = {_ID: row_ids}
            if self.id_column is not None:
                columns[self.id_column] = table.column(self.id_column)
            columns["instance_score"] = pa.array([], type=pa.float64())
            columns["is_adversarial"] = pa.array([], type=pa.bool_())
            return pa.table(columns)
        x = table.column(_X).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        x = x.reshape((n, *self.shape))
        probs = None
        if _P in table.column_names:
            probs = table.column(_P).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            probs = probs.reshape(n, self.n_classes)
        start = int(row_ids[0].as_py()) if n else 0
        scores = score_batch(self.ad, Batch(start, x, probs), self.batch_size, self.input_name)
        columns = {_ID: row_ids}
        if self.id_column is not None:
            columns[self.id_column] = table.column(self.id_column)
        columns["instance_score"] = pa.array(scores, type=pa.float64())
        columns["is_adversarial"] = flags_of(scores, self.threshold)
        return pa.table(columns)


# ---------------------------------------------------------------------------------- run
@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Without ``verbose``: Ray Data's console log lines and the core's error-level chatter off."""
    if verbose:
        yield
        return
    handlers = [
        h
        for h in logging.getLogger("ray.data").handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    levels = [h.level for h in handlers]
    saved_env = os.environ.get("RAY_BACKEND_LOG_LEVEL")
    os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"  # read when the driver's core worker starts
    for h in handlers:
        h.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for h, level in zip(handlers, levels, strict=True):
            h.setLevel(level)
        if saved_env is None:
            os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
        else:
            os.environ["RAY_BACKEND_LOG_LEVEL"] = saved_env


def _connect(plan: Plan) -> bool:
    """Initialise Ray for this call; True if this call must shut it down again."""
    if ray.is_initialized():
        return False
    common = {"log_to_driver": plan.verbose, "logging_level": logging.WARNING}
    if plan.ray_address is None:
        need = math.ceil(plan.workers[1] * plan.cpus_per_worker) + 1
        ray.init(
            address="local",
            num_cpus=max(os.cpu_count() or 1, need),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            **common,
        )
    else:
        try:
            ray.init(address=plan.ray_address, **common)
        except Exception as err:  # ConnectionError, AuthenticationError, RuntimeError...
            cause = err.__cause__
            detail = str(cause or err).strip().splitlines()
            raise InputError(
                f"cannot join the Ray cluster at {plan.ray_address}: "
                f"{detail[0] if detail else type(err).__name__}"
            ) from None
    cpus = ray.cluster_resources().get("CPU", 0)
    need = plan.workers[0] * plan.cpus_per_worker
    if cpus < need:
        logger.warning(
            "the Ray cluster has %g CPUs but %d workers x %g CPUs are asked for: the pipeline "
            "waits until an autoscaler adds nodes",
            cpus,
            plan.workers[0],
            plan.cpus_per_worker,
        )
    return True


def _error_in_chain(err: BaseException) -> InputError | None:
    """The InputError a Ray task raised, if that is what ``err`` wraps."""
    seen = set()
    stack: list[Any] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, InputError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    text = str(err)
    marker = "InputError: "
    if marker in text:
        line = text[text.rindex(marker) + len(marker) :].splitlines()[0]
        return InputError(line)
    return None


def run_ray(plan: Plan) -> ResultSink:
    """Score ``plan`` on Ray Data; the driver writes the ordered output."""
    with _quiet(plan.verbose):
        return _run_ray(plan)


def _run_ray(plan: Plan) -> ResultSink:
    spec = plan.spec
    started = _connect(plan)
    staging = Path(tempfile.mkdtemp(prefix=f".{plan.output.name}.ray-", dir=plan.output.parent))
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    try:
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = plan.verbose
        target = _target_rows(spec, plan)
        chunks = plan_chunks(spec, target)
        ds = ray.data.read_datasource(
            RowChunks(spec, chunks, target),
            num_cpus=IO_CPUS,
            concurrency=min(len(chunks), max(IO_CONCURRENCY, plan.workers[1])),
        )
        low, high = plan.workers
        pool = (
            ray.data.ActorPoolStrategy(size=low)
            if low == high
            else ray.data.ActorPoolStrategy(min_size=low, max_size=high)
        )
        ds = ds.map_batches(
            Scorer,
            fn_constructor_kwargs={
                "detector_dir": os.path.abspath(plan.detector_dir),
                "model": plan.model,
                "distilled_model": plan.distilled_model,
                "threshold": plan.threshold,
                "instance_shape": spec.instance_shape,
                "n_classes": plan.n_classes,
                "batch_size": plan.batch_size,
                "id_column": spec.id_column,
                "input_name": spec.path,
            },
            compute=pool,
            batch_size=plan.batch_size,
            batch_format="pyarrow",
            num_cpus=plan.cpus_per_worker,
        )
        try:
            ds.write_parquet(str(staging), ray_remote_args={"num_cpus": IO_CPUS})
        except Exception as err:
            found = _error_in_chain(err)
            if found is not None:
                raise found from None
            raise
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
            if started:
                ray.shutdown()
        return _consolidate(plan, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _target_rows(spec: InputSpec, plan: Plan) -> int:
    """Rows per read task: about BLOCK_BYTES, and enough tasks to keep every worker busy."""
    by_bytes = max(1, BLOCK_BYTES // max(1, spec.row_bytes))
    by_workers = math.ceil(spec.n_rows / (4 * plan.workers[1]))
    return max(plan.batch_size, min(by_bytes, by_workers))


def _consolidate(plan: Plan, staging: Path) -> ResultSink:
    """Read the staging files in row order (checked) into the final output and drift windows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .scoring import ResultSink

    files = sorted(staging.rglob("*.parquet"))
    ranges = []
    total = 0
    for f in files:
        ids = pq.read_table(f, columns=[_ID]).column(_ID).to_numpy()
        if len(ids) == 0:
            continue
        contiguous = bool(np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))))
        ranges.append((int(ids[0]), int(ids[-1]), len(ids), contiguous, f))
        total += len(ids)
    n = plan.spec.n_rows
    if total != n:
        raise RuntimeError(
            f"the Ray workers wrote {total} rows to {staging}, but the input has {n}: is the "
            "output folder on a filesystem that every node of the cluster shares?"
        )
    ranges.sort()
    chained = all(r[3] for r in ranges) and all(
        a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges)
    )
    chained = chained and bool(ranges) and ranges[0][0] == 0
    sink = ResultSink(plan)
    id_col = plan.spec.id_column
    try:
        if chained:
            for start, _, _, _, f in ranges:
                with pq.ParquetFile(f) as pf:
                    for rb in pf.iter_batches(batch_size=1 << 16):
                        sink.add(
                            start,
                            rb.column("instance_score").to_numpy(),
                            ids=None if id_col is None else rb.column(id_col),
                            flags=rb.column("is_adversarial"),
                        )
                        start += rb.num_rows
        else:  # not expected with preserve_order: sort the (small) result columns by row id
            logger.warning("Ray returned rows out of order; sorting %d result rows by row id", n)
            table = pq.ParquetDataset([str(r[4]) for r in ranges]).read()
            table = table.take(pc.sort_indices(table, sort_keys=[(_ID, "ascending")]))
            if not np.array_equal(table.column(_ID).to_numpy(), np.arange(n)):
                raise RuntimeError("the Ray workers returned duplicate or missing row ids")
            for rb in table.to_batches(max_chunksize=1 << 16):
                sink.add(
                    int(rb.column(_ID)[0].as_py()),
                    rb.column("instance_score").to_numpy(),
                    ids=None if id_col is None else rb.column(id_col),
                    flags=rb.column("is_adversarial"),
                )
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return sink
