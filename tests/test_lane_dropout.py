"""Lane dropout (hybridembed.modeling.dropout): the same Bernoulli masks and gradients as inverted dropout, seeded, on every device."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hybridembed.modeling import dropout as lane


def test_masks_drop_at_rate_p_independently_and_keep_the_expectation(device):
    torch.manual_seed(0)
    x = torch.ones(1_000_003, device=device)  # not a multiple of 4: the last word is cut
    out = lane.lane_dropout(x, 0.1)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002  # 6.6 standard deviations of a binomial over 1e6
    assert abs(out.mean().item() - 1.0) < 0.004
    both = (kept[:-1] & kept[1:]).float().mean().item()  # neighbours share a 64-bit word: still independent
    assert abs(both - 0.81) < 0.003
    assert torch.allclose(out[kept], torch.full_like(out[kept], out[kept][0].item()))  # one scale for every kept element


def test_the_keep_probability_is_exact_for_the_rounded_p():
    keep, probability = lane.lane_keep_mask((8,), 0.1, torch.device("cpu"))
    assert keep.dtype == torch.bool and probability == 1 - round(0.1 * 65536) / 65536
    x = torch.ones(4096)
    torch.manual_seed(1)
    out = lane.lane_dropout(x, 0.1)
    assert torch.allclose(out[out != 0], torch.tensor(1 / probability))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_the_keep_factor_is_the_keep_mask_in_the_dtype(device, dtype):
    """The factor the dropout paths multiply by is the same draw as the boolean mask: 1.0 where kept, 0.0 where dropped."""
    torch.manual_seed(4)
    keep, probability = lane.lane_keep_mask((5, 7, 9), 0.3, torch.device(device))
    torch.manual_seed(4)
    factor, same_probability = lane.lane_keep_factor((5, 7, 9), 0.3, dtype, torch.device(device))
    assert factor.dtype == dtype and factor.device == keep.device and same_probability == probability
    assert keep.any() and not keep.all() and torch.equal(factor, keep.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_rounds_once_like_the_scaled_masked_input(dtype):
    """x · factor · scale is bitwise x · scale where kept and 0 where dropped (the formulation before the factor)."""
    x = torch.randn(300, 37).to(dtype)
    torch.manual_seed(6)
    out = lane.lane_dropout(x, 0.1)
    torch.manual_seed(6)
    keep, probability = lane.lane_keep_mask(x.shape, 0.1, x.device)
    assert torch.equal(out, torch.where(keep, x * (1.0 / probability), x.new_zeros(())))


def test_gradient_is_the_mask_over_the_keep_probability(device):
    torch.manual_seed(0)
    x = torch.randn(64, 33, device=device, requires_grad=True)
    out = lane.lane_dropout(x, 0.25)
    out.sum().backward()
    kept = (out != 0).to(x.dtype)
    scale = 1 / (1 - round(0.25 * 65536) / 65536) if device == "cpu" else 1 / 0.75
    assert torch.allclose(x.grad, kept * scale)


def test_seeded_draws_repeat_and_successive_draws_differ():
    x = torch.ones(2, 1000)
    torch.manual_seed(3)
    first, second = lane.lane_dropout(x, 0.5), lane.lane_dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(lane.lane_dropout(x, 0.5), first) and not torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_identity_in_eval_or_at_p_zero_and_dtype_kept(dtype):
    x = torch.randn(5, 7).to(dtype)
    assert lane.lane_dropout(x, 0.1, training=False) is x and lane.lane_dropout(x, 0.0) is x
    assert lane.lane_dropout(x, 0.1).dtype == dtype
    assert torch.equal(lane.lane_dropout(x, 1.0), torch.zeros_like(x))


def _attention_inputs(device, mask_kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 6, 8, device=device) for _ in range(3))
    lengths = torch.tensor([6, 3, 1], device=device)
    valid = torch.arange(6, device=device)[None, :] < lengths[:, None]
    mask = valid[:, None, None, :].expand(3, 1, 6, 6)
    if mask_kind == "float":
        mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    return q, k, v, mask


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_attention_without_the_mask_draw_is_sdpa(device, mask_kind, monkeypatch):
    """The dropout branch's math equals transformers' SDPA when its mask keeps everything; p = 0 is SDPA itself."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v, mask = _attention_inputs(device, mask_kind)
    module = nn.Module()
    module.is_causal = False
    reference, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    assert torch.equal(lane.sdpa_lane_dropout_attention(module, q, k, v, mask, dropout=0.0, scaling=0.3)[0], reference)
    keep_everything = lambda shape, p, dtype, device: (torch.ones(shape, dtype=dtype, device=device), 1.0)  # noqa: E731
    monkeypatch.setattr(lane, "lane_keep_factor", keep_everything)
    ours, _ = lane.sdpa_lane_dropout_attention(module, q, k, v, mask, dropout=0.1, scaling=0.3)
    assert ours.shape == reference.shape == (3, 6, 4, 8)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_attention_dropout_drops_probabilities_with_the_lane_mask():
    q, k, v, mask = _attention_inputs("cpu", "bool")
    module = nn.Module()
    module.is_causal = False
    torch.manual_seed(5)
    ours, _ = lane.sdpa_lane_dropout_attention(module, q, k, v, mask, dropout=0.2, scaling=0.3)
    torch.manual_seed(5)
    keep, probability = lane.lane_keep_mask((3, 4, 6, 6), 0.2, torch.device("cpu"))
    scores = (q @ k.transpose(2, 3) * 0.3).masked_fill(~mask, torch.finfo(torch.float32).min)
    expected = ((torch.softmax(scores, -1) * keep / probability) @ v).transpose(1, 2)
    assert torch.allclose(ours, expected, atol=1e-6)


