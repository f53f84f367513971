"""`hybridembed tokenizer extend` on tiny backbones: new CJK tokens reachable, old ids and English unchanged, rows = mean of old pieces, folder loads, trains (mlm) and reports fertility."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helpers import corpus_sentences

ZH_WORDS = ["北京", "大学", "图书馆", "我们", "喜欢", "学习", "中文", "今天", "天气", "很好", "朋友", "电脑", "手机", "还款", "花呗"]


def zh_sentences(count: int = 400, seed: int = 0) -> list[str]:
    """Hand-made Chinese 'sentences' (word sequences, no spaces) with a known small vocabulary."""
    rng = random.Random(seed)
    return ["".join(rng.choices(ZH_WORDS, k=rng.randint(3, 8))) + "。" for _ in range(count)]


@pytest.fixture(scope="module")
def extended(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict]:
    """The tiny sentence-transformers BERT (English-only vocabulary) extended with the hand-made Chinese corpus."""
    from hybridembed.modeling.tokenizer_extend import extend_backbone

    out = tmp_path_factory.mktemp("extended") / "model"
    report = extend_backbone(str(tiny_model_dir), zh_sentences(), out, vocab_size=200, held_out_fraction=0.1)
    return out, report


def _tokenizers(old_dir: Path, new_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(old_dir)), AutoTokenizer.from_pretrained(str(new_dir))


def test_new_multi_character_tokens_are_present_and_used(extended, tiny_model_dir):
    out, report = extended
    old, new = _tokenizers(tiny_model_dir, out)
    vocab = new.get_vocab()
    assert report["added_tokens"] > len(set("".join(ZH_WORDS)))  # characters and multi-character pieces
    assert any(len(t.removeprefix("##")) > 1 for t in vocab if t not in old.get_vocab())
    text = "我们喜欢北京大学的图书馆"  # 的 is unseen: it stays one [UNK], as BERT did, not the whole run
    tokens = new.tokenize(text)
    assert any(len(t.removeprefix("##")) > 1 for t in tokens), tokens
    assert tokens.count(new.unk_token) == 1 and len(tokens) < len(text)
    assert old.tokenize(text) == [old.unk_token] * len(text)


def test_old_ids_and_english_tokenization_unchanged(extended, tiny_model_dir):
    out, _ = extended
    old, new = _tokenizers(tiny_model_dir, out)
    new_vocab = new.get_vocab()
    assert all(new_vocab[token] == i for token, i in old.get_vocab().items())
    english = corpus_sentences(500) + ["Hello, WORLD!  don't stop — café naïve 42", ""]
    for text in english:
        assert new(text)["input_ids"] == old(text)["input_ids"], text
    pair = ("a man plays guitar", "someone is playing")
    assert new(*pair)["input_ids"] == old(*pair)["input_ids"]


def test_new_rows_are_the_mean_of_their_old_pieces(extended, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from hybridembed.modeling.tokenizer_extend import old_pieces

    out, report = extended
    old_weights = next(v for k, v in load_file(str(tiny_model_dir / "model.safetensors")).items() if k.endswith("word_embeddings.weight"))
    new_weights = next(v for k, v in load_file(str(out / "model.safetensors")).items() if k.endswith("word_embeddings.weight"))
    assert new_weights.shape == (report["vocab_size_after"], old_weights.shape[1])
    assert (new_weights[: old_weights.shape[0]] == old_weights).all()
    old = AutoTokenizer.from_pretrained(str(tiny_model_dir)).backend_tokenizer
    new_vocab = AutoTokenizer.from_pretrained(str(out)).get_vocab()
    added = sorted((i, t) for t, i in new_vocab.items() if i >= old_weights.shape[0])
    assert len(added) == report["added_tokens"]
    unk = old.token_to_id("[UNK]")
    checked_known = 0
    for index, token in added:
        pieces = old_pieces(old, token, "WordPiece")
        known = [p for p in pieces if p != unk] or [unk]
        checked_known += known != [unk]
        expected = old_weights[known].mean(dim=0)
        assert (new_weights[index] - expected).abs().max() < 1e-6, token
    assert report["added_from_unknown_only"] == len(added) - checked_known


def test_rows_of_known_pieces_are_their_mean(tmp_path, tiny_bert_dir):
    """A raw HF backbone that already knows 北 and 京 alone: the new token 北京 starts at their mean (no [UNK] involved)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from hybridembed.modeling.tiny import build_tiny_backbone
    from hybridembed.modeling.tokenizer_extend import extend_backbone

    base = build_tiny_backbone(tmp_path / "base", corpus_sentences(1000) + ["北 京 天 气"] * 5, kind="bert", vocab_size=600)
    out = tmp_path / "ext"
    extend_backbone(str(base), ["北京天气很好"] * 30 + ["北京"] * 30, out, vocab_size=80, held_out_fraction=0)
    old, new = AutoTokenizer.from_pretrained(str(base)), AutoTokenizer.from_pretrained(str(out))
    old_w = load_file(str(base / "model.safetensors"))["embeddings.word_embeddings.weight"]
    new_w = load_file(str(out / "model.safetensors"))["embeddings.word_embeddings.weight"]
    ids = old.get_vocab()
    assert "北京" in new.get_vocab() and new.tokenize("北京") == ["北京"]
    expected = (old_w[ids["北"]] + old_w[ids["京"]]) / 2
    assert (new_w[new.get_vocab()["北京"]] - expected).abs().max() < 1e-6
    assert (new_w[new.get_vocab()["##京"]] - old_w[ids["京"]]).abs().max() < 1e-6  # the ## piece of a known character


