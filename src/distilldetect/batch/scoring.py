"""``score_files``: score a file of instances with a saved detector, locally or on Ray.

The work is in two steps. :func:`prepare` checks everything that can be wrong with the
arguments, the input, the output and the detector — cheaply, before any long work — and returns
a :class:`Plan`. An engine (``local.run_local``, ``ray_engine.run_ray``) then scores the rows and
hands them, in row order, to a :class:`ResultSink`, which writes the scores (and the drift
windows) through atomic Parquet writers.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..base import describe
from ._imports import is_import_path, resolve_model
from .drift import DriftWindows
from .inputs import (
    InputError,
    InputSpec,
    check_teacher_probs,
    iter_batches,
    open_input,
    require_pyarrow,
)
from .outputs import (
    FLAG,
    ROW_ID,
    SCORE,
    AtomicParquetWriter,
    check_output,
    drift_schema,
    output_paths,
    scores_schema,
)

__all__ = ["score_files", "prepare", "execute", "Plan", "ScoreSummary", "ResultSink", "ENGINES"]

logger = logging.getLogger("distilldetect.batch")

#: The engines of :func:`score_files`.
ENGINES: tuple[str, ...] = ("local", "ray")
#: Default instances per forward pass (and per Ray batch).
DEFAULT_BATCH_SIZE = 256


@dataclass
class Plan:
    """Everything an engine needs, checked by :func:`prepare`."""

    detector_dir: str
    ad: Any
    cd: Any
    spec: InputSpec
    output: Path
    drift_output: Path | None
    engine: str
    batch_size: int
    threshold: float | None
    drift_window: int | None
    overwrite: bool
    verbose: bool
    n_classes: int
    workers: tuple[int, int] = (1, 1)
    cpus_per_worker: float = 1.0
    ray_address: str | None = None
    model: Any = None
    distilled_model: Any = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ScoreSummary:
    """What :func:`score_files` did.

    Attributes
    ----------
    output, drift_output
        The files written (``drift_output`` None without drift windows).
    n_rows
        Rows scored.
    n_flagged
        Rows with ``score > threshold``; None when no threshold was set.
    threshold
        The threshold used, or None.
    n_windows, n_drift
        Drift windows tested and flagged (0 without drift windows).
    drift_window, p_val
        The window size and the drift detector's significance level (None without windows).
    engine, seconds
        The engine and the wall time of the scoring (checks excluded).
    """

    output: Path
    drift_output: Path | None
    n_rows: int
    n_flagged: int | None
    threshold: float | None
    n_windows: int
    n_drift: int
    drift_window: int | None
    p_val: float | None
    engine: str
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.n_rows / self.seconds if self.seconds > 0 else math.inf

    def lines(self) -> list[str]:
        """The summary lines the command prints."""
        if self.n_flagged is None:
            flagged = "no threshold set, is_adversarial left null"
        else:
            share = self.n_flagged / self.n_rows if self.n_rows else 0.0
            flagged = (
                f"{self.n_flagged} flagged adversarial ({share:.1%}, score > {self.threshold:.6g})"
            )
        out = [
            f"scored {self.n_rows} rows with the {self.engine} engine in {self.seconds:.1f} s "
            f"({self.rows_per_s:.0f} rows/s): {flagged} -> {self.output}"
        ]
        if self.drift_output is not None:
            out.append(
                f"drift: {self.n_drift} of {self.n_windows} windows of {self.drift_window} rows "
                f"flagged (p_val {self.p_val:g}) -> {self.drift_output}"
            )
        return out


# ------------------------------------------------------------------------------- checking
def _int_arg(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _workers_arg(value: Any) -> tuple[int, int]:
    """``workers``: None (1), N (a fixed pool) or (min, max) (an autoscaling pool)."""
    if value is None:
        return (1, 1)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"workers must be N or (min, max), got {value!r}")
        low, high = (_int_arg(v, "workers") for v in value)
        if low > high:
            raise ValueError(f"workers (min, max) needs min <= max, got {tuple(value)}")
        return (low, high)
    n = _int_arg(value, "workers")
    return (n, n)


def prepare(
    detector_dir: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    engine: str = "local",
    ray_address: str | None = None,
    workers: int | tuple[int, int] | None = None,
    cpus_per_worker: float = 1.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    instances_column: str | None = None,
    id_column: str | None = None,
    teacher_probs: str | os.PathLike | None = None,
    threshold: float | None = None,
    drift_window: int | None = None,
    model: Any = None,
    distilled_model: Any = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> Plan:
    """Check the arguments, the input, the output and the detector; see :func:`score_files`.

    Raises ``ValueError`` (:class:`~distilldetect.batch.InputError` for the data),
    ``TypeError`` or ``ModuleNotFoundError`` (a missing extra), never after long work: the only
    scoring done is one instance, to check that the models accept the data.
    """
    from .. import load_detector, predict_batch
    from ..saving import detector_parts

    require_pyarrow()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    batch_size = _int_arg(batch_size, "batch_size")
    if drift_window is not None:
        drift_window = _int_arg(drift_window, "drift_window", minimum=2)
    if engine == "local":
        for name, value in (("workers", workers), ("ray_address", ray_address)):
            if value is not None:
                raise ValueError(f"{name} is for engine='ray' (--engine ray); got {value!r}")
        workers = (1, 1)
    else:
        workers = _workers_arg(workers)
        if isinstance(cpus_per_worker, bool) or not isinstance(cpus_per_worker, numbers.Real):
            raise TypeError(
                f"cpus_per_worker must be a number > 0, got {describe(cpus_per_worker)}"
            )
        if not (math.isfinite(cpus_per_worker) and cpus_per_worker > 0):
            raise ValueError(f"cpus_per_worker must be a number > 0, got {cpus_per_worker}")
        for name, value in (("model", model), ("distilled_model", distilled_model)):
            if value is not None and not is_import_path(value):
                raise TypeError(
                    f"engine='ray' needs {name} as an import path 'module:factory' (each worker "
                    f"builds its own model; nothing is pickled), got {describe(value)}"
                )
        if ray_address is not None and not isinstance(ray_address, str):
            raise TypeError(
                f"ray_address must be a string 'host:port', got {describe(ray_address)}"
            )
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
            raise TypeError(f"threshold must be a number, got {describe(threshold)}")
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        threshold = float(threshold)
    if not isinstance(detector_dir, (str, os.PathLike)):
        raise TypeError(f"detector_dir must be a path, got {describe(detector_dir)}")
    if not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a path, got {describe(output)}")

    spec = open_input(
        input, instances_column=instances_column, id_column=id_column, teacher_probs=teacher_probs
    )
    out_path, drift_path = output_paths(output, drift_window is not None)
    if Path(spec.path).is_dir() and out_path.parent.resolve() == Path(spec.path).resolve():
        raise InputError(
            f"output {out_path} is inside the input folder {spec.path}, where it would be read "
            "as a shard by the next run; write it elsewhere"
        )
    check_output(out_path, overwrite, spec.files)
    if drift_path is not None:
        check_output(drift_path, overwrite, spec.files, what="drift output")
    if spec.id_column in (ROW_ID, SCORE, FLAG):
        raise InputError(
            f"id_column {spec.id_column!r} would collide with an output column; the output "
            f"already has {ROW_ID} (the row position), {SCORE} and {FLAG}"
        )

    detector = load_detector(
        os.fspath(detector_dir),
        model=resolve_model(model, "model"),
        distilled_model=resolve_model(distilled_model, "distilled_model"),
    )
    ad, cd = detector_parts(detector)
    if drift_window is not None:
        if cd is None:
            raise ValueError(
                f"drift_window={drift_window} needs a saved drift detector, but {detector_dir} "
                "holds a ModelDistillation alone; save ad.drift_detector(x_ref) instead"
            )
        if not (cd.preprocess_at_init or cd.x_ref_preprocessed) or cd.n_features != 1:
            raise ValueError(
                f"the drift detector saved at {detector_dir} does not hold reference scores "
                "(preprocess_at_init=False or several features); build it with "
                "ad.drift_detector(x_ref)"
            )
    if ad.input_shape is not None and tuple(ad.input_shape) != spec.instance_shape:
        raise InputError(
            f"input {spec.path} holds instances of shape {spec.instance_shape}, but the detector "
            f"at {detector_dir} was fitted on instances of shape {tuple(ad.input_shape)}"
        )
    if threshold is None:
        threshold = ad.threshold
    if threshold is None:
        logger.warning(
            "the detector at %s has no threshold and none was given (--threshold): "
            "is_adversarial is written as null, scores as usual",
            detector_dir,
        )

    # One instance through the models: the data fit them, and the class counts agree.
    first = next(iter_batches(spec, 1))
    try:
        student_probs = predict_batch(first.x, ad.distilled_model, batch_size=1)
    except (ValueError, TypeError) as err:
        raise InputError(f"row 0 of {spec.path} cannot be scored: {err}") from None
    n_classes = int(np.asarray(student_probs).shape[-1])
    if spec.n_classes is not None:
        what = (
            f"column {spec.teacher_probs_column!r}"
            if spec.kind == "parquet"
            else str(teacher_probs)
        )
        if spec.n_classes != n_classes:
            raise InputError(
                f"teacher_probs {what} has {spec.n_classes} probabilities per row, but the "
                f"detector's models predict {n_classes} classes"
            )
        check_teacher_probs(spec)  # every row, reading that column only
    try:
        ad.score(first.x, batch_size=1, teacher_probs=first.teacher_probs)
    except (ValueError, TypeError) as err:
        raise InputError(f"row 0 of {spec.path} cannot be scored: {err}") from None

    if engine == "ray":
        from .ray_engine import check_ray  # says which extra to install when Ray is missing

        check_ray(ray_address)

    metadata = {
        "distilldetect": json.dumps(
            {
                "version": __version__,
                "detector": os.fspath(detector_dir),
                "input": spec.path,
                "engine": engine,
                "threshold": threshold,
                "loss_type": ad.loss_type,
                "temperature": ad.temperature,
                "teacher_probs": None if teacher_probs is None else os.fspath(teacher_probs),
                "drift_window": drift_window,
            }
        )
    }
    return Plan(
        detector_dir=os.fspath(detector_dir),
        ad=ad,
        cd=cd,
        spec=spec,
        output=out_path,
        drift_output=drift_path,
        engine=engine,
        batch_size=batch_size,
        threshold=threshold,
        drift_window=drift_window,
        overwrite=bool(overwrite),
        verbose=bool(verbose),
        n_classes=n_classes,
        workers=workers,
        cpus_per_worker=float(cpus_per_worker),
        ray_address=ray_address,
        model=model,
        distilled_model=distilled_model,
        metadata=metadata,
    )


# ------------------------------------------------------------------------------- writing
def flags_of(scores: np.ndarray, threshold: float | None) -> Any:
    """``is_adversarial``: ``score > threshold``, or all null without a threshold."""
    pa = require_pyarrow()
    if threshold is None:
        return pa.nulls(len(scores), type=pa.bool_())
    return pa.array(scores > threshold, type=pa.bool_())


def score_batch(ad: Any, batch: Any, batch_size: int, input_name: str) -> np.ndarray:
    """``ad.score`` of one batch; data errors name the rows."""
    try:
        return ad.score(batch.x, batch_size=batch_size, teacher_probs=batch.teacher_probs)
    except (ValueError, TypeError) as err:
        last = batch.start + len(batch) - 1
        raise InputError(f"rows {batch.start}-{last} of {input_name}: {err}") from None


class ResultSink:
    """Receives scores in row order; writes the scores table and the drift windows.

    Both files are written to temporary names and renamed into place by :meth:`commit`;
    :meth:`abort` removes them and leaves existing outputs untouched.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        id_field = None
        if plan.spec.id_column is not None:
            pa = require_pyarrow()
            id_field = pa.field(plan.spec.id_column, plan.spec.id_type)
        self.scores = AtomicParquetWriter(
            plan.output, scores_schema(id_field, plan.metadata), overwrite=plan.overwrite
        )
        self.windows: DriftWindows | None = None
        self.drift: AtomicParquetWriter | None = None
        try:
            if plan.drift_window is not None:
                assert plan.drift_output is not None
                self.windows = DriftWindows(plan.cd, plan.drift_window)
                meta = dict(plan.metadata)
                meta["drift"] = json.dumps(
                    {
                        "window": plan.drift_window,
                        "p_val": plan.cd.p_val,
                        "alternative": plan.cd.alternative,
                        "update_x_ref": plan.cd.update_x_ref,
                    }
                )
                self.drift = AtomicParquetWriter(
                    plan.drift_output, drift_schema(meta), overwrite=plan.overwrite
                )
        except BaseException:
            self.scores.abort()
            raise
        self.n_rows = 0
        self.n_flagged = 0

    def add(self, start: int, scores: np.ndarray, ids: Any = None, flags: Any = None) -> None:
        """The scores of rows ``start, start + 1, ...`` (the next rows, in order)."""
        if start != self.n_rows:
            raise RuntimeError(
                f"rows must arrive in order: expected row {self.n_rows}, got {start}"
            )
        n = len(scores)
        if flags is None:
            flags = flags_of(scores, self.plan.threshold)
        columns = {
            ROW_ID: np.arange(start, start + n, dtype=np.int64),
            SCORE: np.asarray(scores, dtype=np.float64),
            FLAG: flags,
        }
        if self.plan.spec.id_column is not None:
            columns[self.plan.spec.id_column] = ids
        self.scores.write(columns)
        if self.plan.threshold is not None:
            self.n_flagged += int(np.count_nonzero(np.asarray(scores) > self.plan.threshold))
        self.n_rows += n
        if self.windows is not None:
            assert self.drift is not None
            for row in self.windows.add(scores):
                self._write_window(row)

    def _write_window(self, row: dict[str, Any]) -> None:
        assert self.drift is not None
        self.drift.write({k: np.array([v]) for k, v in row.items()})

    def commit(self) -> None:
        if self.n_rows != self.plan.spec.n_rows:
            raise RuntimeError(
                f"{self.n_rows} rows scored, but the input has {self.plan.spec.n_rows}"
            )
        if self.windows is not None:
            for row in self.windows.finish():
                self._write_window(row)
        try:
            if self.drift is not None:
                self.drift.commit()
            self.scores.commit()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self.scores.abort()
        if self.drift is not None:
            self.drift.abort()


