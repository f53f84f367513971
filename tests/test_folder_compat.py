"""Interoperable model folders (hybridembed.modeling.folder_compat): sentence-transformers 5.x and 6.x, TEI's and vLLM's layout.

Always run: the rewritten files hold the portable module types and the keys TEI/vLLM/5.x read, 6.x
still loads the folder with the same embeddings, the rewrite is idempotent, 6.x-only settings are
reported and left alone. With `.venv-st5/` (made by `make compat`): sentence-transformers 5.x loads
the built and the trained folder and gives the 6.x embeddings within 1e-5 (with and without a prompt).
Without it those tests skip, unless HYBRIDEMBED_REQUIRE_COMPAT=1 (then they fail).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers import QUICKSTART, REPO

ST5_PYTHON = Path(os.environ.get("HYBRIDEMBED_ST5_PYTHON", REPO / ".venv-st5" / "bin" / "python"))
ST5_SCRIPT = REPO / "tests" / "compat" / "st5_encode.py"
TEXTS = [
    "a man is playing a guitar",
    "what is the capital of france",
    "Paris is the capital and largest city of France, on the Seine.",
    "a woman slices an onion",
]
PROMPTS = {"query": "query: ", "document": "passage: "}
DIMS = [96, 64, 32]
# The module types TEI's candle backend parses modules.json against (backends/src/lib.rs, enum ModuleType).
TEI_MODULE_TYPES = {"sentence_transformers.models.Dense", "sentence_transformers.models.Normalize",
                    "sentence_transformers.models.Pooling", "sentence_transformers.models.Transformer"}  # fmt: skip
TEI_DENSE_ACTIVATIONS = {"torch.nn.modules.activation.Tanh", "torch.nn.modules.linear.Identity"}


def _encode6(folder: Path, prompt_name: str | None = None) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(TEXTS, prompt_name=prompt_name, convert_to_numpy=True, batch_size=8)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _json(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bert_dir):
    """A folder saved by build_model(...).save(): projection (Dense), Normalize, prompts, Matryoshka dims in hybridembed.json.

    Returns (the folder as sentence-transformers 6 saved it, the rewritten copy, 6.x embeddings before the rewrite).
    """
    from hybridembed.modeling.folder_compat import make_interoperable
    from hybridembed.modeling.model import build_model, write_metadata
    from hybridembed.recipe import ModelConfig

    cfg = ModelConfig(backbone=str(tiny_bert_dir), pooling="mean", normalize=True, projection_dim=96, matryoshka_dims=DIMS, prompts=PROMPTS)
    root = tmp_path_factory.mktemp("compat-built")
    original = root / "as-saved"
    build_model(cfg).save(str(original))
    write_metadata(original, matryoshka_dims=DIMS)
    before = {name: _encode6(original, name) for name in (None, "query")}
    portable = root / "portable"
    shutil.copytree(original, portable)
    assert make_interoperable(portable) == []
    return original, portable, before


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir):
    """A folder trained through hybridembed.training.stages.run_recipe (2 steps), then rewritten; (folder, 6.x embeddings before)."""
    import yaml

    from hybridembed.modeling.folder_compat import make_interoperable
    from hybridembed.recipe import load_recipe
    from hybridembed.training.stages import run_recipe

    root = tmp_path_factory.mktemp("compat-trained")
    recipe = {
        "model": {"backbone": str(tiny_bert_dir), "projection_dim": 96, "matryoshka_dims": DIMS, "max_seq_length": 48,
                  "query_prefix": "query: ", "passage_prefix": "passage: "},
        "datasets": [{"path": str(QUICKSTART / "stsb_paraphrase_pairs.jsonl"), "task": "retrieval", "max_samples": 32}],
        "training": {"output_dir": str(root / "out"), "batch_size": 8, "max_steps": 2, "logging_steps": 1, "report_to": [],
                     "learning_rate": 1e-3},
    }  # fmt: skip
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = run_recipe(load_recipe(path)).folder
    before = {name: _encode6(out, name) for name in (None, "query")}
    assert make_interoperable(out) == []  # dims come from the hybridembed.json training wrote
    return out, before


def test_modules_json_names_the_portable_types(built, trained):
    for folder in (built[1], trained[0]):
        modules = _json(folder / "modules.json")
        assert [m["type"] for m in modules] == [
            "sentence_transformers.models.Transformer",
            "sentence_transformers.models.Pooling",
            "sentence_transformers.models.Dense",
            "sentence_transformers.models.Normalize",
        ]
        assert {m["type"] for m in modules} <= TEI_MODULE_TYPES
        assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
    # what sentence-transformers 6.2 itself writes, i.e. what the rewrite is for
    assert "sentence_transformers.models.Dense" not in {m["type"] for m in _json(built[0] / "modules.json")}


def test_module_configs_hold_the_keys_every_reader_needs(built, trained):
    for folder, max_len in ((built[1], 128), (trained[0], 48)):
        st = _json(folder / "sentence_bert_config.json")
        assert st == {"max_seq_length": max_len, "do_lower_case": False}  # TEI needs max_seq_length, vLLM both keys
        pooling = _json(folder / "1_Pooling" / "config.json")
        assert pooling == {
            "word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False,
            "pooling_mode_mean_tokens": True, "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True,
        }  # fmt: skip
        dense = _json(folder / "2_Dense" / "config.json")
        assert dense == {"in_features": 64, "out_features": 96, "bias": True, "activation_function": "torch.nn.modules.linear.Identity"}
        assert dense["activation_function"] in TEI_DENSE_ACTIVATIONS
        from safetensors import safe_open

        with safe_open(str(folder / "2_Dense" / "model.safetensors"), "pt") as f:
            assert set(f.keys()) == {"linear.weight", "linear.bias"}  # the names TEI's Dense and 5.x load
        st_config = _json(folder / "config_sentence_transformers.json")
        assert st_config["prompts"] == PROMPTS and st_config["similarity_fn_name"] == "cosine"
        assert "default_prompt_name" in st_config and set(st_config["__version__"]) >= {"sentence_transformers", "transformers"}
        assert _json(folder / "tokenizer_config.json")["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_config_json_carries_matryoshka_dimensions_for_vllm(built, trained, tmp_path):
    from hybridembed.modeling.folder_compat import make_interoperable

    for folder in (built[1], trained[0]):
        assert _json(folder / "config.json")["matryoshka_dimensions"] == sorted(DIMS)
        assert _json(folder / "hybridembed.json")["matryoshka_dims"] == sorted(DIMS, reverse=True)
    explicit = tmp_path / "explicit"
    shutil.copytree(built[0], explicit)
    make_interoperable(explicit, [32, 96])
    assert _json(explicit / "config.json")["matryoshka_dimensions"] == [32, 96]
    plain = tmp_path / "plain"
    shutil.copytree(built[0], plain)
    (plain / "hybridembed.json").unlink()
    make_interoperable(plain)
    assert "matryoshka_dimensions" not in _json(plain / "config.json")


def test_sentence_transformers_6_loads_the_rewritten_folder_with_the_same_embeddings(built, trained):
    _, portable, before = built
    out, trained_before = trained
    for folder, expected in ((portable, before), (out, trained_before)):
        for name, embeddings in expected.items():
            np.testing.assert_allclose(_encode6(folder, name), embeddings, atol=1e-6)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(portable), device="cpu")
    assert model.prompts == PROMPTS and model.max_seq_length == 128 and model.get_embedding_dimension() == 96


def test_rewrite_is_idempotent(built, trained):
    from hybridembed.modeling.folder_compat import make_interoperable

    for folder in (built[1], trained[0]):
        files = _files(folder)
        assert make_interoperable(folder) == []
        assert _files(folder) == files


def test_decoder_folder_keeps_last_token_pooling_and_its_embeddings(tmp_path, tiny_decoder_dir):
    from hybridembed.modeling.folder_compat import make_interoperable
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    folder = tmp_path / "decoder"
    build_model(ModelConfig(backbone=str(tiny_decoder_dir), pooling="last", normalize=True)).save(str(folder))
    before = _encode6(folder)
    assert make_interoperable(folder) == []
    pooling = _json(folder / "1_Pooling" / "config.json")
    assert pooling["pooling_mode_lasttoken"] and not pooling["pooling_mode_mean_tokens"]
    np.testing.assert_allclose(_encode6(folder), before, atol=1e-6)


def test_settings_without_a_5x_form_are_reported_and_left_alone(built, tmp_path):
    from hybridembed.modeling.folder_compat import make_interoperable

    folder = tmp_path / "odd"
    shutil.copytree(built[0], folder)
    (folder / "3_Normalize" / "config.json").write_text(json.dumps({"module_input_name": "token_embeddings"}))
    modules = _json(folder / "modules.json")
    modules.append({"idx": 4, "name": "4", "path": "4_Custom", "type": "my_package.Custom"})
    (folder / "modules.json").write_text(json.dumps(modules))
    problems = make_interoperable(folder)
    assert any("3_Normalize" in p for p in problems) and any("my_package.Custom" in p for p in problems)
    types = [m["type"] for m in _json(folder / "modules.json")]
    assert types[:3] == ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling", "sentence_transformers.models.Dense"]
    assert types[3] == "sentence_transformers.base.modules.normalize.Normalize" and types[4] == "my_package.Custom"


# --- sentence-transformers 5.x, in its own venv ---------------------------------------------------------------


@pytest.fixture(scope="module")
def st5_python() -> Path:
    if not ST5_PYTHON.is_file():
        reason = f"{ST5_PYTHON} not found: `make compat` builds the sentence-transformers 5.x venv and runs these"
        if os.environ.get("HYBRIDEMBED_REQUIRE_COMPAT") == "1":
            pytest.fail(f"HYBRIDEMBED_REQUIRE_COMPAT=1 but {reason}")
        pytest.skip(reason)
    return ST5_PYTHON


def _encode5(python: Path, folder: Path, tmp_path: Path) -> tuple[dict[str | None, np.ndarray], dict]:
    """5.x embeddings without a prompt and with the "query" prompt (one subprocess), and what 5.x loaded."""
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(TEXTS))
    out = tmp_path / "st5.npy"
    cmd = [str(python), str(ST5_SCRIPT), str(folder), str(texts), str(out), "--also-prompt", "query"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return {None: np.load(out), "query": np.load(tmp_path / "st5.query.npy")}, _json(Path(str(out) + ".json"))


@pytest.mark.parametrize("which", ["built", "trained"])
def test_sentence_transformers_5_gives_the_6x_embeddings(which, request, st5_python, tmp_path):
    folder = request.getfixturevalue("built")[1] if which == "built" else request.getfixturevalue("trained")[0]
    embeddings, info = _encode5(st5_python, folder, tmp_path)
    assert info["sentence_transformers"].startswith("5."), info
    for name, got in embeddings.items():
        np.testing.assert_allclose(got, _encode6(folder, name), atol=1e-5)
    assert not np.allclose(embeddings[None], embeddings["query"])  # the prompt was applied
    assert info["modules"] == [f"sentence_transformers.models.{c}.{c}" for c in ("Transformer", "Pooling", "Dense", "Normalize")]
    assert info["prompts"] == PROMPTS and info["embedding_dim"] == 96
    assert info["max_seq_length"] == (128 if which == "built" else 48)


def test_sentence_transformers_5_refuses_the_folder_as_6x_saved_it(built, st5_python, tmp_path):
    """The reason for the rewrite: without it 5.x cannot import 6.x's module paths."""
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(TEXTS))
    result = subprocess.run([str(st5_python), str(ST5_SCRIPT), str(built[0]), str(texts), str(tmp_path / "x.npy")],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}, timeout=300)  # fmt: skip
    assert result.returncode != 0 and "sentence_transformers.base" in result.stderr
