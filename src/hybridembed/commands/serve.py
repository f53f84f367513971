"""`hybridembed serve MODEL`: run the OpenAI-compatible embeddings server (FastAPI + uvicorn) on a model."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from hybridembed.commands import add_trust_remote_code
from hybridembed.errors import HybridembedError
from hybridembed.precision import SERVING_DTYPES
from hybridembed.serve.settings import defaults

logger = logging.getLogger(__name__)

DEFAULTS = defaults()  # one place: the ServeSettings model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible /v1/embeddings API",
        description=(
            "Serve MODEL over HTTP: POST /v1/embeddings (OpenAI-compatible, with `dimensions` for Matryoshka "
            "prefixes), GET /v1/models, GET /health. Binds 127.0.0.1 unless --host says otherwise."
        ),
    )
    parser.add_argument("model", help="model folder, hub id, or bundled:all-MiniLM-L6-v2")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 exposes the server to the network)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="name of the environment variable holding the API key clients must send as 'Authorization: Bearer KEY'",
    )
    parser.add_argument("--model-name", help="the id clients send as `model` (default: folder name or hub id)")
    parser.add_argument("--device", help="torch device (default: what sentence-transformers picks)")
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="torch (default) or onnx: onnxruntime on the CPU, on a folder written by `hybridembed export --format onnx`",
    )
    parser.add_argument(
        "--onnx-file",
        help="graph under the folder's onnx/ for --backend onnx: model.onnx (fp32, default) or model_qint8.onnx (int8)",
    )
    parser.add_argument(
        "--dtype",
        choices=SERVING_DTYPES,
        default="float32",
        help="weights' precision on the torch backend (default: %(default)s; auto: bfloat16 on a GPU or CPU that computes bf16 "
        "natively, e.g. AVX512-BF16/AMX, else float32; the onnx backend takes float32 only)",
    )
    add_trust_remote_code(parser)
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for encoding (torch's, or onnxruntime's with --backend onnx; default: one per core minus one, leaving a core for HTTP work)",
    )
    group = parser.add_argument_group("batching")
    group.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULTS["max_batch_size"],
        help="most texts in one batch; a batch is split into forward passes planned from its token counts (default: %(default)s)",
    )
    group.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="also cap a batch at this many tokens, estimated without the tokenizer (1 per CJK character, 1 per 4 other "
        "characters, at most max_seq_length per text); default: no token cap",
    )
    group.add_argument(
        "--max-wait-ms", type=float, default=DEFAULTS["max_wait_ms"], help="longest a text waits for others to fill its batch (default: %(default)s)"
    )
    group.add_argument(
        "--encode-batch-size",
        type=int,
        help="most texts per forward pass within a batch; passes are planned from the exact token counts (default: --max-batch-size)",
    )
    group.add_argument(
        "--max-queue", type=int, default=DEFAULTS["max_queue"], help="texts allowed to wait; beyond this requests get 503 (default: %(default)s)"
    )
    limits = parser.add_argument_group("request limits")
    limits.add_argument("--max-inputs", type=int, default=DEFAULTS["max_inputs"], help="most inputs in one request (default: %(default)s)")
    limits.add_argument("--max-chars", type=int, default=DEFAULTS["max_chars"], help="most characters in one input (default: %(default)s)")
    limits.add_argument("--max-body-bytes", type=int, default=DEFAULTS["max_body_bytes"], help="largest request body in bytes (default: %(default)s)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up pass before accepting requests")
    parser.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="server log level (default: %(default)s)"
    )
    parser.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_key(var: str | None) -> str | None:
    """The API key from the environment variable named `var` (None when no variable is named)."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise HybridembedError(f"--api-key-env {var}: the environment variable {var} is not set or empty")
    return value


def set_cpu_threads(threads: int | None) -> int:
    """Torch's intra-op threads for CPU encoding; by default one fewer than torch's one-per-core.

    The server's own process also needs a core for HTTP and JSON work: with every core given to
    torch, its spinning worker threads collide with it (and with any other busy process): on a
    shared 2-core machine that made all-MiniLM-L6-v2 several times slower, and on an idle one
    it was no faster (docs/serving.md).
    """
    import torch

    if threads is None:
        threads = max(1, torch.get_num_threads() - 1)
    torch.set_num_threads(threads)
    logger.info("encoding on CPU with %d torch thread(s)", threads)
    return threads


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from hybridembed.schema import validation_problems
    from hybridembed.serve.settings import ServeSettings

    api_key = read_api_key(args.api_key_env)
    if not 0 <= args.port <= 65535:
        raise HybridembedError(f"--port {args.port}: must be between 0 and 65535")
    try:
        settings = ServeSettings(
            max_batch_size=args.max_batch_size,
            max_batch_tokens=args.max_batch_tokens,
            max_wait_ms=args.max_wait_ms,
            encode_batch_size=args.encode_batch_size,
            max_inputs=args.max_inputs,
            max_chars=args.max_chars,
            max_body_bytes=args.max_body_bytes,
            max_queue=args.max_queue,
            api_key=api_key,
            warmup=not args.no_warmup,
        )
    except ValidationError as err:
        raise HybridembedError("invalid serve option: " + "; ".join(validation_problems(err))) from None
    if args.threads is not None and args.threads < 1:
        raise HybridembedError(f"--threads {args.threads}: must be >= 1")
    if not _is_loopback(args.host) and api_key is None:
        logger.warning("binding %s without --api-key-env: anyone who can reach this port can use the server", args.host)

    import uvicorn

    from hybridembed.serve.app import create_app
    from hybridembed.serve.engine import load_served_model

    if args.onnx_file and args.backend != "onnx":
        raise HybridembedError("--onnx-file needs --backend onnx")
    onnx_threads = None
    if args.backend == "onnx":
        import torch

        # The same one-core-free default as set_cpu_threads, for onnxruntime's own thread pool.
        onnx_threads = args.threads or max(1, torch.get_num_threads() - 1)
    try:
        served = load_served_model(
            args.model,
            model_name=args.model_name,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            backend=args.backend,
            onnx_file=args.onnx_file or "model.onnx",
            dtype=args.dtype,
            threads=onnx_threads,
        )
    except OSError as err:
        raise HybridembedError(f"cannot load model {args.model!r}: {err}") from None
    if served.device_type == "cpu" and args.backend == "torch":
        set_cpu_threads(args.threads)
    app = create_app(served, settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=10,
    )
    return 0
