"""The length-sorted, chunked forward gives the same embeddings and gradients as one forward per column."""

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
    from hybridembed.model import build_model
    from hybridembed.recipe import ModelConfig

    pooling = "last" if backbone == "tiny_decoder_dir" else "mean"
    model = build_model(ModelConfig(backbone=str(request.getfixturevalue(backbone)), pooling=pooling))
    model.eval()
    columns = [model.preprocess(_texts(seed, 10)) for seed in range(3)]
    reference = [model(dict(c))["sentence_embedding"] for c in columns]
    grads_reference = torch.autograd.grad(sum(e.pow(2).sum() * (i + 1) for i, e in enumerate(reference)), [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    chunked = embed_columns(model, [dict(c) for c in columns], chunk_rows=chunk_rows)
    for got, want in zip(chunked, reference):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(sum(e.pow(2).sum() * (i + 1) for i, e in enumerate(chunked)), [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    for got, want in zip(grads, grads_reference):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
