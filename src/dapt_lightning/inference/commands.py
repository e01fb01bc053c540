"""``dapt export`` and ``dapt serve``: a tuned checkpoint as an ONNX graph, or behind an HTTP endpoint."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from dapt_lightning.arguments import ArgumentParser, UsageError, command_parser, parse
from dapt_lightning.inference.export import FORMATS

CLASSNAMES_HELP = "classes to choose from: a,b,c or a text file with one per line (default: the checkpoint's)"
PRETRAINED_HELP = "where the CLIP weights file the checkpoint was trained on is now (when it moved)"


def _checkpoint(path: str) -> str:
    if not Path(path).is_file():
        raise UsageError(f"--ckpt_path: checkpoint {path} does not exist; check the path")
    return path


def _checkpoint_parser(prog: str, description: str) -> ArgumentParser:
    """A parser with the options every command on a trained checkpoint takes: the checkpoint, its classes and
    where its CLIP weights are now."""
    parser = command_parser(prog, description)
    parser.add_argument("--ckpt_path", type=str, required=True, help="the trained checkpoint (.ckpt)")
    parser.add_argument("--classnames", type=str | None, default=None, help=CLASSNAMES_HELP)
    parser.add_argument("--pretrained", type=str | None, default=None, help=PRETRAINED_HELP)
    return parser


def export_main(argv: list[str]) -> int:
    """``dapt export --ckpt_path CKPT --format onnx [--output FILE]``: write the image -> logits graph."""
    parser = _checkpoint_parser(
        "dapt export",
        "Write a checkpoint as an ONNX graph: preprocessed images -> class logits, the class text features computed "
        "once and stored in it; its metadata records the preprocessing and the class names.",
    )
    parser.add_argument("--format", type=Literal[FORMATS], default="onnx", help="the graph format")
    parser.add_argument("--output", type=str | None, default=None, help="default: the checkpoint's path, .onnx")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    args = parse(parser, argv)
    from dapt_lightning.inference.classifier import load
    from dapt_lightning.inference.export import export_onnx

    checkpoint = _checkpoint(args.ckpt_path)
    output = Path(args.output) if args.output else Path(checkpoint).with_suffix(".onnx")
    classifier = load(checkpoint, device="cpu", classnames=args.classnames, pretrained=args.pretrained)
    print(f"Exporting {checkpoint} ({type(classifier.method).__name__}, {len(classifier.classnames)} classes) ...")
    export_onnx(classifier, output, opset=args.opset)
    size = classifier.preprocessing.size
    print(f"Wrote {output}: input 'images' [N, 3, {size}, {size}] -> output 'logits' [N, {len(classifier.classnames)}]")
    print("  its metadata (dapt.preprocessing, dapt.classnames) says how to prepare images and read the logits")
    return 0


def serve_main(argv: list[str]) -> int:
    """``dapt serve --ckpt_path CKPT [--port 8000]``: classify images POSTed to ``/predict`` until stopped."""
    parser = _checkpoint_parser(
        "dapt serve",
        "Serve a checkpoint over HTTP with LitServe: POST an image to /predict (raw bytes, a multipart file or JSON "
        '{"image": base64}) and get JSON with its top classes; GET /health answers once the model is loaded.',
    )
    parser.add_argument("--host", type=str, default="127.0.0.1", help="address to listen on (0.0.0.0: every one)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--top_k", type=int, default=5, help="classes per answer")
    parser.add_argument("--accelerator", type=Literal["auto", "cpu", "cuda"], default="auto", help="device")
    parser.add_argument("--workers", type=int, default=1, help="model workers (each holds the model)")
    parser.add_argument("--max_batch_size", type=int, default=16, help="requests classified in one forward pass")
    parser.add_argument("--batch_timeout", type=float, default=0.01, help="seconds to wait to fill a batch")
    parser.add_argument("--timeout", type=float, default=60, help="seconds before a waiting request gets a 504")
    args = parse(parser, argv)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    for name in ("top_k", "workers", "max_batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    from dapt_lightning.inference.serving import ClassifierAPI, build_server

    checkpoint = _checkpoint(args.ckpt_path)
    api = ClassifierAPI(
        checkpoint, args.top_k, args.classnames, args.pretrained, args.max_batch_size, args.batch_timeout
    )
    server = build_server(api, args.accelerator, args.workers, args.timeout)
    print(f"Serving {checkpoint} on http://{args.host}:{args.port}{api.api_path} (GET /health; Ctrl-C stops)")
    with stopped_by_sigterm():
        server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")
    print("Server stopped.")
    return 0


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM (``kill``, a container stop) shuts the server down as Ctrl-C does: LitServe then stops its API and
    model worker processes instead of leaving them running without a parent."""
    main = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != main:  # a worker process that inherited the handler: the default, ending it
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
