"""imgclf-serve: classify images in the browser, or over HTTP, with a trained model.

    imgclf-serve (--experiment NAME | --model FILE) [--experiments DIR] [--host 127.0.0.1] [--port 8000]
                 [--min-confidence P] [--no-abstain] [--top-k K] [--max-upload-mb M] [--max-request-mb M]
                 [--max-files N] [--max-pixels N] [--body-timeout S] [--min-body-rate KB] [--body-grace S]
                 [--device auto] [--engine auto|onnxruntime|torch]

--model takes a checkpoint (best.pt) or an ONNX export (model.onnx, served without torch). Open
http://127.0.0.1:8000/ for the page; POST /predict takes multipart uploads (field "file", one or
more), GET /health says the server is up. A model with "not sure" thresholds (abstain.*, chosen on val)
answers "not sure: top guesses ..." below them; --no-abstain always names a class. Uploads are read into
memory, never written to disk, and refused (4xx with a JSON message) over the byte limits or when an image would
decode to more than --max-pixels (checked from its header, before decoding). The server listens on 127.0.0.1 only unless
--host says otherwise; it has no authentication. A request's body is read in full before it waits for
one of the --max-active turns, and must arrive within --body-timeout seconds and, after --body-grace
seconds, at --min-body-rate KB/s on average: a slower client is answered 408 and its connection
closed, so clients that trickle their uploads never hold a turn. Exit status 2: the command line or
the model cannot be used; 1: the server could not start (e.g. the port is taken); 130 / 143: stopped
by Ctrl-C / SIGTERM (after a graceful shutdown).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imgclf.cli.common import (
    add_engine,
    add_experiments_dir,
    add_min_confidence,
    add_no_abstain,
    add_version,
    engine_block,
)
from imgclf.cli.experiments import best_checkpoint
from imgclf.cli.paths import user_path
from imgclf.data.images import MAX_PIXELS, PREDICT_MAX_PIXELS
from imgclf.errors import ImgclfError

log = logging.getLogger("imgclf.serve")
DEFAULT_HOST = "127.0.0.1"  # reachable from this machine only; --host 0.0.0.0 opens it to the network
EXIT_START, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
MB = 1024 * 1024


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="imgclf-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", metavar="NAME", help="serve <experiments-dir>/NAME/best.pt")
    source.add_argument("--model", type=user_path, metavar="FILE", help="a checkpoint (.pt) or an ONNX export (.onnx)")
    add_experiments_dir(parser)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free one)")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per image (default 5)")
    add_min_confidence(parser)
    add_no_abstain(parser)
    parser.add_argument("--max-upload-mb", type=float, default=10, metavar="M", help="largest file (default 10 MB)")
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=None,
        metavar="M",
        help="largest request body (default: 3 x --max-upload-mb, at least 32 MB)",
    )
    parser.add_argument("--max-files", type=int, default=16, metavar="N", help="files per request (default 16)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=PREDICT_MAX_PIXELS,
        metavar="N",
        help=f"refuse images that would decode to more pixels (default {PREDICT_MAX_PIXELS:_})",
    )
    parser.add_argument(
        "--max-active",
        type=int,
        default=4,
        metavar="N",
        help="requests decoded and classified at once, once their bodies are in; the others wait (default 4)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=120,
        metavar="S",
        help="seconds a request's whole body may take to arrive; slower: 408 (default 120)",
    )
    parser.add_argument(
        "--min-body-rate",
        type=float,
        default=8,
        metavar="KB",
        help="KB/s a body must average after --body-grace; slower: 408 (default 8; 0: no rate)",
    )
    parser.add_argument(
        "--body-grace", type=float, default=10, metavar="S", help="seconds before --min-body-rate counts (default 10)"
    )
    parser.add_argument("--max-batch", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=64,
        metavar="N",
        help="open connections; more are answered 503 (default 64)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    add_engine(parser)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_version(parser)
    args = parser.parse_args(argv)
    _check(parser, args)
    return args


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= args.max_pixels <= MAX_PIXELS:
        parser.error(f"--max-pixels {args.max_pixels}: must be between 1 and {MAX_PIXELS}")
    if args.min_confidence is not None and not 0.0 <= args.min_confidence <= 1.0:
        parser.error(f"--min-confidence {args.min_confidence}: must be a probability between 0 and 1")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: must be between 0 and 65535")
    if args.max_upload_mb <= 0 or (args.max_request_mb is not None and args.max_request_mb < args.max_upload_mb):
        parser.error("--max-upload-mb must be positive and --max-request-mb at least as large")
    if args.body_timeout <= 0 or args.min_body_rate < 0 or args.body_grace < 0:
        parser.error("--body-timeout must be positive, --min-body-rate and --body-grace at least 0")
    for name in ("top_k", "max_files", "max_active", "max_batch", "max_connections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")


def model_path(args: argparse.Namespace) -> Path:
    """The model file to serve; a missing experiment's message lists the ones there are."""
    if args.model is not None:
        return args.model
    return best_checkpoint(args.experiments_dir, args.experiment, "--model FILE, --experiments-dir DIR")


