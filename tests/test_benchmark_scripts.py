"""The benchmark scripts whose printed tables the docs quote still run (on a small slice; speed is never asserted)."""

from __future__ import annotations

import math
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


def test_profile_train_gemms_prints_the_matmul_ceiling(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "profile_train.py"), "--gemms", "--steps", "2", "--top", "3", "--precision", "fp32"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| `aten::")]
    assert 1 <= len(table) <= 3, done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("matmuls: ") and "replayed alone" in last, done.stdout


def test_gemm_flops_counts_the_batch_of_a_bmm():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from profile_train import GEMMS, gemm_flops

    assert gemm_flops([4, 8], [8, 16]) == 2 * 4 * 8 * 16
    assert gemm_flops([3, 4, 8], [3, 8, 16]) == 3 * 2 * 4 * 8 * 16
    assert GEMMS["aten::addmm"]([[16], [4, 8], [8, 16], [], []]) == ([4, 8], [8, 16])


def test_the_mask_timer_adds_up_draws_by_dtype_and_rank():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from profile_train import MaskTimer

    timer = MaskTimer(lambda shape, p, dtype, device: (torch.ones(shape, dtype=dtype), 1.0 - p))
    for shape in ((2, 3), (4, 5), (1, 2, 2, 2)):
        factor, probability = timer(shape, 0.25, torch.bfloat16, torch.device("cpu"))
        assert factor.shape == shape and probability == 0.75  # the draw itself is handed through
    assert {key: total[:2] for key, total in timer.totals.items()} == {("bfloat16", 2): [2, 26], ("bfloat16", 4): [1, 8]}


def test_train_throughput_summarises_repeats_by_median_and_range():
    # The whole script trains four arms (minutes on CPU); its repeat summary is checked on its own.
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import summarise

    runs = [{"rows": 30.0, "spearman": 0.8}, {"rows": 10.0, "spearman": 0.8}, {"rows": 20.0, "spearman": 0.9}]
    assert summarise(runs) == {"rows": 20.0, "spearman": 0.8, "rows_low": 10.0, "rows_high": 30.0}
    assert summarise(runs[:2])["rows"] == 20.0  # an even count: the mean of the middle two


def test_chunk_cost_fits_a_cost_per_chunk_and_per_token(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "chunk_cost.py"), "--repeats", "1", "--precision", "fp32", "--tables", "1000x32"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line[2:3].isdigit() and " × " in line.split(" | ")[0]]
    assert len(table) == 4 and [len(line.split(" | ")) for line in table] == [6, 6, 6, 4], done.stdout  # 3 shapes, 1 table
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("per chunk: ") and math.isfinite(float(last.rsplit(": ", 1)[1])), done.stdout


def test_train_throughput_rows_can_change_several_settings():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import settings_row

    assert settings_row("training.packing=true; training.forward_chunk_rows=null") == (("training.packing", True), ("training.forward_chunk_rows", None))
    assert settings_row("training.lane_dropout=false") == (("training.lane_dropout", False),)


def test_train_throughput_keeps_cold_passes_out_of_the_medians():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import arms_over, summary_line

    def run(rows, flops):
        return {"rows": rows, "flops": flops, "spearman": 0.88}

    passes = [{"hybridembed": run(70.0, 170.0), "stock SentenceTransformerTrainer": run(20.0, 50.0)},
              {"hybridembed": run(80.0, 200.0), "stock SentenceTransformerTrainer": run(20.0, 50.0)},
              {"hybridembed": run(90.0, 220.0), "stock SentenceTransformerTrainer": run(30.0, 60.0)}]  # fmt: skip
    cold, warm = arms_over(passes[:1]), arms_over(passes[1:])
    assert cold["hybridembed"]["rows"] == 70.0 and warm["hybridembed"]["rows"] == 85.0 and warm["hybridembed"]["rows_low"] == 80.0
    assert summary_line(warm, "bf16", {"bf16": 400.0}) == "speedup: 3.40 peak_fraction: 0.53 quality_delta: 0.000"
    assert summary_line(cold, "bf16", {"bf16": 400.0}, prefix="cold_").startswith("cold_speedup: 3.50 cold_peak_fraction: 0.42 ")


def test_collate_speed_collates_identical_batches_with_both_tokenizers(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "collate_speed.py"), "--batches", "6", "--passes", "1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| tokenizer", "| sentence-transformers preprocess", "| hybridembed text_tokenizer"]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("collate_speedup: ") and last.endswith("identical_batches: True"), done.stdout


def test_profile_train_gc_times_collections_with_and_without_the_freeze(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "profile_train.py"), "--gc", "--steps", "2", "--precision", "fp32"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {line.split(" | ")[0].removeprefix("| ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    assert {"startup objects frozen (the trainer's default)", "not frozen"} <= runs or runs == {"run"}, done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("full collections: ") and last.endswith(" s not frozen"), done.stdout
