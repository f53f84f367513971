"""The collator's tokenizer (hybridembed.data.tokenize) gives exactly what sentence-transformers' preprocess gives, on ragged text."""

from __future__ import annotations

import pytest
import torch

from hybridembed.data.collator import DatasetView, HybridCollator
from hybridembed.data.tokenize import converts_lists_exactly, text_tokenizer
from hybridembed.tasks import TaskType

# empty, one character, repeated, far past max_seq_length, CJK, emoji, combining marks, control characters, only spaces
RAGGED = ["", "a", "the same text", "the same text", " ".join(["word"] * 300), "北京是中国的首都", "🙂 ok 🙂", "e\u0301cole", "tab\tnew\nline", "   "]


def _model(backbone: str, max_seq_length: int):
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    return build_model(ModelConfig(backbone=backbone, max_seq_length=max_seq_length))


def assert_same_features(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, expected in theirs.items():
        if torch.is_tensor(expected):
            assert torch.is_tensor(ours[key]) and ours[key].dtype == expected.dtype, key
            assert torch.equal(ours[key], expected), key
        else:
            assert ours[key] == expected, key


@pytest.mark.parametrize("backbone", ["tiny_bert_dir", "tiny_decoder_dir", "bundled"])
@pytest.mark.parametrize("texts", [RAGGED, RAGGED[:1], RAGGED[4:5], []], ids=["ragged", "one-empty", "one-long", "none"])
def test_text_tokenizer_equals_preprocess(request, backbone, texts):
    model = _model("bundled" if backbone == "bundled" else str(request.getfixturevalue(backbone)), max_seq_length=24)
    assert_same_features(text_tokenizer(model)(list(texts)), model.preprocess(list(texts)))


def test_the_fast_path_is_taken_for_an_encoder_and_left_to_preprocess_otherwise(tiny_bert_dir):
    model = _model(str(tiny_bert_dir), max_seq_length=24)
    assert converts_lists_exactly(model) and text_tokenizer(model) != model.preprocess
    model[0].query_expansion = {"strategy": "fixed", "length": 8, "token": None}  # preprocess edits tensors afterwards
    assert not converts_lists_exactly(model) and text_tokenizer(model) == model.preprocess


def test_collated_batches_are_the_same_with_either_tokenizer(tiny_bert_dir):
    """Rows with 0, 1 and 3 negatives and a repeated text: every column, label and id the same."""
    model = _model(str(tiny_bert_dir), max_seq_length=16)
    views = {"r": DatasetView(TaskType.RETRIEVAL, 3, query_prefix="q: ", passage_prefix="p: ")}
    rows = [
        {"dataset_name": "r", "row_id": 0, "query": "what is a cat", "positives": ["a cat is an animal"], "negatives": []},
        {"dataset_name": "r", "row_id": 1, "query": "", "positives": ["empty query"], "negatives": ["one negative"]},
        {"dataset_name": "r", "row_id": 2, "query": "what is a cat", "positives": ["x " * 200], "negatives": ["n1", "n2", "n3", "n1"]},
    ]
    fast, stock = HybridCollator(text_tokenizer(model), views, seed=3)(rows), HybridCollator(model.preprocess, views, seed=3)(rows)
    assert fast.keys() == stock.keys() and any(key.startswith("negative_3_") for key in fast)
    for key in stock:
        if key == "label":
            assert all(torch.equal(fast[key][k], stock[key][k]) for k in stock[key])
        elif torch.is_tensor(stock[key]):
            assert fast[key].dtype == stock[key].dtype and torch.equal(fast[key], stock[key]), key
        else:
            assert fast[key] == stock[key], key