def execute(plan: Plan) -> ScoreSummary:
    """Run a prepared plan with its engine and write the outputs."""
    t0 = time.perf_counter()
    if plan.engine == "local":
        from .local import run_local

        sink = run_local(plan)
    else:
        from .ray_engine import run_ray

        sink = run_ray(plan)
    seconds = time.perf_counter() - t0
    windows = sink.windows
    summary = ScoreSummary(
        output=plan.output,
        drift_output=plan.drift_output,
        n_rows=sink.n_rows,
        n_flagged=None if plan.threshold is None else sink.n_flagged,
        threshold=plan.threshold,
        n_windows=0 if windows is None else windows.n_windows,
        n_drift=0 if windows is None else windows.n_drift,
        drift_window=plan.drift_window,
        p_val=None if plan.cd is None or plan.drift_window is None else float(plan.cd.p_val),
        engine=plan.engine,
        seconds=seconds,
    )
    for line in summary.lines():
        logger.debug(line)
    return summary


def score_files(
    detector_dir: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    engine: str = "local",
    ray_address: str | None = None,
    workers: int | tuple[int, int] | None = None,
    cpus_per_worker: float = 1.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    instances_column: str | None = None,
    id_column: str | None = None,
    teacher_probs: str | os.PathLike | None = None,
    threshold: float | None = None,
    drift_window: int | None = None,
    model: Any = None,
    distilled_model: Any = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> ScoreSummary:
    """Score every instance of a file with a saved detector; write the scores as Parquet.

    Parameters
    ----------
    detector_dir
        A folder written by :func:`~distilldetect.save_detector`: a ModelDistillation, or a
        drift detector built by ``ad.drift_detector`` (needed for ``drift_window``).
    input
        A ``.npy`` file (memory-mapped, read a batch at a time), a folder of ``.npy`` shards
        (concatenated in file-name order), a Parquet file or a folder of Parquet files (one
        column of instances: nested fixed-size lists, lists, or a ``fixed_shape_tensor``).
    output
        The Parquet file to write: ``row_id`` (the row's position in the input, from 0), the
        ``id_column`` if given, ``instance_score`` (float64) and ``is_adversarial``
        (``score > threshold``; null when there is no threshold), in input order.
    engine
        ``'local'`` (this process, streaming; memory does not grow with the input) or ``'ray'``
        (Ray Data: a pool of ``workers`` actors, each loading the detector once).
    ray_address
        ``'host:port'`` of the GCS of a running Ray cluster to join (``'auto'`` finds the one
        started on this machine by ``ray start``); None starts a local cluster for the call
        (or uses the one already initialised in this process).
    workers
        Ray actors scoring in parallel: N (default 1), or ``(min, max)`` for a pool that Ray
        Data grows from ``min`` to ``max`` actors while there is work (and the cluster, with an
        autoscaler, grows nodes to host them).
    cpus_per_worker
        Ray CPUs reserved per actor (their framework uses that many threads).
    batch_size
        Instances per forward pass (and per Ray batch); scores do not depend on it.
    instances_column
        Parquet column of the instances (default: the only column of numeric arrays).
    id_column
        Parquet column of row identifiers copied to the output.
    teacher_probs
        Logged teacher probabilities: a Parquet column name, or for ``.npy`` inputs a ``.npy``
        file or folder of shape ``(n, k)``. The teacher is then not run. Every row is checked
        to be a probability vector before scoring starts.
    threshold
        Overrides the saved threshold.
    drift_window
        Test every consecutive window of this many rows with the saved drift detector and write
        ``<output without .parquet>.drift.parquet``: ``window_start, n, p_val, distance,
        is_drift``, as ``cd.predict`` on that window decides (windows in order; the last one may
        be shorter).
    model, distilled_model
        Models the folder cannot rebuild (black-box teacher, non-zoo modules): objects (local
        engine) or import paths ``'module:factory'`` (both engines).
    overwrite
        Replace existing outputs (always replaced whole: written aside, then renamed).
    verbose
        Progress bar and log lines.

    Returns
    -------
    ScoreSummary

    Raises
    ------
    InputError
        (a ``ValueError``) for a missing or unreadable input, a shape that does not match the
        detector, a missing column, an existing output, an unanswering Ray address, bad teacher
        probabilities; raised by the checks before scoring starts. Rows that cannot be scored
        (NaN instances, say) raise it during scoring, naming the rows; no output is left behind.

    Examples
    --------
    >>> summary = score_files("detectors/fmnist-drift", "traffic.npy", "scores.parquet",
    ...                       drift_window=1000)  # doctest: +SKIP
    >>> summary.n_flagged, summary.n_drift  # doctest: +SKIP
    (412, 3)
    """
    plan = prepare(
        detector_dir,
        input,
        output,
        engine=engine,
        ray_address=ray_address,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        batch_size=batch_size,
        instances_column=instances_column,
        id_column=id_column,
        teacher_probs=teacher_probs,
        threshold=threshold,
        drift_window=drift_window,
        model=model,
        distilled_model=distilled_model,
        overwrite=overwrite,
        verbose=verbose,
    )
    return execute(plan)
