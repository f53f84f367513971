"""`hybridembed encode MODEL`: embed texts from a file into a .npy matrix (optionally a Matryoshka prefix), row i for input line/record i.

Rows stay aligned with the input: a blank line of a .txt file is embedded as the empty string
(counted and reported) or, with ``--on-empty fail``, is an error ``file:line: text: empty line``.
For .jsonl/.csv/.tsv/.parquet input row i is record i (blank jsonl lines are not records), and
when the records carry an id (``id`` or ``_id``, or ``--id-field``) the ids are written one per
line to ``<output stem>.ids.txt`` beside the .npy.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hybridembed.commands import add_trust_remote_code
from hybridembed.errors import HybridembedError
from hybridembed.precision import SERVING_DTYPES

logger = logging.getLogger(__name__)
ID_FIELDS = ("id", "_id")
DEFAULT_BATCH_SIZE = 128  # --batch-size: most texts per forward pass, as the server's default batches
BLOCK_TEXTS = 4096  # texts tokenized and planned together: long enough to sort by length, small enough to hold


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "encode",
        help="embed texts into a .npy file",
        description="Embed one text per line (.txt) or a field of each .jsonl/.csv/.tsv/.parquet record; row i of the .npy is "
        "line (record) i of the input. Record ids (id/_id) are written to <output stem>.ids.txt.",
    )
    parser.add_argument("model", help="model folder, hub id, or bundled:all-MiniLM-L6-v2")
    add_trust_remote_code(parser)
    parser.add_argument("--input", required=True, help=".txt (one text per line), or .jsonl / .csv / .tsv / .parquet records")
    parser.add_argument("--field", default="text", help="record field (column) holding the text (default: text)")
    parser.add_argument("--id-field", help="record field holding the id, written to <output stem>.ids.txt (default: id or _id when present)")
    parser.add_argument("--output", required=True, help="output .npy path")
    parser.add_argument(
        "--on-empty",
        choices=["embed", "fail"],
        default="embed",
        help="a blank line / empty text: embed it as the empty string so rows stay aligned (default, counted), or fail with file:line",
    )
    parser.add_argument("--dim", type=int, help="keep the first DIM coordinates and re-normalize")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="most texts per forward pass (default %(default)s); the passes are planned from the texts' token counts, as the server does",
    )
    parser.add_argument(
        "--dtype",
        choices=SERVING_DTYPES,
        default="float32",
        help="weights' precision (default float32; auto: bfloat16 on a GPU or CPU that computes bf16 natively, else float32)",
    )
    parser.add_argument("--as-query", action="store_true", help="apply the model's query prompt")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="quantize with sentence-transformers' quantize_embeddings: int8/uint8 (per-dimension ranges, written to "
        "<stem>.ranges.npy), binary/ubinary (1 bit per dim, packed: dim/8 bytes). Default float32",
    )
    parser.add_argument(
        "--ranges",
        help="int8/uint8: a (2, dim) .npy of per-dimension min/max to quantize with, e.g. the corpus run's <stem>.ranges.npy, "
        "so queries and corpus share one scale (default: the ranges of these embeddings)",
    )
    parser.add_argument(
        "--keep-freed-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Linux/glibc: serve large tensors from the heap and keep freed memory between passes, as training does "
        "(faster on long texts; hybridembed.allocator). Default on",
    )
    parser.set_defaults(func=run)


Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[Precision, ...] = ("float32", "int8", "uint8", "binary", "ubinary")


def quantize(embeddings, precision: Precision, ranges_path: str | None = None):
    """(quantized embeddings, the (2, dim) ranges used or None) for `precision`, on sentence-transformers' quantize_embeddings."""
    import numpy as np
    from sentence_transformers.util.quantization import quantize_embeddings

    if precision == "float32":
        return embeddings.astype(np.float32), None
    dim = embeddings.shape[1]
    if precision in ("binary", "ubinary"):
        if dim % 8:
            raise HybridembedError(f"--precision {precision}: the dimension {dim} must be a multiple of 8 (8 dims per byte)")
        return quantize_embeddings(embeddings, precision), None
    if ranges_path is not None:
        try:
            ranges = np.load(ranges_path)
        except (OSError, ValueError) as err:
            raise HybridembedError(f"--ranges {ranges_path}: cannot read: {err}") from None
        if ranges.shape != (2, dim):
            raise HybridembedError(f"--ranges {ranges_path}: shape {ranges.shape}, expected (2, {dim}) for these embeddings")
    else:
        ranges = np.vstack((embeddings.min(axis=0), embeddings.max(axis=0)))
    return quantize_embeddings(embeddings, precision, ranges=ranges), ranges


@dataclass
class EncodeInput:
    """The texts to embed, in input order, with the ids (if the records carry them) and where empty texts were."""

    texts: list[str]
    ids: list[str] | None = None
    empty_lines: list[int] = field(default_factory=list)  # 1-based lines (records) embedded as ""
    lines: list[int] = field(default_factory=list)  # the input line (record) of each text, for error messages


