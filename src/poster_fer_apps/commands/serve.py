"""``poster-fer serve [--weights CKPT]``: the HTTP API and the web page on uvicorn.

Binds 127.0.0.1 unless told otherwise: a server reachable from the network should have an API key
(``--api-key`` or the ``POSTER_FER_API_KEY`` environment variable, which keeps the key out of ``ps``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from poster_fer.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from poster_fer.constants import DEFAULT_MAX_PIXELS, DEFAULT_MODEL  # torch- and OpenCV-free, so --help stays fast
    from poster_fer.options import arg, check_detect_size, count_arg, probability_arg

    from ..serve.settings import API_KEY_ENV, DEFAULT_MAX_BODY_BYTES
    from .common import add_backend_argument, add_device_argument, add_weights_arguments

    p = sub.add_parser(
        "serve", help=f"HTTP API + web page (photo or webcam) for a model (default: {DEFAULT_MODEL})",
        description="Serve a model over HTTP: POST /v1/predict (image in, faces and labels out), GET /v1/model, "
        "/healthz, /metrics (Prometheus), the API docs at /docs and a web page at / that labels photos and the "
        "webcam. Needs the 'serve' extra (pip install 'poster-fer[serve]').")
    add_weights_arguments(p, onnx=True)
    add_backend_argument(p)
    add_device_argument(p)
    p.add_argument("--threads", type=count_arg("--threads"), default=None,
                   help="PyTorch intra-op threads for the model (default: PyTorch's default, one per core)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    net.add_argument("--port", type=count_arg("--port", minimum=0), default=8000,
                     help="port (default 8000; 0 picks a free one)")
    net.add_argument("--api-key", default=None,
                     help=f"require this key on /v1/* (default: ${API_KEY_ENV} when set, else no key)")
    net.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="allow browser pages from ORIGIN (e.g. https://app.example) to call the API; repeatable; "
                     "default: CORS off")
    net.add_argument("--insecure-no-key", action="store_true",
                     help="allow listening beyond this machine without an API key (refused otherwise)")
    net.add_argument("--access-log", action="store_true", help="log every request")
    lim = p.add_argument_group("limits and batching")
    lim.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20,
                     help="largest upload in MiB (default 10)")
    lim.add_argument("--max-pixels", type=count_arg("--max-pixels"), default=DEFAULT_MAX_PIXELS, metavar="N",
                     help="largest image, width x height (default 50,000,000)")
    lim.add_argument("--max-faces", type=count_arg("--max-faces"), default=64,
                     help="most faces returned per image (default 64)")
    lim.add_argument("--batch-size", type=count_arg("--batch-size"), default=32,
                     help="most faces per forward pass (default 32)")
    lim.add_argument("--max-wait-ms", type=float, default=10.0,
                     help="how long a batch waits for requests still being detected (default 10)")
    lim.add_argument("--max-queue", type=count_arg("--max-queue"), default=32,
                     help="requests in progress before new ones get 503 + Retry-After (default 32)")
    lim.add_argument("--max-uploads-per-client", type=count_arg("--max-uploads-per-client"), default=16, metavar="N",
                     help="uploads one client address may send at once (default 16; more get 429)")
    lim.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                     help="seconds a client has to send its whole upload (default 30; then 408)")
    lim.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                     help="seconds a connection has to send its request head (default 10; then it is closed)")
    lim.add_argument("--workers", type=count_arg("--workers"), default=1,
                     help="threads decoding images and detecting faces (default 1)")
    det = p.add_argument_group("faces")
    det.add_argument("--detector", choices=("yunet", "haar"), default="yunet", help="face detector (default yunet)")
    det.add_argument("--detector-model", default=None, metavar="PATH",
                     help="YuNet .onnx file (default: the bundled one, no download)")
    det.add_argument("--threshold", type=probability_arg("--threshold"), default=0.6,
                     help="detector score threshold (default 0.6)")
    det.add_argument("--detect-size", type=arg(check_detect_size), default=1280, metavar="PX",
                     help="longest side the detector runs at (default 1280; 0 = full resolution)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401  (checked here so a missing extra is one clear line)

        from ..serve import API_KEY_ENV, create_app
        from ..serve.runner import is_loopback, listen
        from ..serve.runner import run as run_server
    except ModuleNotFoundError as err:
        raise UserError(f"the 'serve' extra is not installed ({err.name} is missing); install it with "
                        "pip install 'poster-fer[serve]'") from None
    from .common import check_operating_point

    api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    if not is_loopback(args.host) and not api_key and not args.insecure_no_key:
        # Decided: refuse rather than warn. A model server open to a network without a key is rarely what was
        # meant, and a warning scrolls away; the explicit flag keeps the rare deliberate case possible.
        raise UserError(f"--host {args.host} accepts connections from other machines: set an API key (--api-key or "
                        f"${API_KEY_ENV}), or pass --insecure-no-key to serve without one")
    settings = _settings(args, api_key)
    check_operating_point(args)
    try:
        sock = listen(args.host, args.port)  # first, so a taken port fails before the model loads
    except OSError as err:
        raise UserError(str(err).replace("resolve host", "resolve --host")) from None
    try:
        rec, extra = _load(args, settings)
    except BaseException:
        sock.close()
        raise
    app = create_app(rec, settings, detectors=extra)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(args.host) and not api_key:
        print(f"poster-fer serve: warning: listening on {args.host} without an API key (--insecure-no-key): "
              "anyone who can reach this machine can use the model", file=sys.stderr)
    print(f"poster-fer serve: {rec.card.architecture} ({len(rec.classes)} classes, {rec.device}) on "
          f"http://{shown}:{port}/  (API docs: /docs; Ctrl-C stops)", flush=True)
    run_server(app, sock, access_log=args.access_log, header_timeout_s=settings.header_timeout_s)
    print("poster-fer serve: stopped", file=sys.stderr, flush=True)
    return 0


def _settings(args: argparse.Namespace, api_key: str | None) -> Any:
    """The server's limits from the options (a bad combination is one line, not a traceback)."""
    from ..serve import ServeSettings

    try:
        return ServeSettings(
            max_body_bytes=int(args.max_body_mb * 2**20), max_faces=args.max_faces, max_batch=args.batch_size,
            max_pixels=args.max_pixels, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
            workers=args.workers, api_key=api_key, max_uploads_per_client=args.max_uploads_per_client,
            body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout,
            cors_origins=tuple(args.cors_origin))
    except ValueError as err:
        raise UserError(str(err)) from None


def _load(args: argparse.Namespace, settings: Any) -> tuple[Any, list[Any]]:
    """The recognizer and one extra detector per further worker thread (OpenCV detectors are not thread-safe)."""
    from poster_fer.faces import build_detector
    from poster_fer.inference import InferenceError, Recognizer
    from poster_fer.inference.backends import torch_available

    from .common import official_options

    if args.threads is not None and torch_available():  # ONNX Runtime sizes its own pool (one thread per core)
        import torch

        torch.set_num_threads(args.threads)
    try:
        rec = Recognizer.from_checkpoint(
            args.weights, device=args.device, detector=args.detector, detector_model=args.detector_model,
            backend=args.backend, official=official_options(args), batch_size=args.batch_size,
            detect_size=args.detect_size, operating_point=args.operating_point,
            score_threshold=args.threshold, max_pixels=settings.max_pixels)
        extra = [build_detector(args.detector, model_path=args.detector_model, score_threshold=args.threshold)
                 for _ in range(settings.workers - 1)]
    except (InferenceError, ValueError) as err:
        raise UserError(str(err)) from None
    return rec, extra
