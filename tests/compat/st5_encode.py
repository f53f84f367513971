"""Encode texts with an older sentence-transformers (run in the .venv-st5 venv by `make compat`).

Usage: st5_encode.py MODEL_DIR TEXTS_JSON OUT_NPY [--prompt-name NAME] [--also-prompt NAME ...]

Loads MODEL_DIR with whatever sentence-transformers this interpreter has (5.x in .venv-st5), encodes the
JSON list of strings in TEXTS_JSON (with the saved prompt NAME, if given) and writes float32 embeddings
to OUT_NPY; each --also-prompt NAME also writes OUT_NPY's stem + ".NAME.npy" (one process, one load).
OUT_NPY + ".json" records the versions, the loaded module classes, the prompts, max_seq_length and the
embedding dimension, so the caller can check what the old version made of the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("texts_json")
    parser.add_argument("out_npy")
    parser.add_argument("--prompt-name", default=None)
    parser.add_argument("--also-prompt", action="append", default=[])
    args = parser.parse_args()

    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = SentenceTransformer(args.model_dir, device="cpu", local_files_only=True)
    texts = json.loads(Path(args.texts_json).read_text(encoding="utf-8"))
    embeddings = model.encode(texts, prompt_name=args.prompt_name, convert_to_numpy=True, batch_size=8)
    np.save(args.out_npy, embeddings.astype(np.float32))
    stem = args.out_npy[: -len(".npy")] if args.out_npy.endswith(".npy") else args.out_npy
    for name in args.also_prompt:
        np.save(f"{stem}.{name}.npy", model.encode(texts, prompt_name=name, convert_to_numpy=True, batch_size=8).astype(np.float32))
    info = {
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "modules": [f"{type(m).__module__}.{type(m).__name__}" for m in model],
        "prompts": model.prompts,
        "default_prompt_name": model.default_prompt_name,
        "similarity_fn_name": model.similarity_fn_name,
        "max_seq_length": model.max_seq_length,
        "embedding_dim": model.get_sentence_embedding_dimension(),
        "tokenizer_class": type(model.tokenizer).__name__,
        "warnings": [str(w.message) for w in caught],
    }
    with open(args.out_npy + ".json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