def read_input(path: Path, text_field: str = "text", on_empty: str = "embed", id_field: str | None = None) -> EncodeInput:
    """Every line (.txt) or record of `path`, through the shared reader; problems are DataError `file:line: field: problem` lines."""
    from hybridembed.data.readers import iter_texts

    stream = iter_texts(path, text_field, on_empty="keep" if on_empty == "embed" else "fail")
    texts: list[str] = []
    lines: list[int] = []
    ids: list[str] | None = None
    id_key: str | None = None
    for index, item in enumerate(stream):
        if index == 0 and item.fields:  # the first record decides whether the file carries ids
            id_key = id_field or next((k for k in ID_FIELDS if k in item.fields), None)
            ids = [] if id_key is not None else None
        if ids is not None and id_key is not None:
            identifier = item.fields.get(id_key)
            text_id = "" if identifier is None else str(identifier)
            if not text_id.strip() or "\n" in text_id or "\r" in text_id:
                stream.add_problem(f"{path}:{item.line}: {id_key}: missing, empty or multi-line id")
                continue
            ids.append(text_id)
        texts.append(item.text)
        lines.append(item.line)
    return EncodeInput(texts, ids, stream.blank_lines, lines)


def encode_in_blocks(model, data: EncodeInput, source: str, batch_size: int, prompt_name: str | None, progress: bool = True):
    """float32 embeddings of `data.texts` in input order, through the serve engine, `BLOCK_TEXTS` at a time with a progress bar.

    The same rows as `model.encode` (tested); faster because each block is tokenized once and cut
    into forward passes planned from its exact token counts (serve.engine.plan_passes) rather than
    fixed batches (docs/performance.md). A text the tokenizer rejects is `file:line: text: reason`.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from hybridembed.serve.batching import InvalidInput
    from hybridembed.serve.engine import ServedModel

    served = ServedModel.from_model(model, "encode")
    blocks = []
    with tqdm(total=len(data.texts), unit="text", desc="encode", disable=not progress) as bar:
        for start in range(0, len(data.texts), BLOCK_TEXTS):
            block = data.texts[start : start + BLOCK_TEXTS]
            try:
                blocks.append(served.encode(block, prompt_name=prompt_name, batch_size=batch_size)[0])
            except InvalidInput as err:
                raise HybridembedError(f"{source}:{data.lines[start + err.index]}: text: {err.reason}") from None
            bar.update(len(block))
    return np.concatenate(blocks) if blocks else np.zeros((0, served.dim), dtype=np.float32)


def output_paths(output: str | Path) -> tuple[Path, Path]:
    """(embeddings .npy, ids .txt): `emb.npy` → `emb.npy`, `emb.ids.txt` (np.save adds .npy when it is missing)."""
    out = Path(output)
    npy = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    return npy, npy.with_suffix(".ids.txt")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from hybridembed.modeling.model import load_model, truncate_embeddings

    if args.batch_size < 1:
        raise HybridembedError(f"--batch-size {args.batch_size}: must be at least 1")
    data = read_input(Path(args.input), args.field, args.on_empty, args.id_field)
    if data.empty_lines:
        shown = ", ".join(map(str, data.empty_lines[:10])) + (", …" if len(data.empty_lines) > 10 else "")
        logger.warning("%s: %d empty line(s) embedded as the empty string to keep rows aligned (lines %s)", args.input, len(data.empty_lines), shown)
    if args.keep_freed_memory:
        from hybridembed import allocator

        allocator.keep_freed_memory()
    model = load_model(args.model, trust_remote_code=args.trust_remote_code)
    if args.dtype != "float32":
        import torch

        from hybridembed.precision import resolve_serving_dtype

        model.to(getattr(torch, resolve_serving_dtype(args.dtype, str(model.device))))
    prompt_name = "query" if args.as_query and "query" in (model.prompts or {}) else None
    embeddings = encode_in_blocks(model, data, args.input, args.batch_size, prompt_name)
    if args.dim is not None:
        if not 0 < args.dim <= embeddings.shape[1]:
            raise HybridembedError(f"--dim {args.dim}: must be between 1 and the model's dimension {embeddings.shape[1]}")
        embeddings = truncate_embeddings(embeddings, args.dim)
    if args.ranges and args.precision not in ("int8", "uint8"):
        raise HybridembedError(f"--ranges applies to --precision int8/uint8, not {args.precision}")
    quantized, ranges = quantize(embeddings, args.precision, args.ranges)
    npy, ids_path = output_paths(args.output)
    np.save(npy, quantized)
    empty = f' ({len(data.empty_lines)} empty line(s) embedded as "")' if data.empty_lines else ""
    print(f"wrote {quantized.shape[0]} x {quantized.shape[1]} {args.precision} embeddings ({quantized.dtype}) to {npy}{empty}")
    if ranges is not None and not args.ranges:
        np.save(npy.with_suffix(".ranges.npy"), ranges)
        print(f"wrote the int8/uint8 ranges to {npy.with_suffix('.ranges.npy')} (pass them as --ranges when encoding queries)")
    if data.ids is not None:
        ids_path.write_text("".join(f"{i}\n" for i in data.ids), encoding="utf-8")
        print(f"wrote {len(data.ids)} ids (row order) to {ids_path}")
    return 0
