"""Shared pytest fixtures: tiny random backbones built offline, the bundled MiniLM, and real data paths."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import QUICKSTART, REPO, SHARED_DATA, corpus_sentences  # noqa: F401  (fixtures below use them)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Validated rows go to a per-session Arrow store, not the user's datasets cache (subprocesses inherit it).
if "HYBRIDEMBED_DATA_CACHE" not in os.environ:
    os.environ["HYBRIDEMBED_DATA_CACHE"] = tempfile.mkdtemp(prefix="hybridembed-data-store-")
    atexit.register(shutil.rmtree, os.environ["HYBRIDEMBED_DATA_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A random 2-layer, 64-hidden BERT with a WordPiece tokenizer (a raw HF checkpoint folder)."""
    from hybridembed.modeling.tiny import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"), corpus_sentences(), kind="bert")


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory) -> Path:
    """A random 2-layer Qwen2-style decoder with a byte-level BPE tokenizer that appends EOS."""
    from hybridembed.modeling.tiny import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("tiny-qwen2"), corpus_sentences(), kind="qwen2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """The tiny BERT saved as a sentence-transformers model (mean pooling, normalized, 64 dims)."""
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    model = build_model(ModelConfig(backbone=str(tiny_bert_dir), pooling="mean", normalize=True))
    out = tmp_path_factory.mktemp("tiny-st") / "model"
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the checkout")
    return SHARED_DATA


# Every available device: device-sensitive tests run on each (CPU always, CUDA when present).
DEVICES = ["cpu"] + (["cuda"] if __import__("torch").cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param
