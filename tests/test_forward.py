"""The deduplicated, length-sorted, chunked forward gives the same embeddings and gradients as one forward per column."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridembed.losses.forward import embed_columns


def _texts(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "a man woman dog cat plays runs guitar piano the on in park street quickly slowly".split()
    return [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(n)]


@pytest.mark.parametrize("backbone", ["tiny_bert_dir", "tiny_decoder_dir"])
@pytest.mark.parametrize("chunk_rows", [None, 4, 7])
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
