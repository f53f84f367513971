"""Local tasks through mteb on the tiny model: every task type's main metric equals a hand/scipy/sklearn computation."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from hybridembed.errors import HybridembedError
from hybridembed.evaluation import parse_suite, run_suite
from hybridembed.modeling.model import truncate_embeddings

QUICKSTART = Path(__file__).resolve().parents[1] / "data" / "quickstart"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from hybridembed.modeling.model import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def sts_rows() -> list[dict[str, str]]:
    with open(QUICKSTART / "stsb_dev.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:120]


def _tsv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in ([header] if header else []) + rows:
            f.write("\t".join(str(x) for x in row) + "\n")
    return path


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _run(model, tasks, dims=None):
    return run_suite(model, parse_suite({"tasks": tasks}), dims=dims, batch_size=32, show_progress=False)


def test_sts_equals_scipy_at_every_dim_and_encodes_once(tiny, sts_rows, tmp_path):
    path = _tsv(tmp_path / "sts.tsv", [[r["sentence1"], r["sentence2"], r["score"]] for r in sts_rows], ["s1", "s2", "gold"])
    task = {"name": "sts", "type": "sts", "path": str(path), "columns": {"text1": "s1", "text2": "s2", "score": "gold"}}
    results = _run(tiny, [task], dims=[16, 64])
    gold = [float(r["score"]) for r in sts_rows]
    e1 = tiny.encode([r["sentence1"] for r in sts_rows], batch_size=32)
    e2 = tiny.encode([r["sentence2"] for r in sts_rows], batch_size=32)
    dims = results["tasks"]["sts"]["dims"]
    assert list(dims) == ["64", "16"] and results["dims"] == ["64", "16"]
    for dim in (64, 16):
        a, b = truncate_embeddings(e1, dim), truncate_embeddings(e2, dim)
        # The evaluator embeds the distinct texts in its own batches; on this random tiny model the
        # cosines lie within ~1e-3 of each other, so float-level batch effects swap a few ranks
        # (seen: 2.6e-4 on a loaded CI machine). A wrong metric or dim is off by far more.
        assert dims[str(dim)]["main_score"] == pytest.approx(spearmanr(gold, _cos(a, b))[0], abs=1e-3)
    distinct = len({r["sentence1"] for r in sts_rows} | {r["sentence2"] for r in sts_rows})
    assert dims["64"]["texts_encoded"] == distinct  # deduplicated
    assert dims["16"]["texts_encoded"] == 0  # the second dim reuses the cache
    assert dims["64"]["main_score"] != dims["16"]["main_score"]
    assert results["averages"]["overall"]["64"] == dims["64"]["main_score"]
    json.dumps(results)  # serialisable as is


def test_pair_classification_headerless_with_index_columns(tiny, sts_rows, tmp_path):
    # MRPC layout: label, id1, id2, text1, text2 — no header; label 1 when the STS gold score >= 3
    rows = [[int(float(r["score"]) >= 3), i, i, r["sentence1"], r["sentence2"]] for i, r in enumerate(sts_rows)]
    path = _tsv(tmp_path / "pairs.tsv", rows)
    task = {"name": "pc", "type": "pair_classification", "path": str(path), "header": False, "columns": {"text1": 3, "text2": 4, "label": 0}}
    entry = _run(tiny, [task])["tasks"]["pc"]
    metrics = entry["dims"]["64"]["metrics"]
    labels = np.array([r[0] for r in rows])
    cos = _cos(tiny.encode([r[3] for r in rows]), tiny.encode([r[4] for r in rows]))
    assert metrics["cosine_ap"] == pytest.approx(average_precision_score(labels, cos), abs=1e-4)
    # best accuracy over all thresholds on the cosine score
    order = np.sort(cos)
    cuts = np.concatenate([[-np.inf], (order[:-1] + order[1:]) / 2, [np.inf]])
    best = max(((cos > t) == labels).mean() for t in cuts)
    assert metrics["cosine_accuracy"] == pytest.approx(best, abs=1e-6)
    assert metrics["max_ap"] == max(metrics[f"{s}_ap"] for s in ("cosine", "dot", "euclidean", "manhattan", "similarity"))
    assert entry["main_metric"] == "max_ap" and entry["dims"]["64"]["main_score"] == metrics["max_ap"]


def test_pair_classification_label_map_drops_other_labels(tiny, sts_rows, tmp_path):
    names = ["entailment", "neutral", "contradiction"]
    rows = [[r["sentence1"], r["sentence2"], names[i % 3]] for i, r in enumerate(sts_rows[:60])]
    path = _tsv(tmp_path / "nli.tsv", rows)
    task = {
        "name": "nli",
        "type": "pair_classification",
        "path": str(path),
        "header": False,
        "main_score": "max_accuracy",
        "columns": {"text1": 0, "text2": 1, "label": 2},
        "label_map": {"entailment": 1, "contradiction": 0},
    }
    entry = _run(tiny, [task])["tasks"]["nli"]
    assert entry["main_metric"] == "max_accuracy"
    kept = [r for r in rows if r[2] != "neutral"]
    assert entry["dims"]["64"]["texts_encoded"] == len({r[0] for r in kept} | {r[1] for r in kept})
    bad = dict(task, label_map=None)
    with pytest.raises(Exception, match="expected a number"):
        _run(tiny, [bad])


def test_classification_follows_mteb_protocol(tiny, tmp_path):
    with open(QUICKSTART / "banking77_train.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    train, test = rows[:800], rows[800:]
    for name, part in (("train.csv", train), ("test.csv", test)):
        with open(tmp_path / name, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(part)
    task = {
        "name": "cls",
        "type": "classification",
        "path": str(tmp_path / "test.csv"),
        "train_path": str(tmp_path / "train.csv"),
        "columns": {"text": "text", "label": "category"},
    }
    metrics = _run(tiny, [task])["tasks"]["cls"]["dims"]["64"]["metrics"]
    # mteb's protocol by hand: 10 experiments, each re-shuffling the index list with RandomState(42) and taking
    # the first 8 training rows per label; logistic regression (max_iter 100, random_state 42); mean accuracy.
    from sklearn.linear_model import LogisticRegression

    x_train = tiny.encode([r["text"] for r in train])
    x_test = tiny.encode([r["text"] for r in test])
    y_train, y_test = [r["category"] for r in train], np.array([r["category"] for r in test])
    idxs, accuracies = list(range(len(train))), []
    for _ in range(10):
        np.random.RandomState(42).shuffle(idxs)
        counts: dict[str, int] = defaultdict(int)
        chosen = []
        for i in idxs:
            if counts[y_train[i]] < 8:
                chosen.append(i)
                counts[y_train[i]] += 1
        clf = LogisticRegression(max_iter=100, random_state=42).fit(x_train[chosen], [y_train[i] for i in chosen])
        accuracies.append((clf.predict(x_test) == y_test).mean())
    assert metrics["accuracy"] == pytest.approx(float(np.mean(accuracies)), abs=0.01)
    assert len(metrics["scores_per_experiment"]) == 10


def test_clustering_v_measure_is_one_for_separable_clusters(tiny, tmp_path):
    sentences = ["A man is playing a guitar.", "The stock market fell sharply today.", "A cat sleeps on the sofa.", "Rain is expected tomorrow."]
    rows = [[sentences[i % 4], f"topic{i % 4}"] for i in range(40)]
    path = _tsv(tmp_path / "clu.tsv", rows, ["text", "label"])
    task = {"name": "clu", "type": "clustering", "path": str(path), "columns": {"text": "text", "label": "label"}}
    entry = _run(tiny, [task])["tasks"]["clu"]
    assert entry["main_metric"] == "v_measure"
    assert entry["dims"]["64"]["main_score"] == pytest.approx(1.0)
    shuffled = [[s, f"topic{(i * 7) % 3}"] for i, (s, _) in enumerate(rows)]  # labels unrelated to the text
    _tsv(path, shuffled, ["text", "label"])
    assert _run(tiny, [task])["tasks"]["clu"]["dims"]["64"]["main_score"] < 0.5


def _ndcg10(ranked: list[str], grades: dict[str, int]) -> float:
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(grades.values(), reverse=True)[:10]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


def test_retrieval_beir_folder_ndcg_equals_hand_computation(tiny, sts_rows, tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    unique = list(dict.fromkeys(r["sentence2"] for r in sts_rows))  # identical texts would tie (broken by doc id)
    docs = {f"d{i}": text for i, text in enumerate(unique[:30])}
    queries = {f"q{i}": sts_rows[i]["sentence1"] for i in range(6)}
    qrels = {f"q{i}": {f"d{i}": 2, f"d{i + 10}": 1} for i in range(5)}  # q5 has no relevant doc: left out
    with open(folder / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items())
    with open(folder / "queries.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items())
    with open(folder / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t{g}\n" for q, rel in qrels.items() for d, g in rel.items())
    entry = _run(tiny, [{"name": "ret", "type": "retrieval", "path": str(folder)}])["tasks"]["ret"]
    metrics = entry["dims"]["64"]["metrics"]
    doc_ids = list(docs)
    d_emb = tiny.encode([docs[d] for d in doc_ids])
    expected = []
    for q, rel in qrels.items():
        scores = _cos(np.repeat(tiny.encode([queries[q]]), len(doc_ids), 0), d_emb)
        ranked = [doc_ids[i] for i in np.argsort(-scores)]
        expected.append(_ndcg10(ranked, rel))
    assert entry["main_metric"] == "ndcg_at_10"
    assert metrics["ndcg_at_10"] == pytest.approx(np.mean(expected), abs=2e-4)
    assert metrics["recall_at_100"] == 1.0


def test_reranking_rows_map_and_mrr_equal_hand_computation(tiny, sts_rows, tmp_path):
    # WikiQA layout: one candidate per row; candidates of other queries must not be ranked
    rows, cands = [], {}
    unique = list(dict.fromkeys(r["sentence2"] for r in sts_rows))  # identical texts would tie
    for q in range(4):
        query = sts_rows[q]["sentence1"]
        group = [(unique[q + 10 * k], int(k in (q % 3, 3))) for k in range(5)]
        cands[query] = group
        rows += [[f"Q{q}", query, text, label] for text, label in group]
    path = _tsv(tmp_path / "rr.tsv", rows, ["qid", "question", "sentence", "label"])
    task = {"name": "rr", "type": "reranking", "path": str(path), "columns": {"query_id": "qid", "query": "question", "document": "sentence", "label": "label"}}
    entry = _run(tiny, [task])["tasks"]["rr"]
    metrics = entry["dims"]["64"]["metrics"]
    aps, rrs = [], []
    for query, group in cands.items():
        scores = _cos(np.repeat(tiny.encode([query]), len(group), 0), tiny.encode([t for t, _ in group]))
        labels = [group[i][1] for i in np.argsort(-scores)]
        hits = np.cumsum(labels)
        aps.append(sum(hits[i] / (i + 1) for i, lab in enumerate(labels) if lab) / sum(labels))
        rrs.append(1 / (labels.index(1) + 1))
    assert entry["main_metric"] == "map_at_1000"
    assert metrics["map_at_1000"] == pytest.approx(np.mean(aps), abs=2e-4)
    assert metrics["mrr_at_10"] == pytest.approx(np.mean(rrs), abs=2e-4)


def test_named_task_uses_mteb_metadata_when_data_is_served(tiny, sts_rows, monkeypatch):
    """The named-task path is real mteb code; only the hub download is replaced by local rows."""
    from datasets import Dataset, DatasetDict

    def fake_load_dataset(path, revision=None, **kwargs):
        assert path == "mteb/stsbenchmark-sts"
        data = {
            "sentence1": [r["sentence1"] for r in sts_rows],
            "sentence2": [r["sentence2"] for r in sts_rows],
            "score": [float(r["score"]) for r in sts_rows],
        }
        return DatasetDict({"test": Dataset.from_dict(data)})

    monkeypatch.setattr("mteb.abstasks.abstask.load_dataset", fake_load_dataset)
    entry = _run(tiny, [{"name": "mteb:STSBenchmark"}])["tasks"]["mteb:STSBenchmark"]
    gold = [float(r["score"]) for r in sts_rows]
    cos = _cos(tiny.encode([r["sentence1"] for r in sts_rows]), tiny.encode([r["sentence2"] for r in sts_rows]))
    assert entry["type"] == "sts" and entry["split"] == "test"
    # mteb embeds the texts in batches of its own: float noise (~1e-7) reorders near-tied cosines of the
    # random tiny model, which moved the Spearman by 2e-4 in one run; a wrong split or column moves it by ~0.1
    assert entry["dims"]["64"]["main_score"] == pytest.approx(spearmanr(gold, cos)[0], abs=2e-3)


def test_named_task_offline_fails_with_one_line(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HybridembedError, match="cannot load the data of mteb task 'STSBenchmark'") as info:
        _run(tiny, [{"name": "mteb:STSBenchmark"}])
    assert "\n" not in str(info.value)
    with pytest.raises(HybridembedError, match="has no task named"):
        _run(tiny, [{"name": "mteb:NoSuchTask123"}])


def test_dims_must_fit_the_model(tiny, sts_rows, tmp_path):
    path = _tsv(tmp_path / "s.tsv", [[r["sentence1"], r["sentence2"], r["score"]] for r in sts_rows[:10]])
    task = {"name": "s", "type": "sts", "path": str(path), "header": False, "columns": {"text1": 0, "text2": 1, "score": 2}}
    with pytest.raises(HybridembedError, match="between 1 and the model's dimension 64"):
        _run(tiny, [task], dims=[128])
