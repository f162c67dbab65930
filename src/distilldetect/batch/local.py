"""The local engine: stream the input through the detector in this process.

One batch of at most ``batch_size`` rows is in memory at a time (plus one Parquet row group of
the input and one buffered row group of the small output), so memory stays flat as the input
grows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from .inputs import iter_batches

if TYPE_CHECKING:
    from .scoring import Plan, ResultSink

__all__ = ["run_local"]


def run_local(plan: Plan) -> ResultSink:
    """Score every row of ``plan.spec`` in order; returns the committed sink."""
    from .scoring import ResultSink, score_batch

    sink = ResultSink(plan)
    try:
        with tqdm(
            total=plan.spec.n_rows,
            unit="row",
            unit_scale=True,
            desc="scoring",
            disable=not plan.verbose,
        ) as bar:
            for batch in iter_batches(plan.spec, plan.batch_size):
                scores = score_batch(plan.ad, batch, plan.batch_size, plan.spec.path)
                sink.add(batch.start, scores, ids=batch.ids)
                bar.update(len(batch))
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return sink
