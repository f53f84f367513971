"""Backbone families on tiny random configs: encoders and decoders, last-token pooling under both padding sides, EOS, positions, instructions, LoRA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import corpus_sentences
from hybridembed.recipe import ModelConfig

TEXTS = ["a man plays a guitar on the street", "a dog", "two women are cooking dinner together tonight"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """One tiny backbone per family kind, built on demand and shared by the tests of this module."""
    from hybridembed.modeling.tiny import build_tiny_backbone

    corpus, built = corpus_sentences(1500), {}

    def get(kind: str):
        if kind not in built:
            built[kind] = build_tiny_backbone(tmp_path_factory.mktemp(f"tiny-{kind}"), corpus, kind=kind, vocab_size=1000)
        return built[kind]

    return get


def _encode(model, texts, padding_side: str | None = None) -> np.ndarray:
    if padding_side is not None:
        model.tokenizer.padding_side = padding_side
    return model.encode(texts, batch_size=len(texts), convert_to_numpy=True)


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta", "modernbert", "qwen2", "llama", "gpt2"])
def test_every_family_builds_saves_and_reloads(kind, tiny_dirs, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hybridembed.modeling.backbones import is_decoder
    from hybridembed.modeling.model import build_model

    backbone = tiny_dirs(kind)
    pooling = "last" if kind in ("qwen2", "llama", "gpt2") else "mean"
    model = build_model(ModelConfig(backbone=str(backbone), pooling=pooling, max_seq_length=64))
    assert is_decoder(model[0].auto_model.config) == (pooling == "last")
    before = _encode(model, TEXTS)
    assert before.shape == (3, 64) and np.isfinite(before).all()
    model.save(str(tmp_path / "m"))
    reloaded = SentenceTransformer(str(tmp_path / "m"), device="cpu")  # plain sentence-transformers, no hybridembed hook
    np.testing.assert_allclose(_encode(reloaded, TEXTS), before, atol=1e-5)


@pytest.mark.parametrize("kind", ["qwen2", "llama", "gpt2"])
def test_last_token_embedding_is_the_same_under_left_and_right_padding(kind, tiny_dirs):
    from hybridembed.modeling.model import build_model

    model = build_model(ModelConfig(backbone=str(tiny_dirs(kind)), pooling="last", max_seq_length=64))
    tokenizer = model.tokenizer
    ids = tokenizer("a dog")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id  # EOS appended (llama/gpt2 tokenizers do not do it themselves)
    if kind == "llama":
        assert ids[0] == tokenizer.bos_token_id  # and the BOS it had is kept
    right, left = _encode(model, TEXTS, "right"), _encode(model, TEXTS, "left")
    alone = np.stack([_encode(model, [t])[0] for t in TEXTS])
    np.testing.assert_allclose(left, right, atol=1e-5)
    np.testing.assert_allclose(right, alone, atol=1e-5)


def test_without_mask_positions_a_left_padded_gpt2_batch_differs(tiny_dirs):
    """The check above can fail: GPT-2's learned positions shift under left padding unless positions follow the mask."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(tiny_dirs("gpt2")))
    transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
    plain = SentenceTransformer(modules=[transformer, Pooling(64, pooling_mode="lasttoken")], device="cpu")
    assert not np.allclose(_encode(plain, TEXTS, "left"), _encode(plain, TEXTS, "right"), atol=1e-3)


