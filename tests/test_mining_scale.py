"""Mining over a corpus kept on disk: the text store (dedup, lookups, reuse), ivfpq against exact search, and a heap that never holds the corpus's texts."""

from __future__ import annotations

import hashlib
import json
import sys
import tracemalloc

import numpy as np
import pytest

from helpers import corpus_sentences


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """faiss's codebook training ran several times slower with two OpenMP threads on a loaded two-core machine."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from hybridembed.modeling.model import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def scale_data(tmp_path_factory) -> dict:
    """~4,300 corpus lines: 4,000 distinct sentences, repeats, blank-ish lines, some queries, and a near-duplicate of 20 queries."""
    sentences = list(dict.fromkeys(corpus_sentences(12000)))
    assert len(sentences) > 4300
    queries, positives, body = sentences[:40], sentences[40:80], sentences[300:4300]
    planted = {q: "the " + q for q in queries[:20]}  # scores close to the query: ranked first by exact search
    lines = list(body)
    for i in range(0, len(body), 13):
        lines.insert(i, body[(7 * i) % len(body)])  # repeated texts
    for i in range(0, len(lines), 400):
        lines.insert(i, ["", "   ", "\t"][i % 3])  # blank-ish lines: skipped
    lines += positives[:30] + queries[:10] + list(planted.values())  # 10 positives are not in the corpus; 10 queries are
    folder = tmp_path_factory.mktemp("scale")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [{"query": q, "positives": [p]} for q, p in zip(queries, positives)]
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = set(body) | set(positives[:30]) | set(queries[:10]) | set(planted.values())
    return {"corpus": corpus, "data": data, "rows": rows, "texts": texts, "planted": planted, "cache": folder / "cache", "lines": lines}


def _mine(model, scale_data, tmp_path, **options):
    from hybridembed.mining.offline import MiningOptions, load_queries, mine_hard_negatives

    out = tmp_path / f"mined-{options.get('index', 'flat')}-{len(list(tmp_path.iterdir()))}.jsonl"
    report = mine_hard_negatives(
        model, load_queries(scale_data["data"]), out, scale_data["corpus"], MiningOptions(**options), cache_dir=scale_data["cache"], progress=False
    )
    return report, [json.loads(line) for line in out.read_text().splitlines()]


def test_the_store_keeps_unique_non_blank_texts_in_first_seen_order_and_looks_them_up(scale_data):
    from hybridembed.mining.cache import corpus_fingerprint
    from hybridembed.mining.corpus import open_corpus

    store = open_corpus(scale_data["corpus"], cache_dir=scale_data["cache"])
    expected = list(dict.fromkeys(t for t in scale_data["lines"] if t.strip()))
    assert len(store) == len(scale_data["texts"]) == len(expected)
    assert list(store) == expected and store[5] == expected[5] and store[-1] == expected[-1] and store[10:13] == expected[10:13]
    assert corpus_fingerprint(store) == corpus_fingerprint(expected)  # so a list of the same texts shares the embedding cache
    probe = [expected[17], "not in the corpus", expected[0], expected[-1]]
    assert store.lookup(probe).tolist() == [17, -1, 0, len(expected) - 1]


def test_a_hash_collision_never_makes_another_text_look_present(scale_data, tmp_path, monkeypatch):
    import hybridembed.mining.corpus as corpus

    monkeypatch.setattr(corpus, "text_hash", lambda encoded: len(encoded) % 7)  # nearly everything collides
    store = corpus.open_corpus(["alpha", "beta", "gamma!", "delta"], cache_dir=tmp_path)
    assert list(store) == ["alpha", "beta", "gamma!"]  # "delta" shared a hash with "alpha": dropped as a duplicate (documented)
    assert store.lookup(["alpha", "beta", "delta", "omega"]).tolist() == [0, 1, -1, -1]  # verified against the stored bytes


def test_ivfpq_mines_corpus_texts_finds_the_planted_near_duplicates_and_reuses_the_store(model, scale_data, tmp_path, monkeypatch):
    rows, texts, planted = scale_data["rows"], scale_data["texts"], scale_data["planted"]
    options = {"rank_range": (1, 10), "num_negatives": 3, "sampling": "top"}
    flat_report, flat = _mine(model, scale_data, tmp_path, index="flat", **options)
    assert flat_report.corpus_size == len(texts) and flat_report.positives_in_window > 0  # the queries in the corpus were skipped
    # The random tiny model's vectors are bunched (cosines ~0.97): 32 one-byte codes of 64 dims, not the default 8.
    report, mined = _mine(model, scale_data, tmp_path, index="ivfpq", pq_m=32, **options)
    assert report.text_store_reused and report.cache_hit  # the second run read neither the file nor the model's embeddings
    for row, out in zip(rows, mined):
        assert out["negatives"] and set(out["negatives"]) <= texts
        assert not set(out["negatives"]) & {*row["positives"], row["query"]}
    found = [planted[r["query"]] in out["negatives"] for r, out in zip(rows, mined) if r["query"] in planted]
    assert all(planted[r["query"]] == out["negatives"][0] for r, out in zip(rows, flat) if r["query"] in planted)
    assert sum(found) >= 18, found  # ivfpq's recall of the exact top hit
    overlap = np.mean([len(set(a["negatives"]) & set(b["negatives"])) / 3 for a, b in zip(mined, flat)])
    assert overlap >= 0.6, overlap
    for a, b in zip(mined, flat):  # re-scored from the memmap: a negative both found scores the same
        exact = dict(zip(b["negatives"], b["negative_scores"]))
        assert all(abs(s - exact[t]) < 1e-5 for t, s in zip(a["negatives"], a["negative_scores"]) if t in exact)
    # A third run must not read the corpus file at all.
    import hybridembed.mining.corpus as corpus

    monkeypatch.setattr(corpus, "iter_corpus_texts", lambda *a, **k: pytest.fail("the corpus file was read again"))
    again, _ = _mine(model, scale_data, tmp_path, index="ivfpq", pq_m=32, **options)
    assert again.text_store_reused and again.text_store == report.text_store


def test_ivfpq_keeps_pq_m_bytes_per_vector(scale_data, model):
    from hybridembed.mining.cache import embed_corpus
    from hybridembed.mining.corpus import open_corpus
    from hybridembed.mining.index import Searcher

    vectors = embed_corpus(model, open_corpus(scale_data["corpus"], cache_dir=scale_data["cache"]), cache_dir=scale_data["cache"], progress=False).vectors
    dim = vectors.shape[1]
    default = Searcher(vectors, "ivfpq")
    assert default.index.code_size == dim // 8 and default.index.ntotal == len(vectors)  # 8 bytes of codes for 64 dims, not 256
    assert Searcher(vectors, "ivfpq", pq_m=4).index.code_size == 4
    with pytest.raises(ValueError, match="must divide"):
        Searcher(vectors, "ivfpq", pq_m=7)


def test_a_pq_m_that_does_not_divide_the_dimension_fails_before_anything_is_read(model, scale_data, tmp_path, monkeypatch):
    import hybridembed.mining.offline as offline
    from hybridembed.errors import HybridembedError

    monkeypatch.setattr(offline, "open_corpus", lambda *a, **k: pytest.fail("the corpus was opened"))
    with pytest.raises(HybridembedError, match=r"--pq-m 7: must divide the embedding dimension 64"):
        _mine(model, scale_data, tmp_path, index="ivfpq", pq_m=7)


class HashEncoder:
    """A stand-in for a SentenceTransformer that embeds a text by its BLAKE2b digest: instant, so 200k texts take seconds."""

    prompts: dict = {}

    def get_embedding_dimension(self) -> int:
        return 32

    def encode(self, texts, **_) -> np.ndarray:
        raw = np.frombuffer(b"".join(hashlib.blake2b(t.encode(), digest_size=32).digest() for t in texts), dtype=np.uint8)
        vectors = raw.reshape(len(texts), 32).astype(np.float32) - 127.5
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_mining_200k_texts_keeps_them_out_of_the_heap(tmp_path):
    from hybridembed.mining.offline import MiningOptions, load_queries, mine_hard_negatives, read_corpus

    n = 200_000
    corpus = tmp_path / "corpus.txt"
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(n):
            j = i % 190_000  # 10k repeats
            f.write(f"passage {j} on topic {j % 977}: a short line of corpus text\n")
    as_strings = sum(sys.getsizeof(f"passage {i} on topic {i % 977}: a short line of corpus text") + 8 for i in range(190_000))
    rows = [
        {
            "query": f"passage {i} on topic {i % 977}: a short line of corpus text",
            "positives": [f"passage {i + 1} on topic {(i + 1) % 977}: a short line of corpus text"],
        }
        for i in range(50)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = load_queries(data)

    def peak(run) -> int:
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    in_a_list = peak(lambda: read_corpus(corpus))  # the old way: the measurement does see a corpus-sized list
    assert in_a_list > as_strings
    options = MiningOptions(rank_range=(1, 30), num_negatives=5)
    reports = []
    mined = peak(
        lambda: reports.append(mine_hard_negatives(HashEncoder(), dataset, tmp_path / "out.jsonl", corpus, options, tmp_path / "cache", False, "hash"))
    )
    assert reports[0].corpus_size == 190_000 and reports[0].negatives_written == 5 * len(rows)
    # Measured: 3.5 MB (~17 bytes per line, the dedup sort) against 21 MB of strings and a 30 MB peak for the list.
    assert mined < as_strings / 4, f"peak {mined} B while mining; the texts as strings: {as_strings} B; read into a list: {in_a_list} B"
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all(len(r["negatives"]) == 5 and r["query"] not in r["negatives"] for r in lines)
    # Each query is a corpus text and ranks first (score 1): found by its hash, skipped.
    assert reports[0].positives_in_window >= len(rows) and all(r["negative_ranks"][0] >= 2 for r in lines)
