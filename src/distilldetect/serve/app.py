"""The ASGI application of ``distilldetect serve``: :func:`create_app`.

Endpoints (``{name}`` is ``--name``):

==========================================  ===================================================
``GET  /v2/health/live``, ``/v2/health/ready``  liveness / readiness (never need a token)
``GET  /v2``                                server metadata (Open Inference Protocol)
``GET  /v2/models/{name}[/versions/{v}]``   model metadata: input shape, datatypes, outputs
``GET  /v2/models/{name}[/versions/{v}]/ready``  model readiness
``POST /v2/models/{name}[/versions/{v}]/infer``  inference: outputs ``instance_score`` (FP32)
                                            and ``is_adversarial`` (BOOL)
``POST /score``                             plain JSON scoring
``GET  /drift``                             the rolling harmful-drift monitor
``GET  /metrics``                           Prometheus text format
``GET  /``                                  the dashboard (HTML + SVG, refreshes itself)
``POST /admin/reload``                      hot reload of the detector folder (token required)
==========================================  ===================================================

With a token, every endpoint but ``/v2/health/*`` needs ``Authorization: Bearer <token>``
(or HTTP Basic with the token as password, for browsers), compared in constant time. Bodies
over the size limit are refused with 413 before they are parsed. Every error is a JSON body
``{"error": ..., "field": ..., "expected": ..., "got": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import functools
import gc
import hmac
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from .batcher import MicroBatcher, WorkerStopped
from .detector import LoadedDetector, finish_loading, load_folder
from .metrics import Metrics
from .monitor import DriftMonitor, EventLog
from .protocol import (
    BINARY_HEADER,
    OUTPUT_NAMES,
    TEACHER_PROBS,
    APIError,
    BinaryResponse,
    DriftResponse,
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    MetadataModelResponse,
    MetadataServerResponse,
    ModelReadyResponse,
    ReadyResponse,
    ReloadResponse,
    ScoreRequest,
    ScoreResponse,
    check_instances,
    check_teacher_probs,
    decode_binary,
    decode_tensor,
    plain_array,
    short,
    split_binary,
    wants_binary,
)

__all__ = ["create_app", "ServeConfig", "Service"]

logger = logging.getLogger("distilldetect.serve")

_OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
#: HTTP methods kept as metric labels (others are counted as "other": bounded label values).
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@dataclasses.dataclass
class ServeConfig:
    """Settings of a service (the ``distilldetect serve`` options)."""

    path: str
    name: str = "distilldetect"
    window: int = 1000
    drift_every: int = 100
    token: str | None = None
    max_request_bytes: int = 16 * 2**20
    max_batch: int = 1024
    events: str | None = None
    model_factory: Callable[[], Any] | None = None
    distilled_model_factory: Callable[[], Any] | None = None
    input_shape: tuple[int, ...] | None = None
    reference: np.ndarray | None = None
    p_val: float = 0.05
    max_wait: float = 0.002
    refresh: float = 2.0
    history: int = 500
    workers: int = 1
    freeze_heap: bool = False

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting that is out of range."""
        for key, low in (
            ("window", 2),
            ("drift_every", 1),
            ("max_batch", 1),
            ("history", 1),
            ("workers", 1),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty string without '/', got {self.name!r}")
        if not (isinstance(self.max_request_bytes, int) and self.max_request_bytes >= 1024):
            raise ValueError(f"max_request_bytes must be >= 1024, got {self.max_request_bytes!r}")
        if not (0 <= self.max_wait <= 1):
            raise ValueError(f"max_wait must be in [0, 1] seconds, got {self.max_wait!r}")
        if not (0 < self.p_val < 1):
            raise ValueError(f"p_val must be in (0, 1), got {self.p_val!r}")
        if not (0.2 <= self.refresh <= 3600):
            raise ValueError(f"refresh must be in [0.2, 3600] seconds, got {self.refresh!r}")
        if self.token is not None and (not isinstance(self.token, str) or not self.token):
            raise ValueError("token must be a non-empty string or None")


def _freeze_heap() -> None:
    """Move every object alive now (the frameworks, the detector's models) out of the garbage
    collector's reach, after one full collection (a detector replaced by a reload is collected
    there first). Requests allocate many short-lived objects; without this each periodic
    collection of the oldest generation also walks the whole loaded framework: on the ResNet-20
    detector at concurrency 64 the p99 latency was 280-330 ms without, 110-126 ms with (two
    runs each, ``benchmarks/bench_serve.py --detector cifar10``)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Service:
    """The state behind the app: detector, scoring worker, drift monitor, metrics."""

    def __init__(self, config: ServeConfig) -> None:
        config.check()
        self.config = config
        self.metrics = Metrics()
        self.started = time.time()
        self._reload_lock: asyncio.Lock | None = None
        self.detector: LoadedDetector | None = None
        self.n_scored = 0  # written by the scoring worker only
        self.n_flagged = 0
        self.n_requests = 0  # written by the event loop only
        events = EventLog(config.events) if config.events else None
        self.monitor = DriftMonitor(
            config.window,
            config.drift_every,
            events=events,
            history=config.history,
            on_result=self._on_drift,
            name=config.name,
        )
        self.batcher = MicroBatcher(
            self._current,
            max_batch=config.max_batch,
            max_wait=config.max_wait,
            workers=config.workers,
            on_scored=self._on_scored,
            on_batch=self.metrics.observe_batch,
        )
        try:
            parts = self._load_parts(in_use=())
            detector = self.batcher.call_sync(functools.partial(self._finish, parts), timeout=600)
        except BaseException:
            self.close()
            raise
        self._install(detector, "start")

    # ------------------------------------------------------------------ plumbing
    def _current(self) -> LoadedDetector:
        assert self.detector is not None
        return self.detector

    def _on_scored(self, detector: LoadedDetector, scores: np.ndarray) -> None:
        self.metrics.observe_scores(scores, detector.threshold)
        self.n_scored += len(scores)
        self.n_flagged += int((scores > detector.threshold).sum())
        self.monitor.add(detector, scores)

    def _on_drift(self, result: dict[str, Any]) -> None:
        self.metrics.observe_drift(result)
        if self.monitor.events is not None:
            self.metrics.event_errors.set(self.monitor.events.errors)

    def _load_parts(self, in_use: tuple[Any, ...]) -> dict[str, Any]:
        c = self.config
        return load_folder(
            c.path,
            model_factory=c.model_factory,
            distilled_model_factory=c.distilled_model_factory,
            input_shape=c.input_shape,
            reference=c.reference,
            in_use=in_use,
        )

    def _finish(self, parts: dict[str, Any]) -> LoadedDetector:
        return finish_loading(parts, reference=self.config.reference, p_val=self.config.p_val)

    def _install(self, detector: LoadedDetector, reason: str) -> None:
        self.detector = detector  # one reference assignment: atomic for every reader
        self.monitor.set_detector(detector, reason)
        self.metrics.set_detector(
            self.config.name, detector.version, detector.threshold, detector.drift_enabled
        )
        if self.config.freeze_heap:
            _freeze_heap()

    @property
    def ready(self) -> bool:
        return self.detector is not None and self.batcher.alive

    async def reload(self) -> dict[str, Any]:
        """Load the folder again off the request path and swap it in; refuse it on any error."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            previous = self._current()
            in_use = (previous.ad.model, previous.ad.distilled_model)
            loop = asyncio.get_running_loop()
            try:
                parts = await loop.run_in_executor(None, self._load_parts, in_use)
                detector = await self.batcher.call(functools.partial(self._finish, parts))
            except WorkerStopped:
                raise
            except Exception as err:  # a corrupt or hostile folder: keep serving the old one
                self.metrics.reloads.labels("refused").inc()
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                logger.warning("reload refused, still serving %s: %s", previous.version, first)
                raise APIError(
                    409,
                    f"reload refused; still serving version {previous.version}: {first}",
                    field="detector folder",
                    expected="a valid detector saved by save_detector",
                    got=type(err).__name__,
                ) from None
            self._install(detector, "reload")
            self.metrics.reloads.labels("ok").inc()
            logger.info(
                "reloaded %s: version %s -> %s",
                self.config.path,
                previous.version,
                detector.version,
            )
            return {
                "reloaded": True,
                "model_version": detector.version,
                "previous_version": previous.version,
                "drift_enabled": detector.drift_enabled,
            }

    def close(self) -> None:
        """Finish queued work, stop the worker and the monitor, close the events log."""
        self.batcher.stop()
        self.monitor.close()

    # ------------------------------------------------------------------ views
    def dashboard_state(self) -> dict[str, Any]:
        det = self._current()
        return {
            "drift": self.monitor.snapshot(history=200),
            "window": self.monitor.window_scores(),
            "reference": det.reference_scores,
            "threshold": det.threshold,
            "n_scored": self.n_scored,
            "n_flagged": self.n_flagged,
            "requests": self.n_requests,
            "started": self.started,
            "authenticated": self.config.token is not None,
            "version": det.version,
        }


# ================================================================ ASGI guard (pure ASGI)
class _Guard:
    """Metrics, token check and request size limit, before any routing or parsing."""

    def __init__(
        self,
        app: Any,
        service: Service,
        routes: Callable[[], list],
        fast_route: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.routes = routes
        self.fast_route = fast_route
        token = service.config.token
        self.token = None if token is None else token.encode()
        self.limit = service.config.max_request_bytes

    def _endpoint(self, scope: dict[str, Any]) -> str:
        fast = scope.get("distilldetect.endpoint")
        if fast is not None:
            return fast
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return route.path
        from starlette.routing import Match

        for r in self.routes():
            try:
                match, _ = r.matches(scope)
            except Exception:  # pragma: no cover - defensive
                continue
            if match == Match.FULL:
                return getattr(r, "path", "unmatched")
        return "unmatched"

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        assert self.token is not None
        value = b""
        for key, val in headers:
            if key == b"authorization":
                value = val
                break
        scheme, _, credential = value.strip().partition(b" ")
        scheme = scheme.lower()
        credential = credential.strip()
        if scheme == b"bearer":
            given = credential
        elif scheme == b"basic":
            try:
                decoded = base64.b64decode(credential, validate=True)
            except (binascii.Error, ValueError):
                return False
            given = decoded.partition(b":")[2]
        else:
            return False
        return hmac.compare_digest(given, self.token)

    async def _answer(
        self, send: Callable, status: int, body: dict[str, Any] | BinaryResponse, headers=()
    ) -> None:
        if isinstance(body, BinaryResponse):  # binary tensor data extension
            data, head_length = body.encode()
            kind = [
                (b"content-type", b"application/octet-stream"),
                (BINARY_HEADER.encode(), str(head_length).encode()),
            ]
        else:
            data = json.dumps(body).encode()
            kind = [(b"content-type", b"application/json")]
        raw = [*kind, (b"content-length", str(len(data)).encode()), *headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = {"status": 0, "done": False}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["done"] = True
            await send(message)

        try:
            await self._handle(scope, receive, send_wrapper)
        finally:
            endpoint = self._endpoint(scope)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            if state["done"]:
                self.service.n_requests += 1
                self.service.metrics.observe_request(
                    endpoint, method, state["status"], time.perf_counter() - start
                )
            else:
                self.service.metrics.disconnects.labels(endpoint).inc()

    async def _handle(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        headers = scope.get("headers", [])
        if self.token is not None and scope["path"] not in _OPEN_PATHS:
            if not self._authorized(headers):
                challenge = b'Bearer realm="distilldetect"'
                if scope["path"] == "/" or scope["path"].startswith("/dashboard/"):
                    challenge = b'Basic realm="distilldetect", charset="UTF-8"'
                await self._answer(
                    send,
                    401,
                    {
                        "error": "missing or wrong token: send the header "
                        "'Authorization: Bearer <token>'",
                        "field": "Authorization header",
                        "expected": "Bearer <token>",
                        "got": "a wrong token"
                        if any(k == b"authorization" for k, _ in headers)
                        else "no Authorization header",
                    },
                    [(b"www-authenticate", challenge)],
                )
                return
        length = None
        for key, val in headers:
            if key == b"content-length":
                try:
                    length = int(val)
                except ValueError:
                    length = -1
                break
        if length is not None and (length < 0):
            await self._answer(
                send,
                400,
                {
                    "error": "the Content-Length header is not a non-negative integer",
                    "field": "Content-Length header",
                    "expected": "a byte count",
                    "got": short(val.decode("latin-1")),
                },
                [(b"connection", b"close")],
            )
            return
        if length is not None and length > self.limit:
            await self._too_large(send, f"{length} bytes (Content-Length)")
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nothing to answer
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                await self._too_large(send, f"more than {self.limit} bytes (streamed)")
                return
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                break
        full = b"".join(chunks)
        fast = None if self.fast_route is None else self.fast_route(scope["method"], scope["path"])
        if fast is not None:
            endpoint, handler = fast
            scope["distilldetect.endpoint"] = endpoint
            binary = _header(headers, BINARY_HEADER.encode())
            status, body, extra = await _run_fast(handler, full, binary)
            await self._answer(send, status, body, extra)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": full, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable, got: str) -> None:
        mb = self.limit / 2**20
        await self._answer(
            send,
            413,
            {
                "error": f"request body too large: the limit is {self.limit} bytes "
                f"(--max-request-mb {mb:g}); send fewer instances per request",
                "field": "body",
                "expected": f"at most {self.limit} bytes",
                "got": got,
            },
            [(b"connection", b"close")],
        )


def _as_response(result: dict[str, Any] | BinaryResponse) -> Any:
    """A route's answer: the JSON body, or the raw response of the binary extension."""
    if not isinstance(result, BinaryResponse):
        return result
    data, head_length = result.encode()
    return Response(
        data, media_type="application/octet-stream", headers={BINARY_HEADER: str(head_length)}
    )


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, val in headers:
        if key == name:
            return val.decode("latin-1")
    return None


async def _run_fast(
    handler: Callable[[bytes, str | None], Any], body: bytes, binary_header: str | None
) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
    """Status, body and headers of a scoring request, errors as the app's handlers make them."""
    try:
        return 200, await handler(body, binary_header), []
    except APIError as exc:
        headers = [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
        return exc.status, exc.body(), headers
    except RequestValidationError as exc:
        status, out = _validation_body(list(exc.errors()))
        return status, out, []
    except WorkerStopped as exc:
        return 503, {"error": str(exc)}, []
    except Exception:  # a bug, not bad input: logged, answered 500
        logger.exception("scoring request failed")
        return 500, {"error": "internal error; see the server log"}, []


# ========================================================================= the app
class _GuardedApp(FastAPI):
    """FastAPI with :class:`_Guard` outermost, around FastAPI's own middleware: every request
    is counted, authorised and size-limited first (a 500 from the error middleware is counted
    too), and the scoring endpoints skip the layers they do not use."""

    guard: Callable[[Any], Any] | None = None

    def build_middleware_stack(self) -> Any:
        stack = super().build_middleware_stack()
        return stack if self.guard is None else self.guard(stack)


def _request_ids() -> Callable[[], str]:
    """Ids for requests that bring none: UUID-shaped, a random prefix drawn once and a counter.

    Unique within the process and, by the prefix, across processes; a fraction of the cost
    of ``uuid4`` per request (whose ``os.urandom`` call was ~4 % of the event loop's time).

    Examples
    --------
    >>> ids = _request_ids()
    >>> a, b = ids(), ids()
    >>> len(a), a[:24] == b[:24], int(b[24:], 16) - int(a[24:], 16)
    (36, True, 1)
    """
    prefix = str(uuid.uuid4())[:24]
    counter = itertools.count()  # next() on it is atomic under the GIL
    return lambda: f"{prefix}{next(counter) & 0xFFFFFFFFFFFF:012x}"


_ERRORS = {
    400: {"model": ErrorResponse, "description": "malformed request (e.g. invalid JSON)"},
    401: {"model": ErrorResponse, "description": "missing or wrong token"},
    404: {"model": ErrorResponse, "description": "unknown model or version"},
    413: {"model": ErrorResponse, "description": "body or batch too large"},
    422: {"model": ErrorResponse, "description": "invalid request: the field is named"},
    503: {"model": ErrorResponse, "description": "shutting down"},
}
_EXTRA_SCHEMAS: dict[str, Any] = {}


def _body(model: type) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the JSON body (parsed by the handler)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for key, sub in schema.pop("$defs", {}).items():
        _EXTRA_SCHEMAS[key] = sub
    _EXTRA_SCHEMAS[model.__name__] = schema
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _field(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "body"


def _validation_body(errors: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    clean = []
    for e in errors[:20]:
        loc = tuple(e.get("loc", ()))
        if loc and loc[0] == "body":
            loc = loc[1:]
        clean.append(
            {"field": _field(loc), "message": str(e.get("msg", "")), "type": str(e.get("type"))}
        )
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        msg = str(first.get("msg", "invalid JSON"))
        return 400, {
            "error": f"the body is not valid JSON: {msg}",
            "field": "body",
            "expected": "a JSON object",
            "got": "malformed JSON",
            "errors": clean,
        }
    loc = tuple(first.get("loc", ()))
    if loc and loc[0] == "body":
        loc = loc[1:]
    field = _field(loc)
    msg = str(first.get("msg", "invalid value"))
    expected = msg[len("Input should be ") :] if msg.startswith("Input should be ") else msg
    kind = first.get("type", "")
    if kind == "missing":
        got = "nothing (the field is missing)"
    elif kind == "extra_forbidden":
        got = "an unknown field"
        expected = "no such field"
    else:
        got = short(first.get("input"))
    extra = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return 422, {
        "error": f"{field}: {msg}; got {got}{extra}",
        "field": field,
        "expected": expected,
        "got": got,
        "errors": clean,
    }


def _parse(model: type, body: bytes) -> Any:
    if not body:
        raise APIError(
            400,
            "the body is empty; expected a JSON object",
            field="body",
            expected="a JSON object",
            got="an empty body",
        )
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False)) from None


def create_app(
    path: str,
    *,
    name: str = "distilldetect",
    window: int = 1000,
    drift_every: int = 100,
    token: str | None = None,
    max_request_mb: float = 16,
    max_batch: int = 1024,
    events: str | None = None,
    model_factory: Callable[[], Any] | None = None,
    distilled_model_factory: Callable[[], Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    reference: np.ndarray | None = None,
    p_val: float = 0.05,
    max_wait_ms: float = 2.0,
    refresh: float = 2.0,
    workers: int = 1,
    freeze_heap: bool = False,
) -> Any:
    """The FastAPI app serving the detector saved at ``path``.

    The folder is loaded (and a warm-up forward pass run) before this returns, so that a bad
    folder fails here. The scoring worker and the drift monitor are stopped when the app's
    lifespan ends (or by ``app.state.service.close()``).

    Parameters
    ----------
    path
        Folder written by :func:`~distilldetect.save_detector`: a ModelDistillation, or a drift
        detector made by ``ad.drift_detector(x_ref)`` (drift monitoring on).
    name
        Model name in the ``/v2/models/{name}`` paths.
    window, drift_every
        Scores in the rolling drift window; instances between two drift tests.
    token
        Bearer token required on every endpoint but ``/v2/health/*``; None: unauthenticated.
    max_request_mb
        Largest request body accepted (413 above it, before parsing).
    max_batch
        Most instances per request and per forward pass (413 above it).
    events
        File to append drift results to (JSON lines, fsync'd).
    model_factory, distilled_model_factory
        Callables returning fresh modules for a folder whose models the library cannot
        rebuild; weights come from the folder.
    input_shape
        Instance shape, for a folder that does not record it.
    reference
        Clean instances to build the drift detector from when the folder holds a
        ModelDistillation only.
    p_val
        Significance level of a drift detector built from ``reference``.
    max_wait_ms
        Longest wait for more requests to batch, once concurrent requests were seen.
    refresh
        Seconds between dashboard refreshes.
    workers
        Scoring threads. 1 (the default) scores one micro-batch at a time, in arrival order;
        with 2, one batch is scored while the next gathers (forwards of a sealed torch model
        on the fast path run side by side; other models take turns): smaller batches, a
        shorter latency tail under heavy load, about the same throughput on two cores.
    freeze_heap
        After each (re)load, one full garbage collection, then ``gc.freeze()``: the collector
        stops walking the frameworks and models on every periodic collection (p99 at
        concurrency 64 on the ResNet-20 detector: 110-126 ms instead of 280-330 ms). It
        affects the whole process, so it is off here and on in ``distilldetect serve``.

    Examples
    --------
    >>> app = create_app("detectors/fashion-drift", name="fashion")  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    from . import dashboard

    config = ServeConfig(
        path=str(path),
        name=name,
        window=window,
        drift_every=drift_every,
        token=token,
        max_request_bytes=int(max_request_mb * 2**20),
        max_batch=max_batch,
        events=None if events is None else str(events),
        model_factory=model_factory,
        distilled_model_factory=distilled_model_factory,
        input_shape=None if input_shape is None else tuple(input_shape),
        reference=reference,
        p_val=p_val,
        max_wait=max_wait_ms / 1000.0,
        refresh=refresh,
        workers=workers,
        freeze_heap=bool(freeze_heap),
    )
    service = Service(config)
    next_id = _request_ids()
    if token is None:
        logger.warning(
            "distilldetect serve is UNAUTHENTICATED: anyone who can reach the port can score, "
            "read /drift and /metrics; pass --token-file to require a bearer token"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = _GuardedApp(
        title="distilldetect serve",
        version=__version__,
        description="Adversarial-input scores and a rolling harmful-drift monitor for a saved "
        "distilldetect detector (Open Inference Protocol v2 and plain JSON).",
        lifespan=lifespan,
    )
    app.state.service = service

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        status, body = _validation_body(list(exc.errors()))
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        body = {"error": f"{detail}: {request.method} {request.url.path}"}
        if exc.status_code == 404:
            body = {
                "error": f"no such endpoint: {request.url.path}",
                "field": "path",
                "expected": "an endpoint listed in /openapi.json",
                "got": short(request.url.path),
            }
        elif exc.status_code == 405:
            body = {
                "error": f"method {request.method} is not allowed on {request.url.path}",
                "field": "method",
                "expected": exc.headers.get("Allow", "") if exc.headers else "",
                "got": request.method,
            }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(WorkerStopped)
    async def stopped(request: Request, exc: WorkerStopped) -> Any:
        return JSONResponse({"error": str(exc)}, status_code=503)

    # ------------------------------------------------------------------ helpers
    def model_for(model_name: str, model_version: str | None) -> LoadedDetector:
        det = service._current()
        if model_name != config.name:
            raise APIError(
                404,
                f"model {model_name!r} is not served here; this server serves {config.name!r}",
                field="model_name",
                expected=config.name,
                got=short(model_name),
            )
        if model_version is not None and model_version != det.version:
            raise APIError(
                404,
                f"version {model_version!r} of {config.name!r} is not loaded; the version "
                f"served is {det.version!r}",
                field="model_version",
                expected=det.version,
                got=short(model_version),
            )
        return det

    async def score(x: np.ndarray, tp: np.ndarray | None) -> Any:
        try:
            return await service.batcher.score(x, tp)
        except (ValueError, TypeError) as err:
            # checked against the detector served when the request arrived; a reload in
            # between may have changed what is valid
            first = str(err).splitlines()[0]
            raise APIError(
                422,
                f"the detector refused the request: {first}",
                field="inputs",
                expected="instances the detector accepts",
                got="see error",
            ) from None

    def metadata(det: LoadedDetector) -> dict[str, Any]:
        return {
            "name": config.name,
            "versions": [det.version],
            "platform": f"distilldetect_{det.meta.get('backend', 'unknown')}",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, *det.input_shape]},
                {"name": TEACHER_PROBS, "datatype": "FP32", "shape": [-1, det.n_classes]},
            ],
            "outputs": [
                {"name": "instance_score", "datatype": "FP32", "shape": [-1]},
                {"name": "is_adversarial", "datatype": "BOOL", "shape": [-1]},
            ],
            "parameters": {
                **det.meta,
                "threshold": det.threshold,
                "loss_type": det.ad.loss_type,
                "temperature": det.ad.temperature,
                "drift_enabled": det.drift_enabled,
                "teacher_probs_optional": True,
            },
        }

    # ------------------------------------------------------------------ health & metadata
    @app.get("/v2/health/live", response_model=LiveResponse, tags=["health"])
    async def health_live() -> Any:
        return {"live": True}

    @app.get(
        "/v2/health/ready",
        response_model=ReadyResponse,
        tags=["health"],
        responses={503: {"model": ReadyResponse}},
    )
    async def health_ready() -> Any:
        if service.ready:
            return {"ready": True}
        return JSONResponse({"ready": False}, status_code=503)

    @app.get("/v2", response_model=MetadataServerResponse, tags=["v2"], responses=_ERRORS)
    async def server_metadata() -> Any:
        return {
            "name": "distilldetect",
            "version": __version__,
            "extensions": ["binary_tensor_data"],
        }

    @app.get(
        "/v2/models/{model_name}",
        response_model=MetadataModelResponse,
        tags=["v2"],
        responses=_ERRORS,
    )
    async def model_metadata(model_name: str) -> Any:
        return metadata(model_for(model_name, None))

    @app.get(
        "/v2/models/{model_name}/versions/{model_version}",
        response_model=MetadataModelResponse,
        tags=["v2"],
        responses=_ERRORS,
    )
    async def model_version_metadata(model_name: str, model_version: str) -> Any:
        return metadata(model_for(model_name, model_version))

    @app.get(
        "/v2/models/{model_name}/ready",
        response_model=ModelReadyResponse,
        tags=["v2"],
        responses=_ERRORS,
    )
    async def model_ready(model_name: str) -> Any:
        model_for(model_name, None)
        return {"name": config.name, "ready": service.ready}

    @app.get(
        "/v2/models/{model_name}/versions/{model_version}/ready",
        response_model=ModelReadyResponse,
        tags=["v2"],
        responses=_ERRORS,
    )
    async def model_version_ready(model_name: str, model_version: str) -> Any:
        model_for(model_name, model_version)
        return {"name": config.name, "ready": service.ready}

    # ------------------------------------------------------------------ inference
    async def infer(
        model_name: str, model_version: str | None, body: bytes, binary_header: str | None = None
    ) -> dict[str, Any] | BinaryResponse:
        det = model_for(model_name, model_version)
        head, binary = split_binary(body, binary_header)
        req: InferenceRequest = _parse(InferenceRequest, head)
        sent_binary = decode_binary(req.inputs, binary)

        def tensor(k: int) -> np.ndarray:
            got = sent_binary.get(k)
            return decode_tensor(req.inputs[k], f"inputs[{k}]") if got is None else got

        names = [t.name for t in req.inputs]
        xs = [i for i, t in enumerate(req.inputs) if t.name != TEACHER_PROBS]
        tps = [i for i, t in enumerate(req.inputs) if t.name == TEACHER_PROBS]
        if len(xs) != 1 or len(tps) > 1:
            raise APIError(
                422,
                "inputs must hold one tensor of instances (named 'x') and optionally one named "
                f"'{TEACHER_PROBS}', got inputs named {names}",
                field="inputs",
                expected=f"['x'] or ['x', '{TEACHER_PROBS}']",
                got=short(names),
            )
        i = xs[0]
        x = check_instances(
            tensor(i),
            f"inputs[{i}]",
            det.input_shape,
            config.max_batch,
        )
        tp = None
        if tps:
            j = tps[0]
            tp = check_teacher_probs(
                tensor(j),
                f"inputs[{j}]",
                len(x),
                det.n_classes,
            )
        wanted = list(OUTPUT_NAMES)
        if req.outputs:
            wanted = [o.name for o in req.outputs]
            unknown = [w for w in wanted if w not in OUTPUT_NAMES]
            if unknown:
                raise APIError(
                    422,
                    f"outputs asks for {unknown}, which this model does not produce; its "
                    f"outputs are {list(OUTPUT_NAMES)}",
                    field="outputs",
                    expected=f"names among {list(OUTPUT_NAMES)}",
                    got=short(unknown),
                )
        result = await score(x, tp)
        used = result.detector
        scores = result.scores
        n = len(scores)
        outputs = []
        blobs: list[bytes] = []
        for out in wanted:
            if out == "instance_score":
                values = scores.astype("<f4")
                dtype = "FP32"
            else:
                values = scores > used.threshold
                dtype = "BOOL"
            entry: dict[str, Any] = {"name": out, "shape": [n], "datatype": dtype}
            if wants_binary(req, out):
                blob = values.tobytes()  # BOOL: one byte 0 / 1 per element
                blobs.append(blob)
                entry["parameters"] = {"content_type": "np", "binary_data_size": len(blob)}
            else:
                entry["parameters"] = {"content_type": "np"}
                entry["data"] = values.tolist()
            outputs.append(entry)
        answer = {
            "model_name": config.name,
            "model_version": used.version,
            "id": req.id if req.id is not None else next_id(),
            "parameters": {**used.meta, "threshold": used.threshold},
            "outputs": outputs,
        }
        return BinaryResponse(answer, b"".join(blobs)) if blobs else answer

    @app.post(
        "/v2/models/{model_name}/infer",
        response_model=InferenceResponse,
        tags=["v2"],
        responses=_ERRORS,
        openapi_extra=_body(InferenceRequest),
    )
    async def model_infer(model_name: str, request: Request) -> Any:
        """Scores and flags of the instances in input ``x`` (optionally with ``teacher_probs``).

        Tensors come as JSON ``data`` or, with the binary tensor data extension, as raw
        little-endian bytes after the JSON part: ``parameters.binary_data_size`` on the input
        and the ``Inference-Header-Content-Length`` header; ``binary_data`` on an output (or
        ``binary_data_output`` on the request) returns it the same way."""
        return _as_response(
            await infer(model_name, None, await request.body(), request.headers.get(BINARY_HEADER))
        )

    @app.post(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        response_model=InferenceResponse,
        tags=["v2"],
        responses=_ERRORS,
        openapi_extra=_body(InferenceRequest),
    )
    async def model_version_infer(model_name: str, model_version: str, request: Request) -> Any:
        """The same as ``/v2/models/{model_name}/infer``, for one version of the detector."""
        return _as_response(
            await infer(
                model_name, model_version, await request.body(), request.headers.get(BINARY_HEADER)
            )
        )

    @app.post(
        "/score",
        response_model=ScoreResponse,
        tags=["scoring"],
        responses=_ERRORS,
        openapi_extra=_body(ScoreRequest),
    )
    async def plain_score(request: Request) -> Any:
        """Scores and flags of ``instances`` (optionally with the teacher's probabilities)."""
        return await score_body(await request.body())

    async def score_body(body: bytes) -> dict[str, Any]:
        det = service._current()
        req: ScoreRequest = _parse(ScoreRequest, body)
        x = check_instances(
            plain_array(req.instances, "instances"),
            "instances",
            det.input_shape,
            config.max_batch,
        )
        tp = None
        if req.teacher_probs is not None:
            tp = check_teacher_probs(
                plain_array(req.teacher_probs, "teacher_probs"),
                "teacher_probs",
                len(x),
                det.n_classes,
            )
        result = await score(x, tp)
        used = result.detector
        return {
            "instance_score": result.scores.tolist(),
            "is_adversarial": (result.scores > used.threshold).tolist(),
            "threshold": used.threshold,
            "model_version": used.version,
        }

    # ------------------------------------------------------------------ monitoring
    @app.get("/drift", response_model=DriftResponse, tags=["monitoring"], responses=_ERRORS)
    async def drift(
        history: int = Query(100, ge=0, le=500, description="recent results to return"),
    ) -> Any:
        """The latest harmful-drift test of the rolling window, and the recent ones."""
        return service.monitor.snapshot(history=history)

    @app.get(
        "/metrics",
        tags=["monitoring"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, 401: _ERRORS[401]},
    )
    async def metrics() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ dashboard
    page_headers = {
        "Content-Security-Policy": dashboard.CSP,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    @app.get("/", response_class=HTMLResponse, tags=["dashboard"], responses={401: _ERRORS[401]})
    async def index() -> Any:
        state = service.dashboard_state()
        text = dashboard.render_page(
            state, name=config.name, version=state["version"], refresh=config.refresh
        )
        return HTMLResponse(text, headers=page_headers)

    @app.get(
        "/dashboard/panel",
        response_class=HTMLResponse,
        tags=["dashboard"],
        responses={401: _ERRORS[401]},
    )
    async def panel() -> Any:
        return HTMLResponse(dashboard.render_panel(service.dashboard_state()), headers=page_headers)

    @app.get("/dashboard/script.js", include_in_schema=False)
    async def script() -> Any:
        return Response(dashboard.DASHBOARD_JS, media_type="text/javascript", headers=page_headers)

    @app.get("/dashboard/style.css", include_in_schema=False)
    async def style() -> Any:
        return Response(dashboard.DASHBOARD_CSS, media_type="text/css", headers=page_headers)

    @app.get("/dashboard/favicon.svg", include_in_schema=False)
    async def favicon() -> Any:
        return Response(dashboard.FAVICON_SVG, media_type="image/svg+xml", headers=page_headers)

    # ------------------------------------------------------------------ admin
    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        tags=["admin"],
        responses={**_ERRORS, 403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    )
    async def reload() -> Any:
        """Load the detector folder again and swap it in; a bad folder is refused (409)."""
        if config.token is None:
            raise APIError(
                403,
                "hot reload needs a token: start the server with --token-file",
                field="Authorization header",
                expected="a server started with --token-file",
                got="an unauthenticated server",
            )
        return await service.reload()

    # ------------------------------------------------------------------ fast path
    def fast_route(method: str, path: str) -> tuple[str, Callable[[bytes], Any]] | None:
        """The scoring endpoints, answered by the guard without FastAPI's per-request layers
        (routing, dependency solving, response re-validation): the same functions as the
        routes above, about a third less CPU per request. The routes stay for the schema."""
        if method != "POST":
            return None
        if path == "/score":
            return "/score", lambda body, _binary_header: score_body(body)
        parts = path.split("/")
        if len(parts) < 5 or parts[1] != "v2" or parts[2] != "models" or not parts[3]:
            return None
        name = parts[3]
        if len(parts) == 5 and parts[4] == "infer":
            return "/v2/models/{model_name}/infer", functools.partial(infer, name, None)
        if len(parts) == 7 and parts[4] == "versions" and parts[5] and parts[6] == "infer":
            return (
                "/v2/models/{model_name}/versions/{model_version}/infer",
                functools.partial(infer, name, parts[5]),
            )
        return None

    # ------------------------------------------------------------------ schema
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for key, sub in _EXTRA_SCHEMAS.items():
                comps.setdefault(key, sub)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.guard = functools.partial(
        _Guard, service=service, routes=lambda: app.router.routes, fast_route=fast_route
    )
    return app
