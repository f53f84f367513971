"""The Arrow store of validated rows: reuse without re-validation, keys, atomic entries, ranks sharing one entry, bounded memory, and hub sources."""

from __future__ import annotations

import json
import multiprocessing
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from hybridembed.data import load_dataset, loading
from hybridembed.data.arrow_store import CACHE_ENV, RowWriter, cache_root
from hybridembed.errors import DataError
from hybridembed.recipe import DatasetConfig, recipe_from_mapping
from hybridembed.training.sampling import DatasetPlan, TaskBatchSampler


@pytest.fixture()
def store(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "store"))
    return tmp_path / "store"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


RAGGED = [
    {"query": "q0", "positive": "p0"},  # no negatives
    {"query": "q1", "positive": "p1", "negatives": ["n1"]},  # one
    {"query": "q2", "positives": ["p2", "p2b"], "negatives": [f"n{i}" for i in range(12)]},  # many
    {"query": "q0", "positive": "p0", "negatives": ["p0", "n3"]},  # repeated row; a negative equal to its positive
]


def test_second_load_reuses_the_store_without_validating(store, tmp_path, monkeypatch):
    path = _write(tmp_path / "pairs.jsonl", RAGGED)
    first = load_dataset(DatasetConfig(path=str(path), task="retrieval"))
    assert not first.cache_hit and len(first) == 4
    assert first.skipped["negatives equal to a positive (removed)"] == 1

    def no_validation(*args, **kwargs):
        raise AssertionError("validated again")

    monkeypatch.setattr(loading, "convert", no_validation)
    again = load_dataset(DatasetConfig(path=str(path), task="retrieval"))
    assert again.cache_hit and "validated earlier" in again.summary()
    assert list(again.rows) == list(first.rows)
    assert again.rows[2] == {"query": "q2", "positives": ["p2", "p2b"], "negatives": [f"n{i}" for i in range(12)], "label": None}
    assert again.rows[0]["negatives"] == [] and again.rows[3]["negatives"] == ["n3"]
    assert again.skipped == first.skipped
    assert again.to_hf()["row_id"] == [0, 1, 2, 3]
    assert again.table.cache_files, "the rows are memory-mapped from the store, not held in memory"


def test_an_edited_file_or_other_settings_are_validated_again(store, tmp_path):
    path = _write(tmp_path / "pairs.jsonl", RAGGED)
    load_dataset(DatasetConfig(path=str(path), task="retrieval"))
    assert not load_dataset(DatasetConfig(path=str(path), task="retrieval", max_samples=2)).cache_hit
    assert len(load_dataset(DatasetConfig(path=str(path), task="retrieval", max_samples=2))) == 2
    _write(path, RAGGED + [{"query": "q9", "positive": "p9"}])
    edited = load_dataset(DatasetConfig(path=str(path), task="retrieval"))
    assert not edited.cache_hit and len(edited) == 5


def test_a_bad_file_publishes_no_entry_and_reports_every_line(store, tmp_path):
    rows = RAGGED + [{"query": "", "positive": "p"}, {"query": "q\ud800x", "positive": "p"}]
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_dataset(DatasetConfig(path=str(path), task="retrieval"))
    assert err.value.problems == [
        f"{path}:5: query: empty or whitespace-only text",
        f"{path}:6: query: contains a lone surrogate (U+D800) at character 1",
    ]
    assert not [p for p in store.iterdir() if not p.name.endswith(".lock")]


def test_a_pass_interrupted_while_writing_leaves_nothing_and_the_next_run_builds_it(store, tmp_path, monkeypatch):
    path = _write(tmp_path / "pairs.jsonl", [{"query": f"q{i}", "positive": f"p{i}"} for i in range(50)])
    original = RowWriter.add

    def dies_at_row_30(self, row):
        if self.rows == 30:
            raise KeyboardInterrupt
        original(self, row)

    monkeypatch.setattr(RowWriter, "add", dies_at_row_30)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(DatasetConfig(path=str(path), task="retrieval"))
    assert not [p for p in store.iterdir() if not p.name.endswith(".lock")], "no entry and no staging folder left"
    monkeypatch.setattr(RowWriter, "add", original)
    rebuilt = load_dataset(DatasetConfig(path=str(path), task="retrieval"))
    assert not rebuilt.cache_hit and len(rebuilt) == 50


def _load_in_process(path: str, store: str, queue) -> None:
    os.environ[CACHE_ENV] = store
    dataset = load_dataset(DatasetConfig(path=path, task="retrieval"))
    queue.put((dataset.cache_hit, len(dataset), dataset.store))


def test_ranks_loading_together_build_one_entry(store, tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [{"query": f"q{i}", "positive": f"p{i}", "negatives": [f"n{i}"]} for i in range(20000)])
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_load_in_process, args=(str(path), str(store), queue)) for _ in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert sorted(hit for hit, _, _ in results) == [False, True], "one rank validates, the other reuses its entry"
    assert {n for _, n, _ in results} == {20000} and len({s for _, _, s in results}) == 1


