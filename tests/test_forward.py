"""The deduplicated, length-sorted, chunked forward gives the same embeddings and gradients as one forward per column."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridembed.losses.forward import ChunkPlan, embed_columns


def _texts(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "a man woman dog cat plays runs guitar piano the on in park street quickly slowly".split()
    return [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(n)]


@pytest.mark.parametrize("backbone", ["tiny_bert_dir", "tiny_decoder_dir"])
@pytest.mark.parametrize("chunk_rows", [None, 4, 7, ChunkPlan(4, 0), ChunkPlan(7, None), ChunkPlan(32)])
def test_sorted_chunked_forward_matches_per_column_forward(request, backbone, chunk_rows):
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    pooling = "last" if backbone == "tiny_decoder_dir" else "mean"
    model = build_model(ModelConfig(backbone=str(request.getfixturevalue(backbone)), pooling=pooling))
    model.eval()
    texts = [_texts(seed, 10) for seed in range(3)]
    texts[2][:4] = [texts[0][1], texts[0][1], texts[1][5], "a label"]  # repeated texts, as label-contrastive batches have
    texts[1][0] = "a label"
    columns = [model.preprocess(t) for t in texts]
    reference = [model(dict(c))["sentence_embedding"] for c in columns]
    grads_reference = torch.autograd.grad(
        sum(e.pow(2).sum() * (i + 1) for i, e in enumerate(reference)), [p for p in model.parameters() if p.requires_grad], allow_unused=True
    )
    chunked = embed_columns(model, [dict(c) for c in columns], chunk_rows=chunk_rows)
    for got, want in zip(chunked, reference):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(
        sum(e.pow(2).sum() * (i + 1) for i, e in enumerate(chunked)), [p for p in model.parameters() if p.requires_grad], allow_unused=True
    )
    for got, want in zip(grads, grads_reference):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


def test_each_distinct_text_goes_through_the_model_once(tiny_bert_dir):
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    model = build_model(ModelConfig(backbone=str(tiny_bert_dir)))
    seen_rows = []
    model[0].register_forward_pre_hook(lambda module, args: seen_rows.append(args[0]["input_ids"].shape[0]))
    labels = ["card arrival", "lost card", "top up"]
    columns = [model.preprocess(["where is my card"] * 2 + ["hello"] * 2), model.preprocess(labels[:2] * 2), model.preprocess([labels[2]] * 4)]
    embeddings = embed_columns(model, columns, chunk_rows=None)
    assert sum(seen_rows) == 5  # 2 queries + 3 labels, not 12 rows
    torch.testing.assert_close(embeddings[2][0], embeddings[2][3])


def _plan_cost(widths, ends, chunk_cost, hidden):
    starts = [0, *ends[:-1]]
    return sum(chunk_cost + (e - b) * max(w * (1 + w / (6 * hidden)) for w in widths[b:e]) for b, e in zip(starts, ends))


def _partitions(rows, max_rows):
    """Every way to cut `rows` rows in order into chunks of at most `max_rows`: lists of chunk ends."""
    if rows == 0:
        yield []
        return
    for last in range(1, min(max_rows, rows) + 1):
        for ends in _partitions(rows - last, max_rows):
            yield [*ends, rows]


@pytest.mark.parametrize("seed", range(20))
def test_chunk_plan_finds_the_cheapest_cuts(seed):
    rng = np.random.default_rng(seed)
    rows, max_rows, chunk_cost = int(rng.integers(1, 10)), int(rng.integers(1, 5)), int(rng.integers(0, 60))
    widths = sorted(rng.integers(1, 200, size=rows).tolist())
    if seed % 4 == 0:  # left padding: widths not in length order
        widths = rng.permutation(widths).tolist()
    ends = ChunkPlan(max_rows, chunk_cost).ends(widths, hidden=64)
    assert ends[-1] == rows and all(0 < e - b <= max_rows for b, e in zip([0, *ends[:-1]], ends))
    best = min(_plan_cost(widths, option, chunk_cost, 64) for option in _partitions(rows, max_rows))
    assert _plan_cost(widths, ends, chunk_cost, 64) == pytest.approx(best)


def test_chunk_plan_keeps_long_rows_apart_and_fixed_plans_cut_every_max_rows():
    widths = [5] * 20 + [40] * 4
    assert ChunkPlan(32, 128).ends(widths) == [20, 24]  # 20×5 + 4×40 + 2×128, not 24×40 + 128
    assert ChunkPlan(32, 10_000).ends(widths) == [24]  # a chunk dearer than the padding: one forward
    assert ChunkPlan(10, None).ends(widths) == [10, 20, 24]
    assert ChunkPlan(8, 128).ends([7]) == [1]
