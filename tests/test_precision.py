"""`precision: auto` picks bf16 only where matmuls run natively in bf16 (hybridembed.precision)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridembed import precision
from hybridembed.recipe import TrainingConfig
from hybridembed.training.builder import training_arguments

AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"  # AMD Zen 4, Intel Cooper Lake
NO_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    def write(text: str | None):
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO", path)
        precision.cpu_has_native_bf16.cache_clear()

    yield write
    precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize(("text", "expected"), [(AMX, True), (AVX512_BF16, True), (NO_BF16, False), ("", False), (None, False)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, text, expected):
    cpuinfo(text)
    assert precision.cpu_has_native_bf16() is expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU auto follows the GPU, not the CPU flags")
@pytest.mark.parametrize(("text", "expected"), [(AMX, "bf16"), (AVX512_BF16, "bf16"), (NO_BF16, "fp32")])
def test_auto_on_a_cpu_follows_native_bf16_and_reaches_the_trainer(cpuinfo, tmp_path, text, expected):
    cpuinfo(text)
    assert precision.resolve_precision("auto") == expected
    args = training_arguments(TrainingConfig(output_dir=str(tmp_path / "run"), precision="auto", report_to=[]))
    assert (args.bf16, args.fp16) == (expected == "bf16", False)


@pytest.mark.parametrize("chosen", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept(chosen):
    assert precision.resolve_precision(chosen) == chosen


def test_forward_chunk_rows_auto_is_32_on_a_cpu_256_packed_and_one_forward_on_a_gpu(monkeypatch):
    assert TrainingConfig().forward_chunk_rows == "auto"
    assert precision.resolve_chunk_rows(8) == 8 and precision.resolve_chunk_rows(None) is None
    assert precision.resolve_chunk_rows(8, packing=True) == 8
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.resolve_chunk_rows("auto") == 32 and precision.resolve_chunk_rows("auto", packing=True) == 256
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.resolve_chunk_rows("auto") is None and precision.resolve_chunk_rows("auto", packing=True) is None


@pytest.mark.parametrize("bad", [0, -1, "fast"])
def test_forward_chunk_rows_rejects_what_is_not_a_positive_count_or_auto(bad):
    with pytest.raises(ValueError, match="forward_chunk_rows"):
        TrainingConfig(forward_chunk_rows=bad)


def test_a_mixed_precision_step_casts_the_weights_once_for_all_its_chunked_forwards(tiny_bert_dir, tmp_path, monkeypatch):
    """One autocast region spans the loss (HybridTrainer.compute_loss_context_manager): torch's cache of bf16 weight copies
    is emptied once per step, not after each of the step's chunked forwards."""
    import json

    from helpers import corpus_sentences
    from hybridembed.recipe import Recipe
    from hybridembed.training.builder import prepare_training

    sentences = corpus_sentences(200)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": a, "positive": b}) + "\n" for a, b in zip(sentences[:64:2], sentences[1:64:2])))
    recipe = Recipe.model_validate(
        {
            "model": {"backbone": str(tiny_bert_dir), "max_seq_length": 32},
            "datasets": [{"path": str(data), "task": "retrieval", "batch_size": 8}],
            "training": {"output_dir": str(tmp_path / "out"), "max_steps": 3, "precision": "bf16", "forward_chunk_rows": 4, "report_to": []},
        }
    )
    trainer = prepare_training(recipe)
    clears, forwards = [], []
    original = torch.clear_autocast_cache
    monkeypatch.setattr(torch, "clear_autocast_cache", lambda: clears.append(1) or original())
    trainer.model[0].register_forward_pre_hook(lambda module, args: forwards.append(1))
    trainer.train()
    assert len(forwards) >= 3 * 4  # 16 texts a step in chunks of 4 rows
    assert len(clears) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU auto follows the GPU, not the CPU flags")
@pytest.mark.parametrize(("text", "expected"), [(AMX, "bfloat16"), (AVX512_BF16, "bfloat16"), (NO_BF16, "float32")])
def test_serve_dtype_auto_casts_the_weights_only_where_bf16_is_native(cpuinfo, tiny_model_dir, text, expected):
    from hybridembed.serve.engine import load_served_model

    cpuinfo(text)
    assert precision.resolve_serving_dtype("auto", "cpu") == expected
    assert precision.resolve_serving_dtype("float16", "cpu") == "float16"
    served = load_served_model(str(tiny_model_dir), model_name="tiny", dtype="auto", device="cpu")
    assert str(next(served.model.parameters()).dtype) == f"torch.{expected}"
    embeddings, _, _ = served.encode(["a short text", "a somewhat longer text than that"])
    assert embeddings.dtype == np.float32 and np.isfinite(embeddings).all()


def test_serve_dtype_auto_is_float32_on_the_onnx_backend(cpuinfo, tiny_model_dir):
    from hybridembed.errors import HybridembedError
    from hybridembed.serve.engine import load_served_model

    cpuinfo(AVX512_BF16)
    with pytest.raises(HybridembedError) as refused:  # this folder has no onnx/ graph: the backend's own error...
        load_served_model(str(tiny_model_dir), backend="onnx", dtype="auto")
    assert "onnx" in str(refused.value) and "--dtype" not in str(refused.value)  # ...not a refused dtype
    with pytest.raises(HybridembedError, match="--dtype bfloat16"):
        load_served_model(str(tiny_model_dir), backend="onnx", dtype="bfloat16")