def test_extending_a_bert_from_128_to_1024_positions_encodes_a_1000_token_text(tiny_bert_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from hybridembed.modeling.model import build_model

    trained = AutoModel.from_pretrained(str(tiny_bert_dir)).embeddings.position_embeddings.weight.detach()
    assert trained.shape[0] == 128
    long_text = " ".join(corpus_sentences(400))
    for method in ("tile", "hierarchical"):
        model = build_model(ModelConfig(backbone=str(tiny_bert_dir), max_seq_length=1024, extend_positions=method))
        table = model[0].auto_model.embeddings.position_embeddings.weight.detach()
        assert table.shape[0] == 1024
        torch.testing.assert_close(table[:128], trained)  # trained positions unchanged
        if method == "tile":
            torch.testing.assert_close(table[300], trained[300 % 128])
        else:
            assert torch.cdist(table, table).add(torch.eye(1024) * 1e9).min() > 1e-4  # every position distinct
        features = model.tokenize([long_text])
        assert features["input_ids"].shape[1] == 1024  # truncated at 1024, not at 128
        tokens_1000 = model.tokenizer.decode(features["input_ids"][0][1:999])
        n_tokens = model.tokenize([tokens_1000])["input_ids"].shape[1]
        assert 990 <= n_tokens <= 1024
        embedding = model.encode([tokens_1000])
        assert embedding.shape == (1, 64) and np.isfinite(embedding).all()
    model.save(str(tmp_path / "long"))
    reloaded = SentenceTransformer(str(tmp_path / "long"), device="cpu")
    assert reloaded.max_seq_length == 1024
    np.testing.assert_allclose(reloaded.encode([tokens_1000]), embedding, atol=1e-5)


def test_hierarchical_decomposition_keeps_the_first_block_and_matches_su_formula():
    from hybridembed.modeling.positions import hierarchical_positions

    table = torch.randn(8, 4)
    out = hierarchical_positions(table, 64, alpha=0.4)
    torch.testing.assert_close(out[:8], table)
    u = (table - 0.4 * table[0]) / 0.6
    torch.testing.assert_close(out[3 * 8 + 5], 0.4 * u[3] + 0.6 * u[5])
    with pytest.raises(Exception, match="at most 64"):
        hierarchical_positions(table, 65)


def test_roberta_extension_keeps_reserved_rows_and_needs_a_method(tiny_dirs):
    from hybridembed.errors import RecipeError
    from hybridembed.modeling.model import build_model

    with pytest.raises(RecipeError, match="extend_positions"):
        build_model(ModelConfig(backbone=str(tiny_dirs("roberta")), max_seq_length=300))
    model = build_model(ModelConfig(backbone=str(tiny_dirs("roberta")), max_seq_length=300, extend_positions="tile"))
    table = model[0].auto_model.embeddings.position_embeddings
    assert table.num_embeddings == 302 and table.padding_idx == 1
    assert model.tokenize([" ".join(["word"] * 400)])["input_ids"].shape[1] == 300
    assert np.isfinite(model.encode(" ".join(["word"] * 400))).all()


def test_rope_decoder_passes_through_to_long_inputs(tiny_dirs):
    from hybridembed.modeling.model import build_model

    model = build_model(ModelConfig(backbone=str(tiny_dirs("qwen2")), pooling="last", max_seq_length=1024, extend_positions="tile"))
    text = " ".join(["word"] * 990)
    assert model.tokenize([text])["input_ids"].shape[1] > 900
    assert np.isfinite(model.encode([text])).all()


def test_instruction_goes_on_queries_only_and_is_saved_as_a_prompt(tiny_dirs, tmp_path):
    from hybridembed.data import load_datasets
    from hybridembed.recipe import Recipe
    from hybridembed.training.builder import prepare_training

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": f"question {i}", "positive": f"answer {i}"}) + "\n" for i in range(8)))
    recipe = Recipe.model_validate(
        {
            "model": {"backbone": str(tiny_dirs("qwen2")), "pooling": "last"},
            "datasets": [{"path": str(data), "task": "retrieval", "instruction": "Given a question, find its answer"}],
            "training": {"output_dir": str(tmp_path / "out"), "batch_size": 4, "max_steps": 1, "report_to": []},
        }
    )
    prefix = "Instruct: Given a question, find its answer\nQuery: "
    assert recipe.datasets[0].query_prefix == prefix and recipe.model.prompts == {"pairs": prefix}
    trainer = prepare_training(recipe, load_datasets(recipe.datasets))
    batch = next(iter(trainer.get_train_dataloader()))
    decode = trainer.model.tokenizer.decode
    assert decode(batch["query_input_ids"][0], skip_special_tokens=True).startswith("Instruct: Given a question")
    assert "Instruct" not in decode(batch["positive_input_ids"][0], skip_special_tokens=True)
    assert trainer.model.prompts["pairs"] == prefix
    with pytest.raises(Exception, match="end with"):
        Recipe.model_validate({"model": {"instruction_template": "{text} ({task})"}, "datasets": [{"path": "x", "instruction": "t"}]})


def test_lora_trains_an_adapter_and_saves_merged_or_as_adapter(tiny_dirs, tmp_path):
    pytest.importorskip("peft")
    from sentence_transformers import SentenceTransformer

    from hybridembed.modeling.lora import is_adapter_folder, merge_saved_adapter
    from hybridembed.modeling.model import build_model

    backbone = tiny_dirs("qwen2")
    model = build_model(ModelConfig(backbone=str(backbone), pooling="last", lora={"r": 4, "alpha": 8, "dropout": 0.0}))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.2)  # what training would do: a non-zero update
    with torch.no_grad():
        expected = model.encode(TEXTS)
    model.save(str(tmp_path / "adapter"))
    assert is_adapter_folder(tmp_path / "adapter")
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "adapter"), device="cpu").encode(TEXTS), expected, atol=1e-5)
    model.save(str(tmp_path / "merged"))
    merge_saved_adapter(tmp_path / "merged")
    assert not is_adapter_folder(tmp_path / "merged")
    merged = SentenceTransformer(str(tmp_path / "merged"), device="cpu")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    np.testing.assert_allclose(merged.encode(TEXTS), expected, atol=1e-5)
    base = build_model(ModelConfig(backbone=str(backbone), pooling="last")).encode(TEXTS)
    assert not np.allclose(base, expected, atol=1e-3)


