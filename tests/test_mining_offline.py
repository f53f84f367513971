"""Offline mining on the tiny model, checked against a brute-force ranking: rank window, no positives, guard, cache, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import corpus_sentences


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from hybridembed.modeling.model import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def mining_data(tmp_path_factory) -> tuple[Path, list[dict], list[str]]:
    """24 rows (some with two positives, two whose query is also a corpus text) and a corpus of 300 other real sentences."""
    sentences = list(dict.fromkeys(corpus_sentences(1200)))
    rows = []
    for i in range(24):
        positives = [sentences[2 * i + 1]] + ([sentences[600 + i]] if i % 3 == 0 else [])
        rows.append({"query": sentences[2 * i], "positives": positives})
    corpus = sentences[100:400] + [p for r in rows for p in r["positives"]] + [rows[0]["query"], rows[1]["query"]]
    folder = tmp_path_factory.mktemp("mining")
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, rows, corpus


@pytest.fixture(scope="module")
def sims(model, mining_data) -> np.ndarray:
    """Cosine of every query with every corpus text, computed without faiss or the cache."""
    _, rows, corpus = mining_data
    q = model.encode([r["query"] for r in rows], normalize_embeddings=True)
    c = model.encode(corpus, normalize_embeddings=True)
    return q @ c.T


def _mine(model, data, corpus, tmp_path, **options):
    from hybridembed.mining.offline import MiningOptions, load_queries, mine_hard_negatives

    out = tmp_path / f"mined-{len(list(tmp_path.iterdir()))}.jsonl"
    cache = data.parent / "cache"  # shared by the tests of this module: the corpus is embedded once
    report = mine_hard_negatives(model, load_queries(data), out, corpus, MiningOptions(**options), cache_dir=cache, progress=False)
    return report, [json.loads(line) for line in out.read_text().splitlines()]


def test_negatives_come_from_the_rank_window_and_are_never_positives(model, mining_data, sims, tmp_path):
    data, rows, corpus = mining_data
    lo, hi = 5, 40
    report, mined = _mine(model, data, corpus, tmp_path, rank_range=(lo, hi), num_negatives=4, seed=1)
    assert len(mined) == len(rows) and report.negatives_written == 4 * len(rows)
    for i, (row, out) in enumerate(zip(rows, mined)):
        assert out["query"] == row["query"] and out["positives"] == row["positives"]
        assert len(out["negatives"]) == 4 and not set(out["negatives"]) & {*row["positives"], row["query"]}
        assert out["negative_scores"] == sorted(out["negative_scores"], reverse=True)
        for text, score, rank in zip(out["negatives"], out["negative_scores"], out["negative_ranks"]):
            true = sims[i, corpus.index(text)]
            assert score == pytest.approx(true, abs=1e-4)
            # Brute-force rank (ties allowed either way) must meet the requested window.
            best_rank, worst_rank = 1 + int((sims[i] > true + 1e-5).sum()), int((sims[i] >= true - 1e-5).sum())
            assert best_rank <= rank <= worst_rank and lo <= rank <= hi


def test_top_sampling_matches_brute_force_and_positives_inside_the_window_are_skipped(model, mining_data, sims, tmp_path):
    data, rows, corpus = mining_data
    report, mined = _mine(model, data, corpus, tmp_path, rank_range=(1, 30), num_negatives=5, sampling="top")
    assert report.positives_in_window > 0  # the exclusion was exercised: positives do rank in 1..30
    for i, (row, out) in enumerate(zip(rows, mined)):
        excluded = {corpus.index(t) for t in (*row["positives"], row["query"]) if t in corpus}
        order = [j for j in np.argsort(-sims[i], kind="stable")[:30] if j not in excluded][:5]
        np.testing.assert_allclose(out["negative_scores"], sims[i, order], atol=1e-4)


def test_false_negative_guard_is_relative_to_the_weakest_positive(model, mining_data, sims, tmp_path):
    data, rows, corpus = mining_data
    report, mined = _mine(model, data, corpus, tmp_path, rank_range=(1, 60), num_negatives=6, max_ratio=0.97, margin=0.01)
    assert report.dropped_by_guard > 0
    for i, (row, out) in enumerate(zip(rows, mined)):
        weakest = min(sims[i, corpus.index(p)] for p in row["positives"])
        np.testing.assert_allclose(out["positive_scores"], [sims[i, corpus.index(p)] for p in row["positives"]], atol=1e-4)
        for score in out["negative_scores"]:
            assert score < 0.97 * weakest + 1e-6 and score < weakest - 0.01 + 1e-6


def test_cache_is_reused_resumed_and_keyed_by_weights(model, tmp_path):
    import torch

    from hybridembed.mining.cache import embed_corpus

    texts = corpus_sentences(300)[:120]
    first = embed_corpus(model, texts, cache_dir=tmp_path, chunk_size=40, progress=False)
    assert first.reused_rows == 0 and first.vectors.shape == (120, 64)
    np.testing.assert_allclose(first.vectors, model.encode(texts, normalize_embeddings=True), atol=1e-5)
    calls = []
    original = model.encode
    model.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        again = embed_corpus(model, texts, cache_dir=tmp_path, chunk_size=40, progress=False)
    finally:
        model.encode = original
    assert again.hit and again.path == first.path and not calls
    meta = json.loads((first.path / "meta.json").read_text())
    (first.path / "meta.json").write_text(json.dumps({**meta, "done": 80}))  # as if interrupted after two chunks
    resumed = embed_corpus(model, texts, cache_dir=tmp_path, chunk_size=40, progress=False)
    assert resumed.reused_rows == 80 and resumed.path == first.path
    np.testing.assert_allclose(resumed.vectors, first.vectors, atol=1e-6)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    try:
        changed = embed_corpus(model, texts, cache_dir=tmp_path, chunk_size=40, progress=False)
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(1e-3)
    assert changed.path != first.path and changed.reused_rows == 0


def test_mine_cli_reads_flagembedding_and_writes_our_format(tiny_model_dir, tmp_path, capsys):
    from hybridembed.cli import main
    from hybridembed.data import load_dataset
    from hybridembed.recipe import DatasetConfig

    sentences = list(dict.fromkeys(corpus_sentences(400)))
    source = tmp_path / "flag.jsonl"  # FlagEmbedding's own field names
    source.write_text(
        "".join(json.dumps({"query": sentences[i], "pos": [sentences[i + 1]], "neg": sentences[i + 2 : i + 14]}) + "\n" for i in range(0, 300, 15))
    )
    for index in ("ivf", "hnsw"):
        out = tmp_path / f"mined-{index}.jsonl"
        args = ["mine", "--model", str(tiny_model_dir), "--data", str(source), "--range", "3", "12", "--num-negatives", "3"]
        code = main([*args, "--index", index, "--out", str(out), "--cache-dir", str(tmp_path / "c"), "--no-progress"])
        printed = capsys.readouterr().out
        assert code == 0 and f"{index} index" in printed
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(lines) == 20 and all(len(r["negatives"]) == len(r["negative_scores"]) == 3 for r in lines)
        assert all(3 <= rank <= 12 for r in lines for rank in r["negative_ranks"])
        assert all(not set(r["negatives"]) & set(r["positives"]) for r in lines)
        reread = load_dataset(DatasetConfig(path=str(out), task="retrieval"))  # extra score fields are ignored by the reader
        assert [r["negatives"] for r in reread.rows] == [r["negatives"] for r in lines]
    assert "reused" in printed  # the second index kind reused the first one's embeddings
    assert main(["mine", "--model", str(tiny_model_dir), "--data", str(source), "--range", "9", "3", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "--range 9 3" in capsys.readouterr().err


def test_read_corpus_takes_txt_lines_or_a_record_field_deduplicated(tmp_path):
    from hybridembed.errors import HybridembedError
    from hybridembed.mining.offline import read_corpus

    txt = tmp_path / "c.txt"
    txt.write_text("alpha beta\n\ngamma delta\nalpha beta\n")
    assert read_corpus(txt) == ["alpha beta", "gamma delta"]
    beir = tmp_path / "corpus.jsonl"
    beir.write_text('{"_id": "1", "title": "", "text": "first passage"}\n{"_id": "2", "body": "x"}\n')
    with pytest.raises(HybridembedError, match=r"corpus.jsonl:2: text: missing"):
        read_corpus(beir)
    assert read_corpus(beir, text_field="_id") == ["1", "2"]