def _reference_attention(q, k, v, mask, keep, keep_probability, scale):
    """The plain autograd math of dropped attention, for comparison with the hand-written backward."""
    scores = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool else scores + mask
    return (torch.softmax(scores, -1) * keep / keep_probability) @ v


@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
def test_the_attention_node_has_the_gradients_of_the_plain_math(device, mask_kind):
    """LaneDropoutAttention's forward and hand-written backward equal autograd's over the same math and mask, in float64."""
    q, k, v, mask = _attention_inputs(device, "bool" if mask_kind == "none" else mask_kind)
    q, k, v = (t.double().requires_grad_() for t in (q, k, v))
    mask = None if mask_kind == "none" else mask.double() if mask_kind == "float" else mask
    upstream = torch.randn(q.shape, dtype=torch.float64, device=device)
    torch.manual_seed(7)
    ours = lane.LaneDropoutAttention.apply(q, k, v, mask, 0.3, 0.3)
    ours_grads = torch.autograd.grad(ours, (q, k, v), upstream)
    torch.manual_seed(7)
    keep, probability = lane.lane_keep_mask((3, 4, 6, 6), 0.3, torch.device(device))
    assert not keep.all()  # the mask drops something, so the keep scaling is exercised
    expected = _reference_attention(q, k, v, mask, keep, probability, 0.3)
    expected_grads = torch.autograd.grad(expected, (q, k, v), upstream)
    assert torch.allclose(ours, expected, atol=1e-12)
    for got, want in zip(ours_grads, expected_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-12)


def test_bf16_attention_stays_close_and_a_fully_masked_row_stays_finite():
    """Under bf16 autocast the node computes in bf16; an fp32 mask's minimum must not become −inf (NaN rows)."""
    q, k, v, mask = _attention_inputs("cpu", "float")
    mask[2] = torch.finfo(torch.float32).min  # every key of row 2 masked
    q, k, v = (t.bfloat16().requires_grad_() for t in (q, k, v))  # as the projections' outputs are under autocast
    module = nn.Module()
    module.is_causal = False
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = lane.sdpa_lane_dropout_attention(module, q, k, v, mask, dropout=0.1, scaling=0.3)
    assert ours.dtype == torch.bfloat16 and torch.isfinite(ours).all()
    ours.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    torch.manual_seed(2)
    keep, probability = lane.lane_keep_mask((3, 4, 6, 6), 0.1, torch.device("cpu"))
    expected = _reference_attention(*(t.detach().float() for t in (q, k, v)), mask, keep, probability, 0.3).transpose(1, 2)
    assert torch.allclose(ours.float(), expected, atol=0.05, rtol=0.02)