def test_saved_folder_loads_in_sentence_transformers_and_with_use_fast_false(extended):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    out, _ = extended
    model = SentenceTransformer(str(out), device="cpu")
    embeddings = model.encode(["我们喜欢北京", "hello world"], convert_to_numpy=True)
    assert embeddings.shape == (2, 64)
    assert abs(float((embeddings[0] ** 2).sum()) - 1) < 1e-4  # the folder's Normalize is kept
    assert not (out / "vocab.txt").exists()  # a slow BERT tokenizer rebuilt from it would split CJK again
    fast, slow = AutoTokenizer.from_pretrained(str(out)), AutoTokenizer.from_pretrained(str(out), use_fast=False)
    text = "今天天气很好，我们学习中文"
    assert slow.tokenize(text) == fast.tokenize(text)


def test_build_model_and_the_mlm_stage_run_on_the_extended_folder(extended, tmp_path):
    from transformers import AutoTokenizer

    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig, TextsConfig, TrainingConfig
    from hybridembed.training.mlm import run_mlm

    out, _ = extended
    assert build_model(ModelConfig(backbone=str(out))).encode(["北京"]).shape == (1, 64)
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(zh_sentences(64, seed=1)) + "\n", encoding="utf-8")
    training = TrainingConfig(output_dir=str(tmp_path / "mlm"), max_steps=2, batch_size=8, logging_steps=1, report_to=[])
    run = run_mlm(ModelConfig(backbone=str(out), max_seq_length=32), [TextsConfig(path=str(corpus))], training, 0.3, resume=False)
    mlm_out = run.folder
    steps = [json.loads(line).get("step") for line in (mlm_out / "training_log.jsonl").read_text().splitlines()]
    assert max(steps) == 2 == run.global_step
    text = "我们喜欢北京大学"  # the mlm stage re-saves the tokenizer: it must keep the CJK runs
    assert AutoTokenizer.from_pretrained(str(mlm_out)).tokenize(text) == AutoTokenizer.from_pretrained(str(out)).tokenize(text)


def test_byte_level_bpe_backbone_extends_without_changing_english(tmp_path, tiny_decoder_dir):
    from transformers import AutoTokenizer

    from hybridembed.modeling.tokenizer_extend import extend_backbone

    out = tmp_path / "bpe"
    report = extend_backbone(str(tiny_decoder_dir), zh_sentences(), out, vocab_size=600, held_out_fraction=0.1)
    old, new = AutoTokenizer.from_pretrained(str(tiny_decoder_dir)), AutoTokenizer.from_pretrained(str(out))
    assert report["added_tokens"] > 0 and report["after"]["tokens"] < report["before"]["tokens"] / 2
    for text in corpus_sentences(300):
        assert new(text)["input_ids"] == old(text)["input_ids"]


