"""An onnxruntime encoder with the part of SentenceTransformer's interface the server and benchmarks use.

The server (serve/engine.py) needs from its model: `preprocess(texts, prompt=)` (tokenizer
features, from which it counts tokens) and a call on those features returning
`{"sentence_embedding": rows}`, `tokenizer`, `max_seq_length`, `prompts` /
`default_prompt_name`, `get_embedding_dimension()` and `eval()`; Matryoshka truncation happens
after encoding (app.py), so it needs nothing here. This class provides exactly that for a folder
written by `hybridembed export` (hybridembed.onnx_export), without loading torch weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hybridembed.errors import HybridembedError

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
ONNX_FILES = ("model.onnx", "model_qint8.onnx")
# Above this, a tokenizer's model_max_length is transformers' "no limit" sentinel, not a real limit.
NO_LIMIT = 1_000_000


class OnnxEncoder:
    """Embeds texts with onnx/<file_name> of an exported sentence-transformers folder."""

    def __init__(self, folder: str | Path, file_name: str = "model.onnx", intra_op_num_threads: int | None = None) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        path = self.folder / ONNX_DIR / file_name
        if not path.is_file():
            raise HybridembedError(
                f"{path} does not exist; write it with: hybridembed export {self.folder} --format onnx"
                + (" --quantize int8" if "qint8" in file_name else "")
                + " --out DIR"
            )
        options = ort.SessionOptions()
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = int(intra_op_num_threads)
        # One request batch at a time runs on the batcher's worker thread: nothing to overlap.
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.file_name = file_name
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        config = _read_json(self.folder / "config_sentence_transformers.json")
        self.prompts: dict[str, str] = dict(config.get("prompts") or {})
        self.default_prompt_name: str | None = config.get("default_prompt_name")
        self.max_seq_length = self._max_seq_length()
        self._dim: int | None = None
        logger.info("onnxruntime %s on %s with %s intra-op thread(s)", ort.__version__, path, intra_op_num_threads or "onnxruntime's default")

    def _max_seq_length(self) -> int | None:
        """What the torch model used: recorded by the export, else sentence_bert_config.json, else the tokenizer's limit."""
        recorded = _read_json(self.folder / "hybridembed.json").get("onnx", {}).get("max_seq_length")
        if recorded:
            return int(recorded)
        configured = _read_json(self.folder / "sentence_bert_config.json").get("max_seq_length")
        if configured:
            return int(configured)
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if limit and limit < NO_LIMIT else None

    @property
    def device(self) -> Any:
        import torch

        return torch.device("cpu")

    def eval(self) -> OnnxEncoder:
        return self

    def get_embedding_dimension(self) -> int:
        if self._dim is None:
            declared = self.session.get_outputs()[0].shape[-1]
            self._dim = int(declared) if isinstance(declared, int) else int(self.encode(["x"]).shape[1])
        return self._dim

    def encode(
        self,
        texts: list[str],
        prompt_name: str | None = None,
        batch_size: int = 32,
        normalize_embeddings: bool = False,
        **_: Any,
    ) -> np.ndarray:
        """float32 embeddings of `texts`, in order; passes of `batch_size` over the texts sorted by length, as sentence-transformers does.

        `prompt_name` picks one of the folder's prompts; without it the default prompt (if any)
        applies. Other SentenceTransformer.encode keywords (convert_to_numpy, show_progress_bar) are accepted and ignored.
        """
        if prompt_name is not None and prompt_name not in self.prompts:
            raise ValueError(f"prompt {prompt_name!r} not found; this model has {sorted(self.prompts)}")
        name = prompt_name or self.default_prompt_name
        prompt = self.prompts.get(name) if name else None
        if not texts:
            return np.zeros((0, self.get_embedding_dimension()), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: list[np.ndarray] = []
        step = max(1, int(batch_size))
        for start in range(0, len(texts), step):
            out.append(self(self.preprocess([texts[i] for i in order[start : start + step]], prompt=prompt))["sentence_embedding"])
        embeddings = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
        embeddings[order] = np.concatenate(out)
        if normalize_embeddings:
            embeddings /= np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
        return embeddings

    def preprocess(self, texts: list[str], prompt: str | None = None) -> Any:
        """Tokenizer features of `prompt` + each text, padded and cut to max_seq_length (SentenceTransformer.preprocess)."""
        kwargs: dict[str, Any] = {"padding": True, "return_tensors": "np"}
        if self.max_seq_length:
            kwargs.update(truncation="longest_first", max_length=self.max_seq_length)
        return self.tokenizer([prompt + t for t in texts] if prompt else list(texts), **kwargs)

    def __call__(self, features: Any) -> dict[str, np.ndarray]:
        """Run the graph on `features` (from preprocess); like a SentenceTransformer's forward, the rows are under "sentence_embedding"."""
        ids = np.asarray(features["input_ids"], dtype=np.int64)
        # A graph with token_type_ids fed by a tokenizer that omits them: BERT's default is all zeros.
        feed = {name: np.asarray(features[name], dtype=np.int64) if name in features else np.zeros_like(ids) for name in self.input_names}
        return {"sentence_embedding": np.asarray(self.session.run(None, feed)[0], dtype=np.float32)}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
