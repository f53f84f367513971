"""End-to-end parity on the bundled all-MiniLM-L6-v2: STS-B dev equals a direct computation; Banking77 matches MTEB."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.stats import spearmanr

from hybridembed.evaluation import parse_suite, run_suite

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def minilm():
    from hybridembed.modeling.model import load_model

    return load_model("bundled:all-MiniLM-L6-v2")


def test_minilm_stsb_dev_equals_sentence_transformers_plus_scipy(minilm, shared_data):
    path = shared_data / "en/stsb/dev.tsv"
    suite = parse_suite(
        [
            {
                "name": "stsb-dev",
                "type": "sts",
                "path": str(path),
                "score_range": [0, 5],
                "columns": {"text1": "sentence1", "text2": "sentence2", "score": "score"},
            }
        ]
    )
    score = run_suite(minilm, suite, show_progress=False)["tasks"]["stsb-dev"]["dims"]["384"]["main_score"]
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    a = minilm.encode([r["sentence1"] for r in rows])
    b = minilm.encode([r["sentence2"] for r in rows])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    expected = spearmanr([float(r["score"]) for r in rows], cos)[0]
    assert score == pytest.approx(expected, abs=1e-6)
    assert score == pytest.approx(0.8672, abs=1e-4)


def test_minilm_banking77_reproduces_mteb_published_accuracy(minilm, shared_data):
    folder = shared_data / "en/banking77"
    suite = parse_suite(
        [
            {
                "name": "banking77",
                "type": "classification",
                "path": str(folder / "test.csv"),
                "train_path": str(folder / "train.csv"),
                "columns": {"text": "text", "label": "category"},
            }
        ]
    )
    accuracy = run_suite(minilm, suite, show_progress=False)["tasks"]["banking77"]["dims"]["384"]["main_score"]
    assert accuracy == pytest.approx(0.7975, abs=0.005)  # MTEB leaderboard: 79.75
