"""SuiteResults: score accessors over the results dict that run_suite returns and results.json holds."""

from __future__ import annotations

import json

from hybridembed.evaluation.evaluator import scalars
from hybridembed.evaluation.report import compare, load_results, render_markdown
from hybridembed.evaluation.results import SuiteResults
from hybridembed.evaluation.runner import compute_averages

TASKS = {
    "stsb": {
        "type": "sts",
        "main_metric": "cosine_spearman",
        "dims": {"768": {"main_score": 0.8, "metrics": {"cosine_pearson": 0.7}}, "64": {"main_score": 0.6, "metrics": {}}},
    },
    "sick": {"type": "sts", "main_metric": "cosine_spearman", "dims": {"768": {"main_score": 0.7, "metrics": {}}}},  # not evaluated at 64
    "wiki": {
        "type": "retrieval",
        "main_metric": "ndcg_at_10",
        "dims": {"768": {"main_score": 0.5, "metrics": {"recall_at_100": 0.9}}, "64": {"main_score": float("nan"), "metrics": {}}},
    },
}


def _results() -> SuiteResults:
    return SuiteResults({"dims": ["768", "64"], "tasks": TASKS, "averages": compute_averages(TASKS), "model": "m", "suite": "s"})


def test_scores_by_task_and_dim_default_to_the_largest_dim():
    r = _results()
    assert r.dims == [768, 64] and r.tasks == ["stsb", "sick", "wiki"]
    assert r.score("stsb") == 0.8 and r.score("stsb", 64) == 0.6 and r.score("stsb", "64") == 0.6
    assert r.score("sick", 64) is None and r.score("absent") is None and r.score("stsb", 32) is None
    assert r.score("wiki", 64) is None and r.average("retrieval", 64) is None  # mteb gave NaN
    assert r.scores() == {"stsb": 0.8, "sick": 0.7, "wiki": 0.5} and r.scores(64) == {"stsb": 0.6}
    assert r.metrics("wiki") == {"recall_at_100": 0.9} and r.metrics("sick", 64) == {}
    assert r.task_type("wiki") == "retrieval"


def test_averages_by_type_and_overall():
    r = _results()
    assert r.average("sts") == 0.75 and r.average("sts", 64) == 0.6 and r.average("retrieval", 768) == 0.5
    assert r.average() == (0.75 + 0.5) / 2 and r.average("clustering") is None
    assert r.task_types == ["sts", "retrieval"]


def test_it_is_the_json_dict_and_older_files_without_top_level_dims_still_read(tmp_path):
    r = _results()
    path = tmp_path / "results.json"
    path.write_text(json.dumps(r))
    loaded = load_results(path)
    assert isinstance(loaded, SuiteResults) and loaded.scores() == r.scores() and loaded.score("stsb", 64) == 0.6
    older = {k: v for k, v in r.items() if k != "dims"}
    assert SuiteResults(older).dims == [768, 64]


def test_consumers_read_through_it():
    r = _results()
    assert scalars(r) == {"stsb": 0.8, "stsb@64": 0.6, "sick": 0.7, "wiki": 0.5, "avg_sts": 0.75, "avg_retrieval": 0.5, "overall": 0.625}
    assert "| stsb | sts | cosine_spearman | 80.00 | 60.00 |" in render_markdown(dict(r))
    rows = {(row["task"], row["dim"]): row for row in compare(r, _results())}
    assert rows[("stsb", "64")]["delta"] == 0 and rows[("sick", "768")]["a"] == 0.7