# --- a sentence-transformers folder as backbone keeps its modules and settings -----------------------------------------


@pytest.fixture(scope="module")
def st_folder_with_dense(tiny_bert_dir, tmp_path_factory):
    """A tiny sentence-transformers folder: Transformer → Pooling(mean, include_prompt=False) → Dense(64→32, Tanh) → Normalize, with prompts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(3)
    transformer = Transformer(str(tiny_bert_dir), max_seq_length=64)
    modules = [transformer, Pooling(64, pooling_mode="mean", include_prompt=False), Dense(64, 32), Normalize()]
    source = SentenceTransformer(
        modules=modules,
        device="cpu",
        prompts={"query": "query: ", "document": "passage: "},
        default_prompt_name="query",
        similarity_fn_name="dot",
    )
    out = tmp_path_factory.mktemp("st-dense") / "model"
    source.save(str(out))
    return out


def test_a_sentence_transformers_backbone_keeps_its_dense_pooling_and_prompts(st_folder_with_dense, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

    from hybridembed.modeling.model import build_model

    original = SentenceTransformer(str(st_folder_with_dense), device="cpu")
    model = build_model(ModelConfig(backbone=str(st_folder_with_dense)), device="cpu")
    assert [type(m).__name__ for m in model] == [type(m).__name__ for m in original]
    dense, old_dense = next(m for m in model if isinstance(m, Dense)), next(m for m in original if isinstance(m, Dense))
    assert (dense.in_features, dense.out_features) == (64, 32)
    torch.testing.assert_close(dense.linear.weight, old_dense.linear.weight, rtol=0, atol=0)
    torch.testing.assert_close(dense.linear.bias, old_dense.linear.bias, rtol=0, atol=0)
    assert type(dense.activation_function) is type(old_dense.activation_function)  # Tanh kept
    pooling = next(m for m in model if isinstance(m, Pooling))
    assert pooling.pooling_mode == "mean" and pooling.include_prompt is False
    assert isinstance(model[-1], Normalize)
    assert model.prompts["query"] == "query: " and model.prompts["document"] == "passage: "
    assert model.default_prompt_name == "query" and model.similarity_fn_name == "dot"
    assert model.get_embedding_dimension() == 32
    for kwargs in ({}, {"prompt_name": "document"}, {"prompt": ""}):
        np.testing.assert_allclose(model.encode(TEXTS, **kwargs), original.encode(TEXTS, **kwargs), atol=1e-6)
    model.save(str(tmp_path / "saved"))  # and the saved folder carries them on
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert reloaded.prompts == model.prompts and reloaded.default_prompt_name == "query" and reloaded.similarity_fn_name == "dot"
    assert next(m for m in reloaded if isinstance(m, Pooling)).include_prompt is False
    np.testing.assert_allclose(reloaded.encode(TEXTS), original.encode(TEXTS), atol=1e-6)


def test_a_sentence_transformers_backbone_follows_the_recipe_where_it_says_otherwise(st_folder_with_dense):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

    from hybridembed.modeling.model import build_model

    original = SentenceTransformer(str(st_folder_with_dense), device="cpu")
    old_dense = next(m for m in original if isinstance(m, Dense))
    # projection_dim equal to the backbone's Dense (hidden → 32): that Dense is the projection and carries on training
    same = build_model(ModelConfig(backbone=str(st_folder_with_dense), projection_dim=32), device="cpu")
    denses = [m for m in same if isinstance(m, Dense)]
    assert len(denses) == 1
    torch.testing.assert_close(denses[0].linear.weight, old_dense.linear.weight, rtol=0, atol=0)
    np.testing.assert_allclose(same.encode(TEXTS), original.encode(TEXTS), atol=1e-6)
    # another projection_dim: a new Identity projection hidden → dim replaces the backbone's Dense
    wider = build_model(ModelConfig(backbone=str(st_folder_with_dense), projection_dim=96, prompts={"query": "q: "}), device="cpu")
    denses = [m for m in wider if isinstance(m, Dense)]
    assert len(denses) == 1 and (denses[0].in_features, denses[0].out_features) == (64, 96)
    assert isinstance(denses[0].activation_function, torch.nn.Identity)
    assert wider.get_embedding_dimension() == 96
    assert next(m for m in wider if isinstance(m, Pooling)).include_prompt is False  # everything else is kept
    assert wider.prompts == {"query": "q: ", "document": "passage: "}  # the recipe's prompts win
    assert wider.default_prompt_name == "query" and wider.similarity_fn_name == "dot"
    # pooling and normalize from the recipe
    cls = build_model(ModelConfig(backbone=str(st_folder_with_dense), pooling="cls", normalize=False), device="cpu")
    pooling = next(m for m in cls if isinstance(m, Pooling))
    assert pooling.pooling_mode == "cls" and pooling.include_prompt is False
    assert not any(isinstance(m, Normalize) for m in cls)
    assert any(isinstance(m, Dense) for m in cls)