def test_validation_memory_does_not_grow_with_rows(store, tmp_path):
    """Python-heap peak of validating 100k rows vs 10k rows: the writer holds one record batch, never the rows."""
    peaks = {}
    for n in (10_000, 100_000):
        path = _write(tmp_path / f"p{n}.jsonl", [{"query": f"query {i} " * 4, "positive": f"passage {i} " * 8, "negatives": [f"neg {i}"]} for i in range(n)])
        tracemalloc.start()
        dataset = load_dataset(DatasetConfig(path=str(path), task="retrieval"))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(dataset) == n
    assert peaks[100_000] < 1.5 * peaks[10_000] + (2 << 20), peaks


def _greedy_reference(indices: list[int], texts_of, batch_size: int) -> list[list[int]]:
    """The list-based greedy fill the sampler used before it streamed (a row sharing a text waits for the next batch)."""
    pending, out = list(indices), []
    while len(pending) >= 2:
        batch, texts, deferred = [], set(), []
        for position, index in enumerate(pending):
            if texts.isdisjoint(texts_of(index)):
                batch.append(index)
                texts |= texts_of(index)
                if len(batch) == batch_size:
                    deferred.extend(pending[position + 1 :])
                    break
            else:
                deferred.append(index)
        if len(batch) < 2:
            break
        out.append(batch)
        pending = deferred
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_duplicate_free_batches_equal_the_list_based_fill(seed):
    rng = np.random.default_rng(seed)
    texts = [{f"t{int(a)}", f"u{int(b)}"} for a, b in rng.integers(0, 40, size=(300, 2))]  # many shared texts
    plan = DatasetPlan("d", len(texts), 8, texts_of=lambda i: texts[i])
    permutation = rng.permutation(len(texts))
    streamed = list(TaskBatchSampler._no_duplicate_batches(permutation, plan))
    assert streamed == _greedy_reference(permutation.tolist(), plan.texts_of, 8)
    assert all(len(set().union(*(texts[i] for i in b))) == sum(len(texts[i]) for i in b) for b in streamed)


# --- hub sources -----------------------------------------------------------------------------


def _hub_cache(root: Path, repo: str, rows: list[dict], commit: str = "c" * 40) -> None:
    """The layout `huggingface-cli download --repo-type dataset` leaves in the hub cache."""
    folder = root / "hub" / f"datasets--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit / "data").mkdir(parents=True)
    _write(folder / "snapshots" / commit / "data" / "train.jsonl", rows)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def test_hub_dataset_read_offline_from_the_local_cache(store, tmp_path, monkeypatch):
    _hub_cache(tmp_path / "hf", "acme/pairs", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(6)])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    recipe = recipe_from_mapping(
        {"model": {"backbone": "x"}, "datasets": [{"path": "hf:acme/pairs", "task": "retrieval", "columns": {"query": "question", "positive": "answer"}}]},
        base=tmp_path,
    )
    cfg = recipe.datasets[0]
    assert cfg.path == "hf:acme/pairs" and cfg.name == "pairs"
    dataset = load_dataset(cfg)
    assert len(dataset) == 6 and dataset.rows[5]["query"] == "q5" and dataset.rows[5]["positives"] == ["a5"]
    assert load_dataset(cfg).cache_hit

    with pytest.raises(DataError, match=r"hf:acme/missing \(train\): cannot load the hub dataset: .*huggingface-cli download"):
        load_dataset(DatasetConfig(path="hf:acme/missing", task="retrieval"))

    _hub_cache(tmp_path / "hf", "acme/broken", [{"question": "q", "answer": ""}])
    with pytest.raises(DataError) as err:
        load_dataset(DatasetConfig(path="hf:acme/broken", task="retrieval", columns={"query": "question", "positive": "answer"}))
    assert err.value.problems == ["hf:acme/broken (train):row 1: positive: row has no positive"]


def test_hub_settings_need_a_hub_path(tmp_path):
    from hybridembed.errors import RecipeError

    with pytest.raises(RecipeError, match="split: only for hub datasets"):
        recipe_from_mapping({"model": {"backbone": "x"}, "datasets": [{"path": "a.jsonl", "task": "retrieval", "split": "test"}]}, base=tmp_path)


def test_default_store_lives_in_the_datasets_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV)
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds")
    assert cache_root() == tmp_path / "ds" / "hybridembed"


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc accounting")
def test_released_pages_leave_the_process_but_rows_stay_readable(store, tmp_path):
    from hybridembed.data.arrow_store import release_mapped_pages

    rows = [{"query": f"query {i} " * 8, "positive": f"passage {i} " * 16, "negatives": [f"negative {i} " * 8]} for i in range(60_000)]
    dataset = load_dataset(DatasetConfig(path=str(_write(tmp_path / "big.jsonl", rows)), task="retrieval"))
    release_mapped_pages()
    before = _rss_file_kib()
    for i in np.random.default_rng(0).permutation(len(dataset))[:300]:
        assert dataset.rows[int(i)]["query"] == f"query {i} " * 8
    touched = _rss_file_kib()
    release_mapped_pages()
    assert touched - before > 4096, "random rows map file pages into the process"
    assert _rss_file_kib() - before < (touched - before) / 4
    assert dataset.rows[59_999]["positives"] == ["passage 59999 " * 16]
