"""The embedding cache's model fingerprint: from a folder's files (no weight read) when the model came from disk, from its weights otherwise."""

from __future__ import annotations

import os
import shutil

import pytest


def test_a_folder_fingerprint_reads_no_weights_and_follows_the_files(tiny_model_dir, tmp_path, monkeypatch):
    from hybridembed.mining.cache import model_fingerprint
    from hybridembed.modeling.model import load_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = load_model(str(folder))
    monkeypatch.setattr(type(model), "state_dict", lambda self, *a, **k: pytest.fail("the weights were read"))
    first = model_fingerprint(model, folder)
    assert model_fingerprint(load_model(str(folder)), str(folder)) == first  # a second load of the same files
    weights = folder / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place (e.g. retrained)
    assert model_fingerprint(model, folder) != first
    model.max_seq_length = 16  # a different sequence limit embeds differently
    assert model_fingerprint(model, folder) != model_fingerprint(load_model(str(folder)), folder)


def test_without_a_source_on_disk_the_weights_decide(tiny_model_dir):
    import torch

    from hybridembed.mining.cache import model_fingerprint
    from hybridembed.modeling.model import load_model

    model = load_model(str(tiny_model_dir))
    before = model_fingerprint(model, "no-such-owner/no-such-model")  # not on disk: falls back to the weights
    assert before == model_fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert model_fingerprint(model) != before


def test_mine_cli_reuses_the_cache_keyed_by_the_folder(tiny_model_dir, tmp_path, capsys):
    from helpers import QUICKSTART
    from hybridembed.cli import main

    args = ["mine", "--model", str(tiny_model_dir), "--data", str(QUICKSTART / "flagembedding_retrieval.jsonl"), "--range", "1", "4",
            "--num-negatives", "2", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a.jsonl")]) == 0
    assert "embeddings cache built" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b.jsonl")]) == 0
    assert "embeddings cache reused" in capsys.readouterr().out
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
