"""End-to-end on the bundled all-MiniLM-L6-v2: the quickstart recipe trains, loads in sentence-transformers, and its prefixes work."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.stats import spearmanr

from helpers import QUICKSTART, REPO

pytestmark = pytest.mark.e2e


def _stsb_dev(limit: int):
    with open(QUICKSTART / "stsb_dev.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], np.array([float(r["score"]) for r in rows])


@pytest.fixture(scope="module")
def quickstart_model(tmp_path_factory):
    from hybridembed.recipe import load_recipe
    from hybridembed.training.builder import run_training

    out = tmp_path_factory.mktemp("quickstart") / "model"
    recipe = load_recipe(
        REPO / "recipes" / "quickstart.yaml",
        {"training.max_steps": 6, "training.output_dir": str(out), "training.report_to": [], "training.batch_size": 16},
    )
    return run_training(recipe).folder


def test_quickstart_model_loads_and_gives_768_dim_unit_vectors(quickstart_model):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(quickstart_model))
    embeddings = model.encode(["A plane is taking off.", "An air plane is taking off.", "A man is playing a flute."])
    assert embeddings.shape == (3, 768)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert embeddings[0] @ embeddings[1] > embeddings[0] @ embeddings[2]


def test_matryoshka_prefix_256_is_usable(quickstart_model):
    from sentence_transformers import SentenceTransformer

    from hybridembed.modeling.model import truncate_embeddings

    model = SentenceTransformer(str(quickstart_model))
    left, right, gold = _stsb_dev(400)
    a, b = model.encode(left, batch_size=64), model.encode(right, batch_size=64)
    full = spearmanr(np.sum(a * b, axis=1), gold).statistic
    a256, b256 = truncate_embeddings(a, 256), truncate_embeddings(b, 256)
    np.testing.assert_allclose(np.linalg.norm(a256, axis=1), 1.0, atol=1e-5)
    prefix = spearmanr(np.sum(a256 * b256, axis=1), gold).statistic
    # all-MiniLM-L6-v2 scores ~0.87 on STS-B dev; a few steps must not break it, nor its 256-dim prefix.
    assert full > 0.8 and prefix > 0.8
