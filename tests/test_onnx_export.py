"""ONNX export (fp32 and int8) of tiny sentence-transformers folders, the onnxruntime encoder, and serving it (and bf16 torch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from helpers import running_server
from hybridembed.modeling.model import load_model, truncate_embeddings, write_metadata
from hybridembed.onnx_export import FP32_TOLERANCE, export_onnx
from hybridembed.serve import ServeSettings, create_app, load_served_model
from hybridembed.serve.onnx_backend import OnnxEncoder

# Very different lengths in one batch: the graph must get padding right.
TEXTS = [
    "a",
    "A man is playing a guitar on a small stage while the crowd sings along to every word of the chorus.",
    "Two dogs run.",
    "short",
    "The quick brown fox jumps over the lazy dog, and then it jumps back again, twice.",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def dense_model_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """Tiny BERT → CLS pooling → Dense 64→96 → Normalize, with a query prompt and Matryoshka dims recorded."""
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    cfg = ModelConfig(backbone=str(tiny_bert_dir), pooling="cls", projection_dim=96, normalize=True, query_prefix="query: ")
    out = tmp_path_factory.mktemp("tiny-dense") / "model"
    build_model(cfg).save(str(out))
    write_metadata(out, matryoshka_dims=[96, 48, 24])
    return out


@pytest.fixture(scope="module")
def exported(dense_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-dense-onnx"
    report = export_onnx(str(dense_model_dir), out, quantize="int8")
    assert report.exporter == "dynamo"
    assert report.fp32_max_abs_diff <= FP32_TOLERANCE and report.int8_mean_cosine > 0.98
    return out


def test_export_layout_keeps_the_folder(exported, dense_model_dir):
    assert (exported / "onnx" / "model.onnx").is_file() and (exported / "onnx" / "model_qint8.onnx").is_file()
    for name in ("modules.json", "tokenizer.json", "config_sentence_transformers.json", "README.md"):
        assert (exported / name).is_file(), name
    meta = json.loads((exported / "hybridembed.json").read_text())
    assert meta["matryoshka_dims"] == [96, 48, 24] and meta["onnx"]["max_seq_length"] == 128
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()][:2] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["sentence_embedding"]
    assert all(isinstance(d, str) for d in session.get_inputs()[0].shape)  # dynamic batch and sequence axes


def test_fp32_matches_torch_on_a_padded_batch(exported, dense_model_dir):
    model = load_model(str(dense_model_dir))
    encoder = OnnxEncoder(exported)
    for prompt_name in (None, "query"):
        expected = model.encode(TEXTS, prompt_name=prompt_name, batch_size=len(TEXTS), convert_to_numpy=True)
        got = encoder.encode(TEXTS, prompt_name=prompt_name, batch_size=len(TEXTS))
        assert got.shape == (len(TEXTS), 96) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=FP32_TOLERANCE)
    # passes of 2 pad differently but give the same rows, in input order
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=2), encoder.encode(TEXTS, batch_size=len(TEXTS)), atol=1e-5)
    assert encoder.get_embedding_dimension() == 96 and encoder.max_seq_length == model.max_seq_length


def test_int8_is_close_to_fp32(exported):
    fp32 = OnnxEncoder(exported).encode(TEXTS)
    int8 = OnnxEncoder(exported, file_name="model_qint8.onnx", intra_op_num_threads=1).encode(TEXTS)
    assert np.isfinite(int8).all() and cosines(int8, fp32).mean() > 0.98


@pytest.mark.parametrize("kind,exporter", [("mean-bert", "torchscript"), ("last-token-decoder", "auto"), ("last-token-decoder", "torchscript")])
def test_mean_and_last_token_pooling_export(kind, exporter, tiny_model_dir, tiny_decoder_dir, tmp_path):
    if kind == "mean-bert":
        source = tiny_model_dir
    else:
        from hybridembed.modeling.model import build_model
        from hybridembed.recipe import ModelConfig

        source = tmp_path / "decoder-st"
        build_model(ModelConfig(backbone=str(tiny_decoder_dir), pooling="last", normalize=True)).save(str(source))
    report = export_onnx(str(source), tmp_path / "out", exporter=exporter)
    assert report.fp32_max_abs_diff <= FP32_TOLERANCE and len(report.files) == 1
    assert report.exporter == ("dynamo" if exporter == "auto" else exporter)
    model = load_model(str(source))
    encoder = OnnxEncoder(tmp_path / "out")
    for side in ("right", "left"):  # the graph numbers positions from the mask, so either padding works
        model.tokenizer.padding_side = encoder.tokenizer.padding_side = side
        expected = model.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
        np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=FP32_TOLERANCE)


def test_export_into_a_foreign_folder_is_refused(tiny_model_dir, tmp_path):
    from hybridembed.errors import HybridembedError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HybridembedError, match="not a model folder"):
        export_onnx(str(tiny_model_dir), tmp_path)


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_export_and_openvino_refusal(tiny_model_dir, tmp_path, capsys):
    from hybridembed.cli import main

    assert main(["export", str(tiny_model_dir), "--format", "onnx", "--quantize", "int8", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "max |onnx - torch|" in out and "cosine to fp32" in out
    assert (tmp_path / "o" / "onnx" / "model_qint8.onnx").is_file()
    assert main(["export", str(tiny_model_dir), "--format", "openvino", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert "optimum-intel" in err and "transformers" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "v").exists()


def test_cli_serve_refuses_onnx_with_other_dtypes(exported, capsys):
    from hybridembed.cli import main

    assert main(["serve", str(exported), "--backend", "onnx", "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "float32" in err and len(err.splitlines()) == 1
    assert main(["serve", str(exported), "--onnx-file", "model_qint8.onnx"]) == 2
    assert "--backend onnx" in capsys.readouterr().err


def test_serve_onnx_without_an_export_names_the_command(tiny_model_dir):
    from hybridembed.errors import HybridembedError

    with pytest.raises(HybridembedError, match="hybridembed export"):
        load_served_model(str(tiny_model_dir), backend="onnx")


# --- serving ---------------------------------------------------------------------------------


@pytest.mark.parametrize("onnx_file", ["model.onnx", "model_qint8.onnx"])
def test_serve_onnx_backend_with_the_openai_client(exported, onnx_file):
    from openai import OpenAI

    served = load_served_model(str(exported), model_name="tiny-onnx", backend="onnx", onnx_file=onnx_file, threads=1)
    assert served.dim == 96 and served.matryoshka_dims == [24, 48, 96] and served.device_type == "cpu"
    reference = OnnxEncoder(exported, file_name=onnx_file)
    with running_server(create_app(served, ServeSettings(max_batch_size=8))) as url:
        with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
            resp = client.embeddings.create(model="tiny-onnx", input=TEXTS, encoding_format="float")
            got = np.array([d.embedding for d in resp.data], dtype=np.float32)
            np.testing.assert_allclose(got, reference.encode(TEXTS), atol=1e-5)
            tokens = sum(len(ids) for ids in reference.tokenizer(TEXTS)["input_ids"])
            assert resp.usage.prompt_tokens == tokens
            short = client.embeddings.create(model="tiny-onnx", input=TEXTS, dimensions=24)
            got24 = np.array([d.embedding for d in short.data], dtype=np.float32)
            assert got24.shape == (len(TEXTS), 24)
            np.testing.assert_allclose(got24, truncate_embeddings(reference.encode(TEXTS), 24), atol=1e-5)
            query = client.embeddings.create(model="tiny-onnx", input=TEXTS[:2], extra_body={"input_type": "query"})
            np.testing.assert_allclose(np.array([d.embedding for d in query.data]), reference.encode(TEXTS[:2], prompt_name="query"), atol=1e-5)


def test_serve_torch_bfloat16_is_finite_and_close_to_fp32(tiny_model_dir, tmp_path):
    from openai import OpenAI

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    fp32 = load_model(str(folder)).encode(TEXTS, convert_to_numpy=True)
    served = load_served_model(str(folder), model_name="tiny", dtype="bfloat16")
    assert next(served.model.parameters()).dtype.__str__() == "torch.bfloat16"
    with running_server(create_app(served, ServeSettings(max_batch_size=8))) as url:
        with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
            resp = client.embeddings.create(model="tiny", input=TEXTS)
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    assert np.isfinite(got).all() and cosines(got, fp32).min() > 0.99
