"""The benchmark scripts whose printed tables the docs quote still run (on a small slice; speed is never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO


def test_encode_speed_prints_every_torch_row_and_the_ratio(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "encode_speed.py"), "--pairs", "8", "--no-onnx"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    for path in ("SentenceTransformer.encode (defaults, batch 32)", "hybridembed encode (CLI defaults: blocks of 4096, planned passes of ≤ 128)",
                 "evaluation / mining (SentenceTransformer.encode, batch 32)", "hybridembed serve engine (default batches of 128, planned passes)"):  # fmt: skip
        assert path in rows, done.stdout
    spearmans = {float(line.split(" | ")[-1].rstrip(" |")) for path, line in rows.items() if "bfloat16" not in path and path != "path"}
    assert len(spearmans) == 1, done.stdout  # every fp32 path embeds the same texts to the same vectors
    assert done.stdout.strip().splitlines()[-1].startswith("ratio: ")
