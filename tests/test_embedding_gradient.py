"""Sparse-backward embeddings (hybridembed.modeling.embedding_gradient): the same dense gradients as nn.Embedding, on every device."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hybridembed.losses.forward import ChunkPlan, embed_columns
from hybridembed.modeling.embedding_gradient import SparseBackwardEmbedding, use_sparse_embedding_backward


def _tiny_models(tiny_bert_dir, device):
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    dense = build_model(ModelConfig(backbone=str(tiny_bert_dir))).to(device=device, dtype=torch.float64)
    dense.train()
    sparse = copy.deepcopy(dense)
    assert use_sparse_embedding_backward(sparse) == 3  # word, position and token-type tables
    return dense, sparse


def _columns(model, device):
    texts = [["a man plays the guitar in the park quickly"] * 2 + ["dog", "", "the cat runs on the street slowly " * 6], ["dog", "piano", "a woman plays"]]
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model.preprocess(t).items()} for t in texts]


def _backward(model, columns, chunks):
    embeddings = embed_columns(model, [dict(c) for c in columns], chunk_rows=chunks)
    sum(e.pow(2).sum() * (i + 1) for i, e in enumerate(embeddings)).backward()


@pytest.mark.parametrize("chunks", [None, ChunkPlan(2, None)], ids=["one forward", "three chunks"])
def test_gradients_equal_nn_embedding_and_stay_dense(tiny_bert_dir, device, chunks):
    dense, sparse = _tiny_models(tiny_bert_dir, device)
    for model in (dense, sparse):
        for _ in range(2):  # a second backward accumulates, as gradient accumulation does
            _backward(model, _columns(model, device), chunks)
    for (name, want), got in zip(dense.named_parameters(), sparse.parameters()):
        if want.grad is None:  # unused by the forward (the pooler)
            assert got.grad is None, name
            continue
        assert got.grad.layout is torch.strided, name
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-12, msg=name)
    word = sparse[0].auto_model.embeddings.word_embeddings
    assert isinstance(word, SparseBackwardEmbedding) and word.weight.grad.abs().sum() > 0
    torch.optim.AdamW(sparse.parameters(), lr=1e-3, foreach=True).step()  # the optimizer takes what it gets


def test_tied_tables_and_padding_rows_get_the_dense_gradient(device):
    torch.manual_seed(0)
    dense = nn.Embedding(11, 4, padding_idx=0, device=device, dtype=torch.float64)
    with torch.no_grad():
        dense.weight[0] = 1.0  # the padding row: no gradient from lookups, one from the tied head
    sparse = copy.deepcopy(dense)
    use_sparse_embedding_backward(sparse)
    ids = torch.tensor([[3, 3, 0, 7], [0, 0, 10, 3]], device=device)  # repeats and padding rows
    for table in (dense, sparse):
        hidden = table(ids)
        logits = hidden @ table.weight.T  # an MLM head tied to the table: a dense gradient meets the sparse one
        (logits.pow(2).sum() + table(ids[:, :2]).sum()).backward()
    torch.testing.assert_close(sparse.weight.grad, dense.weight.grad, rtol=1e-12, atol=1e-12)
    assert sparse.weight.grad.layout is torch.strided and sparse.weight.grad[0].abs().sum() > 0  # the tied head's share of row 0


def test_inference_and_frozen_tables_create_no_gradient(device):
    table = nn.Embedding(5, 3, device=device)
    use_sparse_embedding_backward(table)
    ids = torch.tensor([1, 4], device=device)
    with torch.no_grad():
        table(ids)
    table.eval()
    table(ids)
    assert table.weight.grad is None
    frozen = nn.Embedding(5, 3, device=device).requires_grad_(False)
    assert use_sparse_embedding_backward(frozen) == 0 and type(frozen) is nn.Embedding


def test_the_recipe_default_swaps_the_tables_and_can_turn_it_off(tmp_path, tiny_bert_dir):
    from hybridembed.recipe import Recipe
    from hybridembed.training.builder import prepare_training

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(f'{{"query": "question {i}", "positive": "answer {i}"}}\n' for i in range(8)))

    def word_table(**training):
        recipe = Recipe.model_validate(
            {
                "model": {"backbone": str(tiny_bert_dir), "max_seq_length": 16},
                "datasets": [{"path": str(data), "task": "retrieval", "batch_size": 4}],
                "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "report_to": [], **training},
            }
        )
        return type(prepare_training(recipe).model[0].auto_model.embeddings.word_embeddings)

    assert word_table() is SparseBackwardEmbedding
    assert word_table(sparse_embedding_backward=False) is nn.Embedding
