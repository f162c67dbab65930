"""``distilldetect serve``: the command-line face of :mod:`distilldetect.serve`.

    distilldetect serve DETECTOR_DIR [--host 127.0.0.1] [--port 8000] [--name NAME]
        [--window 1000] [--drift-every 100] [--token-file FILE] [--max-request-mb 16]
        [--max-batch 1024] [--events FILE] [--model module:factory]
        [--distilled-model module:factory] [--reference FILE.npy] [--input-shape 28,28] ...

Argument and detector errors are one line on stderr and exit status 2, before the server
starts listening. Nothing here imports FastAPI until the server is started.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import stat
import sys
from typing import Any

__all__ = ["add_parser", "run"]

logger = logging.getLogger("distilldetect.serve")

#: Largest token file read.
_MAX_TOKEN_BYTES = 4096


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sizes, e.g. 28,28, got {text!r}"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"expected sizes >= 1, got {text!r}")
    return shape


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``subparsers`` (of ``argparse``) and return its parser."""
    p = subparsers.add_parser(
        "serve",
        help="serve a saved detector over HTTP (inference protocol v2, drift monitor, dashboard)",
        description="Serve a detector folder written by save_detector: Open Inference Protocol "
        "v2 endpoints, POST /score, a rolling harmful-drift monitor (GET /drift), Prometheus "
        "GET /metrics and a dashboard at GET /. Needs the 'serve' extra.",
    )
    p.add_argument("detector_dir", help="folder written by save_detector")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument("--name", default=None, help="model name in /v2/models/NAME (default: folder)")
    p.add_argument("--window", type=_positive_int, default=1000, help="scores in the drift window")
    p.add_argument(
        "--drift-every", type=_positive_int, default=100, help="instances between drift tests"
    )
    p.add_argument("--token-file", default=None, help="file holding the bearer token")
    p.add_argument(
        "--max-request-mb", type=_positive_float, default=16.0, help="largest request body"
    )
    p.add_argument(
        "--max-batch", type=_positive_int, default=1024, help="most instances per forward pass"
    )
    p.add_argument("--events", default=None, help="append drift results here (JSON lines)")
    p.add_argument(
        "--model", default=None, metavar="MODULE:FACTORY", help="factory of the teacher module"
    )
    p.add_argument(
        "--distilled-model",
        default=None,
        metavar="MODULE:FACTORY",
        help="factory of the student module",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="FILE.npy",
        help="clean instances to build the drift detector from (folder with a "
        "ModelDistillation only)",
    )
    p.add_argument(
        "--p-val", type=float, default=0.05, help="significance of a --reference drift test"
    )
    p.add_argument(
        "--input-shape", type=_shape, default=None, help="instance shape, if the folder lacks it"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=2.0,
        help="longest wait for more requests to batch under load (default 2)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="scoring threads (default 1: one batch at a time; 2: one batch scored while "
        "the next gathers, a shorter latency tail under heavy load)",
    )
    p.add_argument(
        "--refresh", type=_positive_float, default=2.0, help="dashboard refresh, seconds"
    )
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn)")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="uvicorn's and the service's log level",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _fail(message: str) -> int:
    print(f"distilldetect: error: {message}", file=sys.stderr)
    return 2


def read_token(path: str) -> str:
    """The token in ``path`` (surrounding whitespace removed); ``ValueError`` if unusable."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise ValueError(f"--token-file {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"--token-file {path} is not a regular file")
    if st.st_size > _MAX_TOKEN_BYTES:
        raise ValueError(f"--token-file {path} is larger than {_MAX_TOKEN_BYTES} bytes")
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_TOKEN_BYTES + 1)
        token = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--token-file {path}: cannot read a UTF-8 token: {err}") from None
    if not token:
        raise ValueError(f"--token-file {path} is empty")
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ValueError(f"--token-file {path}: the token must be one word of printable characters")
    if len(token) < 16:
        logger.warning("the token in %s is short (%d characters); use 32 or more", path, len(token))
    if st.st_mode & 0o077:
        logger.warning("%s is readable by other users (mode %o)", path, st.st_mode & 0o777)
    return token


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ValueError(f"--host {host}: {err.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    """Start the server described by ``args``; returns the exit status."""
    try:
        import uvicorn

        from .app import create_app
    except ModuleNotFoundError as err:
        return _fail(
            f"distilldetect serve needs the 'serve' extra ({err.name} is missing): "
            "pip install 'distilldetect[serve]'"
        )
    from .detector import import_factory, load_reference

    if args.quiet:
        logging.getLogger("distilldetect").setLevel(logging.WARNING)
    try:
        if not 0 <= args.max_wait_ms <= 1000:
            raise ValueError(f"--max-wait-ms must be in [0, 1000], got {args.max_wait_ms}")
        if not 1 <= args.workers <= 64:
            raise ValueError(f"--workers must be an integer in [1, 64], got {args.workers}")
        if not 0 < args.p_val < 1:
            raise ValueError(f"--p-val must be in (0, 1), got {args.p_val}")
        if not os.path.isdir(args.detector_dir):
            raise ValueError(
                f"{args.detector_dir} is not a folder (a detector saved by save_detector)"
            )
        if args.events is not None:
            parent = os.path.dirname(os.path.abspath(args.events))
            if not os.path.isdir(parent):
                raise ValueError(f"--events {args.events}: the folder {parent} does not exist")
        token = read_token(args.token_file) if args.token_file else None
        model = import_factory(args.model, "--model") if args.model else None
        student = (
            import_factory(args.distilled_model, "--distilled-model")
            if args.distilled_model
            else None
        )
        reference = load_reference(args.reference) if args.reference else None
        name = args.name or os.path.basename(os.path.abspath(args.detector_dir)) or "detector"
        if not _is_loopback(args.host) and token is None:
            logger.warning(
                "binding %s (not loopback) without --token-file: anyone on the network can "
                "use this server",
                args.host,
            )
        sock = _bind(args.host, args.port)
    except (ValueError, TypeError, OSError) as err:
        return _fail(str(err).splitlines()[0])
    try:
        app = create_app(
            args.detector_dir,
            name=name,
            window=args.window,
            drift_every=args.drift_every,
            token=token,
            max_request_mb=args.max_request_mb,
            max_batch=args.max_batch,
            events=args.events,
            model_factory=model,
            distilled_model_factory=student,
            input_shape=args.input_shape,
            reference=reference,
            p_val=args.p_val,
            max_wait_ms=args.max_wait_ms,
            refresh=args.refresh,
            workers=args.workers,
            freeze_heap=True,  # this process only serves: see create_app
        )
    except (ValueError, TypeError, OSError, KeyError) as err:
        sock.close()
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        return _fail(message)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    service = app.state.service
    det = service.detector
    print(
        f"distilldetect serve: http://{shown}:{port}/ model {name!r} version {det.version} "
        f"(drift monitor {'on' if det.drift_enabled else 'off'}, "
        f"{'token required' if token else 'UNAUTHENTICATED'})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app,
        log_level="warning" if args.quiet else args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        service.close()
    return 0