def settings_of(args: argparse.Namespace):  # -> imgclf.serve.app.Settings (imported with FastAPI, in main)
    from imgclf.serve.app import Settings
    from imgclf.serve.pacing import Pace
    from imgclf.serve.uploads import Limits

    request_mb = args.max_request_mb if args.max_request_mb is not None else max(32.0, 3 * args.max_upload_mb)
    limits = Limits(
        max_file_bytes=int(args.max_upload_mb * MB), max_request_bytes=int(request_mb * MB), max_files=args.max_files
    )
    pace = Pace(timeout=args.body_timeout, min_rate=args.min_body_rate * 1024, grace=args.body_grace)
    return Settings(
        top_k=args.top_k,
        min_confidence=args.min_confidence,
        abstain=not args.no_abstain,
        limits=limits,
        max_active=args.max_active,
        pace=pace,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _serve(parse_args(argv))
    except KeyboardInterrupt:  # Ctrl-C before the server runs (loading the model): nothing to shut down
        print("imgclf-serve: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    try:
        import uvicorn

        from imgclf.serve.app import create_app
        from imgclf.serve.model import load_predictor, model_card
        from imgclf.serve.worker import ModelWorker
    except ImportError as exc:
        print(
            f"imgclf-serve: error: {exc.name or exc} is not installed; install the web app's packages with "
            "pip install -e '.[deploy]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        path = model_path(args)
        predictor = load_predictor(path, max_pixels=args.max_pixels, device=args.device)
        card = model_card(predictor, path)
    except ImgclfError as exc:
        print(f"imgclf-serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not _loopback(args.host):
        log.warning(
            "listening on %s: anyone who can reach this machine can use the model (there is no "
            "authentication); use the default --host %s to keep it local",
            args.host,
            DEFAULT_HOST,
        )
    worker = ModelWorker(predictor, max_batch=args.max_batch, queue_size=args.max_active * args.max_files)
    app = create_app(worker, card, settings_of(args))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            limit_concurrency=args.max_connections,
            timeout_keep_alive=5,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
    )
    with _stop_signals(server) as received, engine_block(predictor, args.engine):
        warm_up(predictor)  # an exported backbone is made (and checked) now, not on the first user's request
        server.run()  # returns on Ctrl-C / SIGTERM after a graceful shutdown; exits 1 itself if it cannot bind
    if received:
        return 128 + received[0]  # 130 / 143, as train.py
    return 0 if server.started else EXIT_START


def warm_up(predictor: Any) -> None:
    """One image of seeded random pixels through the model before the server starts: a backbone run on onnxruntime
    is exported and checked against PyTorch on it (random pixels, as the export's parity check uses), and
    onnxruntime plans its buffers, so the first request waits for neither."""
    import io

    import numpy as np
    from PIL import Image

    size = int(predictor.image_size)
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    predictor.probabilities([predictor.load_image("warm-up.png", data=buffer.getvalue())])


@contextmanager
def _stop_signals(server) -> Iterator[list[int]]:  # server: uvicorn.Server
    """SIGINT and SIGTERM while ``server`` runs, recorded (in the yielded list) instead of raised.

    Uvicorn handles both itself (a graceful shutdown), then puts back the handlers it found and raises
    the signal again: Python's own would turn that into a KeyboardInterrupt traceback (asyncio's
    runner) or a death by SIGTERM. These record it, and main returns 128 + the signal number.
    """
    received: list[int] = []

    def remember(signum: int, _frame) -> None:
        received.append(signum)
        server.should_exit = True  # a signal before uvicorn's own handlers are in stops it all the same

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


if __name__ == "__main__":
    sys.exit(main())
