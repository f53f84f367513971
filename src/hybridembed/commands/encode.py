"""`hybridembed encode MODEL`: embed texts from a file into a .npy matrix (optionally a Matryoshka prefix)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hybridembed.errors import HybridembedError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "encode", help="embed texts into a .npy file", description="Embed one text per line (.txt) or a field of each .jsonl record."
    )
    parser.add_argument("model", help="model folder, hub id, or bundled:all-MiniLM-L6-v2")
    parser.add_argument("--input", required=True, help=".txt (one text per line) or .jsonl")
    parser.add_argument("--field", default="text", help="jsonl field holding the text (default: text)")
    parser.add_argument("--output", required=True, help="output .npy path")
    parser.add_argument("--dim", type=int, help="keep the first DIM coordinates and re-normalize")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default 32, as sentence-transformers)")
    parser.add_argument("--as-query", action="store_true", help="apply the model's query prompt")
    parser.set_defaults(func=run)


def read_texts(path: Path, field: str) -> list[str]:
    if not path.is_file():
        raise HybridembedError(f"{path}: file not found")
    texts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if path.suffix.lower() == ".jsonl":
                try:
                    value = json.loads(line).get(field)
                except (json.JSONDecodeError, AttributeError):
                    raise HybridembedError(f"{path}:{number}: (line): not a JSON object") from None
                if not isinstance(value, str) or not value.strip():
                    raise HybridembedError(f"{path}:{number}: {field}: missing or empty text")
                texts.append(value)
            else:
                texts.append(line.rstrip("\n"))
    if not texts:
        raise HybridembedError(f"{path}: empty file")
    return texts


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from hybridembed.model import load_model, truncate_embeddings

    texts = read_texts(Path(args.input), args.field)
    model = load_model(args.model)
    prompt_name = "query" if args.as_query and "query" in (model.prompts or {}) else None
    embeddings = model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, prompt_name=prompt_name, show_progress_bar=True)
    if args.dim is not None:
        if not 0 < args.dim <= embeddings.shape[1]:
            raise HybridembedError(f"--dim {args.dim}: must be between 1 and the model's dimension {embeddings.shape[1]}")
        embeddings = truncate_embeddings(embeddings, args.dim)
    np.save(args.output, embeddings.astype(np.float32))
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {args.output}")
    return 0