def test_random_words_follow_torchs_generator():
    """The words are a function of torch's generator state (seeded runs repeat, resumed ones continue) and vary per draw."""
    torch.manual_seed(11)
    first, second = lane.random_words(1000, torch.device("cpu")), lane.random_words(1000, torch.device("cpu"))
    torch.manual_seed(11)
    assert torch.equal(lane.random_words(1000, torch.device("cpu")), first) and not torch.equal(first, second)
    bits = first.view(torch.uint8).unsqueeze(-1).bitwise_and(torch.tensor([1 << i for i in range(8)], dtype=torch.uint8))
    assert abs((bits != 0).float().mean().item() - 0.5) < 0.01  # 64,000 bits: ±0.01 is 5 standard deviations


@pytest.mark.parametrize("shape", [(0, 5), (3,), (4, 5, 7), (2, 3, 1001)])
@pytest.mark.parametrize("block", [4, 12, lane.BLOCK_LANES])
def test_cpu_draws_in_blocks_are_the_whole_word_streams_lanes(shape, block, monkeypatch):
    """Drawn a block at a time (to stay in cache), a mask and a factor are still `random_words`' lanes, in order, compared whole."""
    monkeypatch.setattr(lane, "BLOCK_LANES", block)
    numel, cpu = math.prod(shape), torch.device("cpu")
    torch.manual_seed(5)
    lanes = lane.random_words((numel + 3) // 4, cpu).view(torch.int16)[:numel].view(shape) if numel else torch.zeros(shape, dtype=torch.int16)
    expected = lanes >= round(0.3 * lane.LANES) - lane.LANES // 2
    torch.manual_seed(5)
    keep, probability = lane.lane_keep_mask(shape, 0.3, cpu)
    assert keep.shape == expected.shape and torch.equal(keep, expected) and probability == 1.0 - round(0.3 * lane.LANES) / lane.LANES
    for dtype in (torch.bfloat16, torch.float32):
        torch.manual_seed(5)
        factor, _ = lane.lane_keep_factor(shape, 0.3, dtype, cpu)
        assert factor.dtype == dtype and torch.equal(factor, expected.to(dtype))


def test_use_lane_dropout_swaps_a_backbone_and_leaves_inference_unchanged(tiny_bert_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_bert_dir), attn_implementation="sdpa").eval()
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 8, 3, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    before = model(input_ids=ids, attention_mask=attention).last_hidden_state
    swapped = lane.use_lane_dropout(model)
    assert swapped == sum(1 for m in model.modules() if isinstance(m, nn.Dropout)) > 0
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert model.config._attn_implementation == lane.ATTENTION_NAME
    assert torch.equal(model(input_ids=ids, attention_mask=attention).last_hidden_state, before)
    model.train()
    torch.manual_seed(0)
    first = model(input_ids=ids, attention_mask=attention).last_hidden_state
    torch.manual_seed(0)
    assert torch.equal(model(input_ids=ids, attention_mask=attention).last_hidden_state, first)  # seeded: the same masks
    assert not torch.allclose(first, before)


def _pairs_recipe(backbone, data, out, **training):
    from hybridembed.recipe import Recipe

    return Recipe.model_validate(
        {
            "model": {"backbone": str(backbone), "max_seq_length": 32, "matryoshka_dims": [64, 32]},
            "datasets": [{"path": str(data), "task": "retrieval", "batch_size": 8}],
            "training": {"output_dir": str(out), "max_steps": 6, "lane_dropout": True, "learning_rate": 1e-3, "report_to": [],
                         "logging_steps": 1, "seed": 7, **training},
        }
    )  # fmt: skip


