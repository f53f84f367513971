"""`hybridembed export MODEL --format onnx [--quantize int8] --out DIR`: write a verified ONNX copy of a model folder (hybridembed.onnx_export)."""

from __future__ import annotations

import argparse

from hybridembed.commands import add_trust_remote_code
from hybridembed.errors import HybridembedError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (optionally int8) for `serve --backend onnx`",
        description=(
            "Copy MODEL (a sentence-transformers folder, hub id or bundled:all-MiniLM-L6-v2) to --out with "
            "onnx/model.onnx (one graph: token ids in, sentence embedding out) and, with --quantize int8, "
            "onnx/model_qint8.onnx. The fp32 graph is checked against torch (max abs difference <= 1e-4) before "
            "the export counts as done; the int8 deviation is printed."
        ),
    )
    parser.add_argument("model", help="model folder, hub id, or bundled:all-MiniLM-L6-v2")
    parser.add_argument("--format", required=True, help="onnx (openvino is not offered, see docs/serving.md)")
    parser.add_argument("--quantize", choices=["int8"], help="also write a dynamically quantized int8 graph")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or an earlier export of the same model)")
    parser.add_argument(
        "--exporter",
        choices=["auto", "dynamo", "torchscript"],
        default="auto",
        help="torch's ONNX exporter: auto (default) tries dynamo and falls back to TorchScript when torch.export fails",
    )
    add_trust_remote_code(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridembed.onnx_export import OPENVINO_REFUSAL

    if args.format == "openvino":
        raise HybridembedError(OPENVINO_REFUSAL)
    if args.format != "onnx":
        raise HybridembedError(f"--format {args.format}: only onnx is supported")
    from hybridembed.onnx_export import export_onnx

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError:
        raise HybridembedError("hybridembed export needs onnx and onnxruntime: pip install 'hybridembed[onnx]'") from None
    report = export_onnx(args.model, args.out, quantize=args.quantize, trust_remote_code=args.trust_remote_code, exporter=args.exporter)
    print(report.summary())
    print(f"wrote {', '.join(str(p) for p in report.files)}")
    return 0
