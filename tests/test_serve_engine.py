"""The serve engine tokenizes each batch once: its rows equal `model.encode`, its counts the tokenizer's own."""

from __future__ import annotations

import numpy as np
import pytest

from hybridembed.modeling.model import load_model
from hybridembed.serve.engine import ServedModel, _select, _token_counts, plan_passes

TEXTS = [
    "A man is playing a guitar.",
    "short",
    "Two dogs run through a field of tall grass while a third one sleeps in the shade of an old tree.",
    "A woman slices an onion.",
    "x",
    "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
    "hello world",
]


@pytest.fixture()
def model(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def _reference_counts(model, texts, prompt=""):
    """Tokens per text as the old engine counted them: a separate tokenizer call, one token past the limit."""
    limit = model.max_seq_length
    ids = model.tokenizer([prompt + t for t in texts], truncation=True, max_length=limit + 1)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    return np.minimum(lengths, limit), lengths > limit


@pytest.mark.parametrize("batch_size", [None, 1, 3, 8])
def test_rows_equal_model_encode_and_counts_come_from_the_same_tokenization(model, batch_size, monkeypatch):
    served = ServedModel.from_model(model, "tiny")
    calls = []
    original = model.preprocess
    monkeypatch.setattr(model, "preprocess", lambda texts, **kw: calls.append(len(texts)) or original(texts, **kw))
    embeddings, counts, truncated = served.encode(TEXTS, batch_size=batch_size)
    assert calls == [len(TEXTS)]  # one tokenization for the whole batch, whatever the passes
    monkeypatch.undo()
    want = model.encode(TEXTS, batch_size=batch_size or 32, convert_to_numpy=True)
    assert embeddings.dtype == np.float32 and embeddings.shape == want.shape
    np.testing.assert_allclose(embeddings, want, atol=1e-6, rtol=0)
    want_counts, want_truncated = _reference_counts(model, TEXTS)
    assert counts.tolist() == want_counts.tolist() and truncated.tolist() == want_truncated.tolist()


def test_prompts_and_truncate_dim_match_model_encode(model):
    model.prompts = {"query": "query: ", "document": "passage: "}
    model.default_prompt_name = "document"
    model.truncate_dim = 16
    served = ServedModel.from_model(model, "tiny")
    for prompt_name, prompt in ((None, "passage: "), ("query", "query: ")):
        embeddings, counts, _ = served.encode(TEXTS, prompt_name, batch_size=2)
        want = model.encode(TEXTS, prompt_name=prompt_name, convert_to_numpy=True)
        assert embeddings.shape == (len(TEXTS), 16)
        np.testing.assert_allclose(embeddings, want, atol=1e-6, rtol=0)
        assert counts.tolist() == _reference_counts(model, TEXTS, prompt)[0].tolist()


@pytest.mark.parametrize("limit", [5, 7, 12])
def test_truncation_flags_tell_a_cut_text_from_one_that_just_fits(model, limit):
    model.max_seq_length = limit
    served = ServedModel.from_model(model, "tiny")
    # texts of 1..limit+3 words: with [CLS] and [SEP], "w " * (limit - 2) fills the limit exactly
    texts = [" ".join(["w"] * k) for k in range(1, limit + 2)] + TEXTS
    embeddings, counts, truncated = served.encode(texts, batch_size=4)
    want_counts, want_truncated = _reference_counts(model, texts)
    assert counts.tolist() == want_counts.tolist()
    assert truncated.tolist() == want_truncated.tolist() and truncated.any() and not truncated.all()
    assert counts[limit - 3] == limit and not truncated[limit - 3]  # exactly at the limit, nothing cut
    np.testing.assert_allclose(embeddings, model.encode(texts, convert_to_numpy=True), atol=1e-6, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_pass_gets_the_features_its_texts_would_get_tokenized_alone(model, side):
    """Slicing the batch's features (rows, then the padding columns none of them needs) equals
    tokenizing the pass's texts on their own, on whichever side the tokenizer pads."""
    model.tokenizer.padding_side = side
    features = model.preprocess(TEXTS)
    counts = _token_counts(features)
    rows = np.array([4, 1, 6])  # the three shortest
    part = _select(features, rows, int(counts[rows].max()), left_padded=side == "left")
    alone = model.preprocess([TEXTS[i] for i in rows])
    assert set(part) == set(alone)
    for key, value in alone.items():
        if hasattr(value, "shape"):
            assert part[key].tolist() == value.tolist(), key
        else:
            assert part[key] == value, key


def test_pass_plan_splits_long_from_short_and_merges_alike_texts():
    alike = np.array([12, 11, 12, 10, 12, 11, 12, 10] * 4)
    (rows,) = plan_passes(alike, 32)  # padding 2 tokens a text: never worth a pass
    assert sorted(rows.tolist()) == list(range(32))
    mixed = np.array([250, 8, 9, 240, 10, 8, 9, 8] * 4)
    plan = plan_passes(mixed, 32)
    assert [len(p) for p in plan] == [8, 24] and set(mixed[plan[0]]) == {250, 240}
    capped = plan_passes(alike, 5)
    assert max(len(p) for p in capped) <= 5 and sorted(np.concatenate(capped).tolist()) == list(range(32))
    for rows in plan_passes(mixed, 3):  # each pass holds texts of neighbouring lengths, longest first
        assert list(mixed[rows]) == sorted(mixed[rows], reverse=True)
