"""`hybridembed encode --precision`: quantized embeddings through sentence-transformers' quantize_embeddings, with shared int8 ranges."""

from __future__ import annotations

import numpy as np
import pytest

TEXTS = ["a man is playing a guitar", "a woman slices an onion", "the cat sits on the mat", "stocks fell on friday",
         "two dogs run in a field", "a child reads a book", "rain is expected tomorrow", "he plays the piano"]  # fmt: skip


def _encode(capsys, model_dir, tmp_path, name, *extra):
    from hybridembed.cli import main

    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    code = main(["encode", str(model_dir), "--input", str(source), "--output", str(tmp_path / name), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_int8_uses_the_embeddings_ranges_writes_them_and_reuses_them_for_queries(tiny_model_dir, tmp_path, capsys):
    from sentence_transformers.util.quantization import quantize_embeddings

    assert _encode(capsys, tiny_model_dir, tmp_path, "f32.npy")[0] == 0
    floats = np.load(tmp_path / "f32.npy")
    code, out, _ = _encode(capsys, tiny_model_dir, tmp_path, "i8.npy", "--precision", "int8")
    assert code == 0 and "int8" in out and "ranges" in out
    quantized, ranges = np.load(tmp_path / "i8.npy"), np.load(tmp_path / "i8.ranges.npy")
    assert quantized.dtype == np.int8 and quantized.shape == floats.shape
    np.testing.assert_allclose(ranges, np.vstack((floats.min(0), floats.max(0))), atol=1e-6)
    np.testing.assert_array_equal(quantized, quantize_embeddings(floats, "int8", ranges=ranges))
    # Queries quantized with the corpus's ranges land on the same scale: the same texts give the same codes.
    code, out, _ = _encode(capsys, tiny_model_dir, tmp_path, "q.npy", "--precision", "int8", "--ranges", str(tmp_path / "i8.ranges.npy"))
    assert code == 0 and not (tmp_path / "q.ranges.npy").exists()
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), quantized)


@pytest.mark.parametrize(("precision", "dtype"), [("binary", np.int8), ("ubinary", np.uint8), ("uint8", np.uint8)])
def test_other_precisions_have_their_dtypes_and_packed_shapes(tiny_model_dir, tmp_path, capsys, precision, dtype):
    code, _, _ = _encode(capsys, tiny_model_dir, tmp_path, "e.npy", "--precision", precision)
    assert code == 0
    embeddings = np.load(tmp_path / "e.npy")
    assert embeddings.dtype == dtype
    assert embeddings.shape == (len(TEXTS), 64 // 8 if "binary" in precision else 64)


def test_bad_precision_settings_are_one_line_errors(tiny_model_dir, tmp_path, capsys):
    code, _, err = _encode(capsys, tiny_model_dir, tmp_path, "e.npy", "--precision", "binary", "--dim", "12")
    assert code != 0 and "multiple of 8" in err and "Traceback" not in err
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), dtype=np.float32))
    code, _, err = _encode(capsys, tiny_model_dir, tmp_path, "e.npy", "--precision", "int8", "--ranges", str(tmp_path / "bad.npy"))
    assert code != 0 and "expected (2, 64)" in err
    code, _, err = _encode(capsys, tiny_model_dir, tmp_path, "e.npy", "--ranges", str(tmp_path / "bad.npy"))
    assert code != 0 and "--ranges applies to --precision int8/uint8" in err
