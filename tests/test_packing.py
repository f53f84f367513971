"""Packed training forwards (training.packing): the same embeddings and gradients as the padded forward, on every device."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import corpus_sentences


def _texts() -> list[str]:
    """Ragged rows: a near-empty one, repeated texts, short and long ones in one batch."""
    sentences = corpus_sentences(200)
    return ["", sentences[0], sentences[0], "a", " ".join(sentences[1:9]), *sentences[10:15]]


def _models(backbone, device: str, attention: str = "sdpa", lane_dropout: str | None = None):
    from hybridembed.modeling.dropout import use_lane_dropout
    from hybridembed.modeling.model import build_model
    from hybridembed.modeling.packing import enable_packing
    from hybridembed.recipe import ModelConfig

    config = ModelConfig(backbone=str(backbone), max_seq_length=48, pooling="mean", projection_dim=96, normalize=True, attn_implementation=attention)
    padded, packed = build_model(config).to(device), build_model(config).to(device)
    packed.load_state_dict(padded.state_dict())
    enable_packing(packed)
    for model in (padded, packed):
        if lane_dropout:
            use_lane_dropout(model)
        model.train()
        for module in model.modules():  # dropout off: the comparison is exact up to float error
            # "node": p stays, so lane dropout's attention node runs (the caller makes its masks keep everything)
            if isinstance(module, torch.nn.Dropout) and lane_dropout != "node":
                module.p = 0.0
    return padded, packed


def _embed(model, texts: list[str], device: str) -> torch.Tensor:
    features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in model.tokenize(texts).items()}
    return model(features)["sentence_embedding"]


# sdpa: one packed sequence, attention per bucket of rows (BUCKET_COST_SCORES 0: a bucket per length);
# eager: block-diagonal masks in bins of BIN_TOKENS (16: several bins with empty slots at their ends);
# lane-dropout-buckets: lane dropout's attention node per bucket (heads-first outputs), with masks that keep everything;
# lane-dropout-p0-buckets: its attention function at p = 0, heads-first from transformers' sdpa.
PATHS = {"buckets": ("sdpa", {"BUCKET_COST_SCORES": 0}), "one-bucket": ("sdpa", {"BUCKET_COST_SCORES": 10**9}),
         "lane-dropout-buckets": ("sdpa", {"BUCKET_COST_SCORES": 0}), "lane-dropout-p0-buckets": ("sdpa", {"BUCKET_COST_SCORES": 0}),
         "bins": ("eager", {"BIN_TOKENS": 16}), "one-bin": ("eager", {"BIN_TOKENS": 512})}  # fmt: skip


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta"])
def test_packed_forward_matches_the_padded_one_in_values_and_gradients(kind, path, device, tmp_path, monkeypatch):
    from hybridembed.modeling import dropout, packing
    from hybridembed.modeling.tiny import build_tiny_backbone

    attention, settings = PATHS[path]
    for name, value in settings.items():
        monkeypatch.setattr(packing, name, value)
    lane_dropout = None if not path.startswith("lane-dropout") else "sdpa" if "-p0-" in path else "node"
    if lane_dropout:
        nodes = []
        monkeypatch.setattr(dropout, "lane_keep_factor", lambda shape, p, dtype, device: (torch.ones(shape, dtype=dtype, device=device), 1.0))
        apply = dropout.LaneDropoutAttention.apply
        monkeypatch.setattr(dropout.LaneDropoutAttention, "apply", lambda *args: nodes.append(args[0].shape) or apply(*args))
    buckets = []
    plan_buckets = packing._plan_buckets
    monkeypatch.setattr(packing, "_plan_buckets", lambda cumulative: buckets.append(plan_buckets(cumulative)) or buckets[-1])

    backbone = build_tiny_backbone(tmp_path / kind, corpus_sentences(), kind=kind)
    padded, packed = _models(backbone, device, attention, lane_dropout)
    shapes = []
    packed[0].auto_model.register_forward_pre_hook(lambda m, args, kwargs: shapes.append(kwargs["input_ids"].shape), with_kwargs=True)
    texts = _texts()
    reference, result = _embed(padded, texts, device), _embed(packed, texts, device)
    assert (shapes[0][0] > 1) == (path == "bins")
    # the plan is made once per forward, not once per layer; a bucket per distinct length, or one
    assert len(buckets) == (attention == "sdpa")
    if buckets:
        lengths = packed.tokenize(texts)["attention_mask"].sum(dim=1)
        assert len(buckets[0].buckets) == (len(set(lengths.tolist())) if path.endswith("buckets") else 1)
    assert result.device.type == device and result.shape == reference.shape
    if lane_dropout:  # the node ran (on a CPU with dropout: elsewhere lane dropout is torch's), padded and per bucket
        assert bool(nodes) == (device == "cpu" and lane_dropout == "node")
    torch.testing.assert_close(result, reference, atol=2e-5, rtol=1e-4)
    weights = torch.linspace(-1, 1, reference.numel(), device=device).view_as(reference)
    (reference * weights).sum().backward()
    (result * weights).sum().backward()
    for (name, a), (_, b) in zip(padded.named_parameters(), packed.named_parameters()):
        if a.grad is None:
            assert b.grad is None or not b.grad.any(), name
            continue
        torch.testing.assert_close(b.grad, a.grad, atol=5e-5, rtol=1e-3, msg=name)


def test_packing_runs_only_while_training_and_saves_a_stock_folder(tiny_bert_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hybridembed.modeling.packing import packs_rows

    padded, packed = _models(tiny_bert_dir, "cpu")
    assert packs_rows(packed[0]) and not packs_rows(padded[0])
    calls = []
    backbone = packed[0].auto_model
    hook = backbone.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    texts = _texts()
    _embed(packed, texts, "cpu")
    assert len(calls) == 1 and calls[0][0] == 1  # one packed sequence ...
    tokens = int(packed.tokenize(texts)["attention_mask"].sum())
    assert calls[0][1] == tokens  # ... of exactly the real tokens
    packed.eval()
    torch.testing.assert_close(packed.encode(texts, convert_to_tensor=True), padded.eval().encode(texts, convert_to_tensor=True))
    assert len(calls) == 1  # eval: the stock padded forward (which calls the backbone's forward, not the module)
    hook.remove()
    packed.save(str(tmp_path / "folder"))
    reloaded = SentenceTransformer(str(tmp_path / "folder"))
    torch.testing.assert_close(reloaded.encode(texts, convert_to_tensor=True), padded.encode(texts, convert_to_tensor=True))


def test_varlen_backbones_get_cumulative_lengths_and_no_mask(tiny_bert_dir):
    """flash_attention_2/3 (GPU): transformers' varlen arguments instead of a mask; checked on the arguments, no kernel needed."""
    _, packed = _models(tiny_bert_dir, "cpu")
    backbone = packed[0].auto_model
    seen = {}

    def record(module, args, kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    backbone.register_forward_pre_hook(record, with_kwargs=True)
    backbone.config._attn_implementation = "flash_attention_2"
    features = packed.tokenize(["one two three", "four", "five six"])
    lengths = features["attention_mask"].sum(dim=1)
    with pytest.raises(RuntimeError, match="stop"):
        packed(features)
    assert "attention_mask" not in seen
    assert seen["cu_seq_lens_q"].tolist() == [0, *lengths.cumsum(0).tolist()] and seen["cu_seq_lens_q"].dtype == torch.int32
    assert seen["max_length_q"] == seen["max_length_k"] == int(lengths.max())
    assert seen["position_ids"][0].tolist() == [p for n in lengths.tolist() for p in range(n)]


def test_unsupported_backbones_are_a_recipe_error(tiny_decoder_dir):
    from hybridembed.errors import RecipeError
    from hybridembed.modeling.model import build_model
    from hybridembed.modeling.packing import enable_packing
    from hybridembed.recipe import ModelConfig

    model = build_model(ModelConfig(backbone=str(tiny_decoder_dir), pooling="last"))
    with pytest.raises(RecipeError, match="training.packing: backbone type 'qwen2' is not supported"):
        enable_packing(model)


@pytest.mark.parametrize("lane_dropout", [False, True])
def test_a_recipe_with_packing_trains(tiny_bert_dir, tmp_path, lane_dropout, monkeypatch):
    from hybridembed.modeling import dropout
    from hybridembed.modeling.packing import runs_packed_rows
    from hybridembed.recipe import Recipe
    from hybridembed.training.builder import prepare_training

    bucket_shapes = []  # lane dropout's attention node, called per bucket of the packed rows
    apply = dropout.LaneDropoutAttention.apply
    monkeypatch.setattr(dropout.LaneDropoutAttention, "apply", lambda q, *rest: bucket_shapes.append(q.shape) or apply(q, *rest))

    sentences = corpus_sentences(200)
    data = tmp_path / "pairs.jsonl"
    rows = [{"query": a, "positive": b} for a, b in zip(sentences[:32:2], sentences[1:32:2])]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = Recipe.model_validate(
        {
            "model": {"backbone": str(tiny_bert_dir), "max_seq_length": 32, "matryoshka_dims": [64, 32]},
            "datasets": [{"path": str(data), "task": "retrieval", "batch_size": 8}],
            "training": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "packing": True, "report_to": [], "logging_steps": 1,
                         "lane_dropout": lane_dropout},
        }
    )  # fmt: skip
    trainer = prepare_training(recipe)
    assert runs_packed_rows(trainer.model[0].auto_model.config._attn_implementation)
    trainer.train()
    assert [e["loss"] > 0 for e in trainer.state.log_history if "loss" in e] == [True, True]
    assert bool(bucket_shapes) == lane_dropout and (not lane_dropout or max(s[0] for s in bucket_shapes) > 1)  # rows per bucket, not one sequence


def test_the_prepared_gpu_check_runs_on_this_machine(tmp_path):
    """benchmarks/gpu_throughput.py --tiny: every arm trains and the table prints (on a GPU machine it runs full size)."""
    import subprocess
    import sys

    from helpers import REPO

    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), "--tiny", "--steps", "3", "--warmup", "1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout[done.stdout.index("| arm |") :]
    for arm in ("tiny/sdpa/padded", "tiny/sdpa/packed", "quickstart (MiniLM → 768, as shipped)"):
        assert f"| {arm} |" in table, table