def _saved_weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = [f for f in sorted(folder.rglob("*.safetensors")) if "checkpoint-" not in str(f.relative_to(folder))]
    return {f"{f.relative_to(folder)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def test_a_recipe_with_lane_dropout_trains_resumes_exactly_and_saves_a_stock_folder(tiny_bert_dir, tmp_path):
    """training.lane_dropout: the masks come from torch's seeded generator, so a run resumed from a checkpoint ends
    with the uninterrupted run's weights; the saved folder names no attention function of ours and loads anywhere."""
    import json
    import shutil

    from sentence_transformers import SentenceTransformer

    from helpers import corpus_sentences
    from hybridembed.training.builder import run_training

    sentences = corpus_sentences(200)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": a, "positive": b}) + "\n" for a, b in zip(sentences[:64:2], sentences[1:64:2])))
    full = tmp_path / "full"
    run_training(_pairs_recipe(tiny_bert_dir, data, full, save_steps=3, save_total_limit=None))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    run_training(_pairs_recipe(tiny_bert_dir, data, resumed, save_steps=3, save_total_limit=None, resume=True))
    reference, after_resume = _saved_weights(full), _saved_weights(resumed)
    assert reference.keys() == after_resume.keys() and reference
    for name, value in reference.items():
        assert torch.equal(after_resume[name], value), name
    baseline = tmp_path / "torch-dropout"
    run_training(_pairs_recipe(tiny_bert_dir, data, baseline, lane_dropout=False))
    assert any(not torch.equal(_saved_weights(baseline)[n], v) for n, v in reference.items())  # other masks, other weights
    assert lane.ATTENTION_NAME not in "".join(p.read_text() for p in full.rglob("*.json") if "checkpoint-" not in str(p))
    reloaded = SentenceTransformer(str(full))
    assert not any(isinstance(m, lane.LaneDropout) for m in reloaded.modules())
    texts = sentences[100:104]
    assert reloaded.encode(texts).shape == (4, 64)


def test_the_mlm_stage_trains_with_lane_dropout(tiny_bert_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForMaskedLM

    from helpers import corpus_sentences
    from hybridembed.recipe import ModelConfig, TextsConfig, TrainingConfig
    from hybridembed.training.mlm import run_mlm

    calls = []
    original = lane.lane_dropout
    monkeypatch.setattr(lane, "lane_dropout", lambda x, p, training=True: calls.append(p) or original(x, p, training))
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(corpus_sentences(64)) + "\n")
    training = TrainingConfig(output_dir=str(tmp_path / "mlm"), max_steps=2, batch_size=8, report_to=[], lane_dropout=True)
    run = run_mlm(ModelConfig(backbone=str(tiny_bert_dir), max_seq_length=32), [TextsConfig(path=str(corpus))], training, 0.3, resume=False)
    assert run.global_step == 2 and calls and all(p > 0 for p in calls)
    assert lane.ATTENTION_NAME not in (run.folder / "config.json").read_text()
    AutoModelForMaskedLM.from_pretrained(str(run.folder))


def test_the_dropout_benchmark_prints_a_row_per_tensor_and_dtype(tmp_path):
    """benchmarks/dropout_speed.py (the table docs/performance.md quotes) runs and times both dropouts."""
    done = _run_benchmark(tmp_path, "dropout_speed.py", "--calls", "2", "--repeats", "1")
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "float" in line]
    assert len(rows) == 6 and all(float(row.split("|")[-2]) > 0 for row in rows), done.stdout


def test_the_attention_benchmark_prints_a_row_per_chunk_and_precision(tmp_path):
    """benchmarks/dropout_speed.py --attention times SDPA, the autograd graph and the node at every chunk shape."""
    done = _run_benchmark(tmp_path, "dropout_speed.py", "--attention", "--calls", "1", "--repeats", "1")
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and line.split(" | ")[1] in ("fp32", "bf16")]
    assert len(rows) == 6 and {row[1] for row in rows} == {"fp32", "bf16"} and all(" × " in row[0] for row in rows), done.stdout
    assert all(float(value) > 0 for row in rows for value in row[2:5]), done.stdout


def test_the_attention_ops_benchmark_prints_a_row_per_shape_and_gather(tmp_path):
    """benchmarks/attention_ops.py (the tables docs/performance.md quotes) times both score formulations and both gathers."""
    done = _run_benchmark(tmp_path, "attention_ops.py", "--calls", "1", "--repeats", "1")
    scores = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and line[2:3].isdigit()]  # "| 32 × 24 | ..."
    assert len(scores) == 4 and all(float(row[-1].rstrip(" |")) < 0.01 for row in scores), done.stdout  # bf16 errors
    gathers = [line for line in done.stdout.splitlines() if line.startswith("| index_select") or line.startswith("| _RowGather")]
    assert len(gathers) == 2, done.stdout


def _run_benchmark(tmp_path, script: str, *args: str):
    """Run benchmarks/`script` with `args` in `tmp_path`; the finished process, after checking it exited 0."""
    import subprocess
    import sys

    from helpers import REPO

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