def test_fertility_on_a_hand_made_case():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from hybridembed.modeling.tokenizer_extend import is_mostly_cjk, measure_fertility

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "北京": 1, "大": 2, "学": 3, "hello": 4}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # "北京 大 学" → 3 tokens over 4 characters, 3 words; "hello world" → hello + [UNK]: 2 tokens, 10 characters, 2 words.
    f = measure_fertility(tok, ["北京 大 学", "hello world"])
    assert (f.texts, f.characters, f.words, f.tokens, f.unknown) == (2, 14, 5, 5, 1)
    assert f.tokens_per_char == pytest.approx(5 / 14) and f.tokens_per_word == pytest.approx(1.0) and f.unknown_rate == pytest.approx(0.2)
    assert is_mostly_cjk(["北京大学 ok"]) and not is_mostly_cjk(["hello 北京"])


def test_report_is_saved_and_held_apart_text_is_not_trained_on(extended):
    from hybridembed.modeling.tokenizer_extend import REPORT_FILE, split_held_out

    out, report = extended
    assert json.loads((out / REPORT_FILE).read_text(encoding="utf-8")) == report
    assert report["measure"] == "tokens_per_char" and report["held_out_texts"] > 0
    assert report["after"]["tokens_per_char"] < report["before"]["tokens_per_char"]
    assert report["after"]["unknown_rate"] < report["before"]["unknown_rate"] == 1.0
    train, held = split_held_out(["a", "b", "c", "d", "a"], 0.5, seed=0)
    assert sorted(train + held) == ["a", "b", "c", "d"] and len(held) == 2 and not set(train) & set(held)


def test_cli_extends_and_prints_the_report(tmp_path, tiny_model_dir, capsys):
    from hybridembed.cli import main

    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(zh_sentences(200)) + "\n", encoding="utf-8")
    code = main(["tokenizer", "extend", "--backbone", str(tiny_model_dir), "--corpus", str(corpus), "--vocab-size", "150", "--out", str(tmp_path / "m")])
    printed = capsys.readouterr().out
    assert code == 0 and "| before |" in printed and "| after |" in printed
    assert (tmp_path / "m" / "tokenizer_extension.json").is_file()


@pytest.mark.parametrize("content", [None, "", "\n  \n"], ids=["missing", "empty", "blank-lines"])
def test_cli_corpus_errors_are_one_line(tmp_path, content, capsys):
    from hybridembed.cli import main

    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_text(content, encoding="utf-8")
    code = main(["tokenizer", "extend", "--backbone", "bundled:all-MiniLM-L6-v2", "--corpus", str(corpus), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (f"{corpus}: file not found" if content is None else f"{corpus}: empty file") in err
    assert not (tmp_path / "m").exists()


def test_corpus_sources_take_data_files_with_fields(tmp_path):
    from hybridembed.commands.tokenizer import parse_corpus_source, read_corpus

    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("北京很好\t天气很好\t5\n我们学习\t中文\t3\n", encoding="utf-8")
    jsonl = tmp_path / "triples.jsonl"
    jsonl.write_text(json.dumps({"query": "北京", "pos": ["大学"], "neg": ["手机"]}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert parse_corpus_source(f"{tsv}:0,1") == (tsv, [0, 1])
    assert parse_corpus_source(str(tsv)) == (tsv, None)
    assert read_corpus([f"{tsv}:0,1", str(jsonl)]) == ["北京很好", "天气很好", "我们学习", "中文", "北京", "大学", "手机"]


def test_benchmark_quick_prints_fertility_and_the_score_table_last(tmp_path, shared_data, capsys):
    """benchmarks/bilingual_extend.py --quick: a tiny BERT extended, both arms trained 2+2 steps and evaluated (capped)."""
    import importlib.util

    from helpers import REPO

    spec = importlib.util.spec_from_file_location("bilingual_extend", REPO / "benchmarks" / "bilingual_extend.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.main(["--quick", "--out", str(tmp_path / "bench"), "--threads", "1"])
    printed = capsys.readouterr().out
    assert summary["english"]["changed_without_unk"] == 0
    assert summary["extension"]["after"]["unknown_rate"] < summary["extension"]["before"]["unknown_rate"]
    assert "| zh held-apart" in printed and "| en STS-B train" in printed
    table = printed.strip().split("\n\n")[-1].splitlines()
    assert table[0] == "| task | unextended | extended | Δ |" and table[-1].startswith("| **average**")
    assert len(table) == 2 + len(summary["eval"]["extended"]["tasks"]) + 1
    assert (tmp_path / "bench" / "results.json").is_file()
