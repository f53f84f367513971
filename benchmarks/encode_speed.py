"""Encoding throughput of hybridembed's encode paths vs a plain `SentenceTransformer.encode` on the same real texts.

`hybridembed encode` and the server encode by tokenizing a block of texts once and running forward
passes planned from its token counts (serve.engine.plan_passes); evaluation and mining call
`SentenceTransformer.encode` itself (batch 32), a row of its own outside the ratio. This prints
sentences/s for each on the STS-B dev sentences shipped in data/quickstart (3000 texts), the best of
three timed runs after a warm-up, and as its last line `ratio: X.XX` (slowest hybridembed torch path ÷
stock encode of all texts at once, which sorts all of them by length: a server sorts one batch of
`--max-batch-size` texts at a time, as a loaded server forms them, so a stock row on the same
batches is printed too).
The ONNX rows (fp32 and int8, `hybridembed export` + `serve --backend onnx`, same threads as
torch) run the serve engine too, and so does a row with the weights cast to bf16 (`serve --dtype
bfloat16`; not counted in the ratio, which compares the default fp32 paths); every row also
reports the STS-B dev Spearman of its own embeddings, so a faster path never silently costs
quality. Run it alone.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


PAIRS: int | None = None  # --pairs: the first N pairs only, for a quick run on a busy machine
TIMED_RUNS = 3


def stsb_dev() -> list[dict[str, str]]:
    with open(REPO / "data" / "quickstart" / "stsb_dev.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:PAIRS]


def texts() -> list[str]:
    rows = stsb_dev()
    return [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]


def rate(encode, sentences: list[str]) -> tuple[float, float]:
    """(sentences/s, STS-B dev Spearman of the timed run's embeddings: sentence1 rows first, then sentence2)."""
    import numpy as np
    from scipy.stats import spearmanr

    encode(sentences[:64])  # warm-up: first shapes cost seconds on CPU
    seconds = []
    for _ in range(TIMED_RUNS):  # one run of a few hundred texts lasts about a second: the best of three is steadier
        started = time.perf_counter()
        embeddings = np.asarray(encode(sentences), dtype=np.float32)
        seconds.append(time.perf_counter() - started)
    speed = len(sentences) / min(seconds)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    half = len(sentences) // 2
    gold = [float(r["score"]) for r in stsb_dev()]
    return speed, float(spearmanr(gold, (embeddings[:half] * embeddings[half:]).sum(axis=1)).statistic)


def served_rate(served, sentences: list[str]) -> tuple[float, float]:
    """The server's path with its default settings: batches of --max-batch-size texts, passes as the engine plans them."""
    import numpy as np

    from hybridembed.serve.settings import ServeSettings

    settings = ServeSettings()
    size, passes = settings.max_batch_size, settings.forward_batch_size()
    return rate(lambda t: np.concatenate([served.encode(t[i : i + size], batch_size=passes)[0] for i in range(0, len(t), size)]), sentences)


def main() -> None:
    import numpy as np
    import torch

    from hybridembed.modeling.model import load_model
    from hybridembed.serve.engine import ServedModel
    from hybridembed.serve.settings import ServeSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--onnx-dir", help="an earlier `hybridembed export --quantize int8` of --model (default: export to a temporary folder)")
    parser.add_argument("--no-onnx", action="store_true", help="torch rows only")
    parser.add_argument("--pairs", type=int, help="only the first N STS-B dev pairs (default: all 1500)")
    args = parser.parse_args()
    global PAIRS
    PAIRS = args.pairs
    sentences = texts()
    model = load_model(args.model)
    served = ServedModel.from_model(model, "bench")
    size = ServeSettings().max_batch_size
    results = {
        "SentenceTransformer.encode (defaults, batch 32)": rate(lambda t: model.encode(t, show_progress_bar=False), sentences),
        "hybridembed encode (CLI defaults: blocks of 4096, planned passes of ≤ 128)": rate(lambda t: cli_encode(model, t), sentences),
        # evaluation and mining call SentenceTransformer.encode itself: the stock path, not in the ratio
        "evaluation / mining (SentenceTransformer.encode, batch 32)": rate(lambda t: model.encode(t, batch_size=32, show_progress_bar=False), sentences),
        # like for like with the serve row: stock encode sees only one server batch at a time too
        f"SentenceTransformer.encode on the same batches of {size}": rate(
            lambda t: np.concatenate([model.encode(t[i : i + size], show_progress_bar=False) for i in range(0, len(t), size)]), sentences
        ),
        f"hybridembed serve engine (default batches of {size}, planned passes)": served_rate(served, sentences),
    }
    defaults = list(results)  # the ratio compares these: the paths a user gets without choosing a precision
    bf16 = ServedModel.from_model(copy.deepcopy(model).to(torch.bfloat16), "bench-bf16")
    results[f"hybridembed serve engine, serve --dtype bfloat16 (same batches; {native_bf16(torch)})"] = served_rate(bf16, sentences)
    if not args.no_onnx:
        results.update(onnx_rows(args.model, args.onnx_dir, sentences, torch.get_num_threads()))
    print(f"\n{len(sentences)} STS-B dev sentences, {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| path | sentences/s | STS-B dev Spearman |")
    print("|---|---|---|")
    for name, (value, spearman) in results.items():
        print(f"| {name} | {value:.0f} | {spearman:.4f} |")
    stock = results["SentenceTransformer.encode (defaults, batch 32)"][0]
    print(f"ratio: {min(results[k][0] for k in defaults if k.startswith('hybridembed')) / stock:.2f}")


def cli_encode(model, sentences: list[str]):
    """`hybridembed encode`'s own path with its default --batch-size, without the progress bar."""
    from hybridembed.commands.encode import DEFAULT_BATCH_SIZE, EncodeInput, encode_in_blocks

    data = EncodeInput(sentences, lines=list(range(1, len(sentences) + 1)))
    return encode_in_blocks(model, data, "bench", DEFAULT_BATCH_SIZE, None, progress=False)


def native_bf16(torch) -> str:
    """Whether this CPU computes bf16 natively (then bf16 matmuls are several times faster than fp32)."""
    from hybridembed.precision import cpu_has_native_bf16

    if torch.cuda.is_available():
        return "GPU"
    return "CPU with native bf16" if cpu_has_native_bf16() else "CPU without native bf16: expect it slower"


def onnx_rows(model: str, onnx_dir: str | None, sentences: list[str], threads: int) -> dict[str, tuple[float, float]]:
    """The serve engine on onnxruntime, fp32 and int8, with as many intra-op threads as torch has."""
    import tempfile

    import onnxruntime

    from hybridembed.onnx_export import export_onnx
    from hybridembed.serve.engine import ServedModel
    from hybridembed.serve.onnx_backend import OnnxEncoder

    with tempfile.TemporaryDirectory(prefix="encode-speed-onnx-") as tmp:
        folder = Path(onnx_dir) if onnx_dir else Path(tmp) / "model"
        if not onnx_dir:
            print(export_onnx(model, folder, quantize="int8").summary())
        rows = {}
        for label, file_name in (("fp32", "model.onnx"), ("int8", "model_qint8.onnx")):
            served = ServedModel.from_model(OnnxEncoder(folder, file_name, intra_op_num_threads=threads), "bench")
            name = f"ONNX {label} serve engine (onnxruntime {onnxruntime.__version__}, {file_name}, same batching)"
            rows[name] = served_rate(served, sentences)
        return rows


if __name__ == "__main__":
    main()
