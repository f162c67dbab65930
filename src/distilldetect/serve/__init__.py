"""The live monitor: ``distilldetect serve`` (FastAPI + uvicorn; ``pip install 'distilldetect[serve]'``).

A saved detector served over HTTP: Open Inference Protocol v2 endpoints (KServe, Seldon,
MLServer clients), plain JSON ``/score``, a rolling harmful-drift monitor with a durable
events log, Prometheus ``/metrics`` and a self-refreshing dashboard at ``/``. Concurrent
requests are scored together by one worker (adaptive micro-batching).

Nothing here is imported by ``import distilldetect``; FastAPI is imported when an app is made.

Examples
--------
>>> from distilldetect.serve import create_app  # doctest: +SKIP
>>> app = create_app("detectors/fashion-drift", name="fashion", token="s3cret")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """Build the service's FastAPI app; see :func:`distilldetect.serve.app.create_app`."""
    try:
        from .app import create_app as _create_app
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "distilldetect serve needs FastAPI, uvicorn, pydantic and prometheus-client: "
            f"pip install 'distilldetect[serve]' ({err})"
        ) from err

    return _create_app(*args, **kwargs)
