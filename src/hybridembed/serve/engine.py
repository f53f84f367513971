"""The served model: loads a sentence-transformers model, encodes batches with token counts, describes itself."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridembed.errors import HybridembedError
from hybridembed.serve.batching import InvalidInput

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from hybridembed.serve.onnx_backend import OnnxEncoder

logger = logging.getLogger(__name__)

BUNDLED_ALIASES = ("bundled:all-MiniLM-L6-v2", "bundled")


@dataclass
class ServedModel:
    """A loaded model plus what the API reports about it (id, dims, Matryoshka dims, token limit)."""

    model: SentenceTransformer | OnnxEncoder
    name: str
    dim: int
    matryoshka_dims: list[int] = field(default_factory=list)
    max_seq_length: int | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def from_model(cls, model: SentenceTransformer, name: str, matryoshka_dims: list[int] | None = None) -> ServedModel:
        from hybridembed.model import embedding_dim

        max_len = getattr(model, "max_seq_length", None)
        return cls(
            model=model,
            name=name,
            dim=embedding_dim(model),
            matryoshka_dims=sorted(int(d) for d in (matryoshka_dims or [])),
            max_seq_length=int(max_len) if max_len else None,
        )

    def prompt_name_for(self, input_type: str | None) -> str | None:
        """The model's prompt for an `input_type` ("query" / "document"), None when it has none."""
        prompts = getattr(self.model, "prompts", None) or {}
        candidates = {"query": ("query",), "document": ("document", "passage", "corpus")}.get(input_type or "", ())
        return next((name for name in candidates if prompts.get(name)), None)

    def encode(
        self, texts: list[str], prompt_name: str | None = None, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embed `texts`; also return token counts (as the model saw them) and truncation flags.

        sentence-transformers sorts the texts by length and runs forward passes of `batch_size`
        (default: all at once), so smaller passes pad less. Without `prompt_name` the model's own
        default prompt (if any) applies, as in `model.encode`.
        Runs on the batcher's worker thread only: the fast tokenizer is not safe to call from two
        threads at once with different truncation settings.
        Raises InvalidInput (with the index of the first offending text) when the tokenizer rejects
        a text that it cannot encode on its own while it still encodes an ordinary one; any
        other failure (the tokenizer or the model itself broken) propagates as is.
        """
        prompt = self._prompt_text(prompt_name)
        counts, truncated = self._token_counts([prompt + t for t in texts] if prompt else texts)
        embeddings = self.model.encode(
            texts,
            prompt_name=prompt_name,
            batch_size=max(1, batch_size or len(texts)),
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(embeddings, dtype=np.float32), counts, truncated

    def _prompt_text(self, prompt_name: str | None) -> str:
        prompts = getattr(self.model, "prompts", None) or {}
        name = prompt_name or getattr(self.model, "default_prompt_name", None)
        return prompts.get(name, "") if name else ""

    def _token_counts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        tokenizer = getattr(self.model, "tokenizer", None)
        n = len(texts)
        if tokenizer is None:
            return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        kwargs: dict[str, Any] = {"add_special_tokens": True, "return_attention_mask": False}
        if self.max_seq_length:
            # one token past the limit is enough to tell that an input was cut
            kwargs.update(truncation=True, max_length=self.max_seq_length + 1)
        try:
            ids = tokenizer(texts, **kwargs)["input_ids"]
        except Exception as err:
            culprit = _first_rejected(tokenizer, texts, kwargs)
            if culprit is None:
                raise
            index, reason = culprit
            raise InvalidInput(index, reason) from err
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        if not self.max_seq_length:
            return lengths, np.zeros(n, dtype=bool)
        return np.minimum(lengths, self.max_seq_length), lengths > self.max_seq_length

    @property
    def device_type(self) -> str:
        device = getattr(self.model, "device", None)
        return getattr(device, "type", "cpu")

    def describe(self) -> dict[str, Any]:
        """The entry of GET /v1/models (OpenAI's model object plus our embedding facts)."""
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "hybridembed",
            "dimensions": self.dim,
            "matryoshka_dimensions": self.matryoshka_dims,
            "max_input_tokens": self.max_seq_length,
            "prompts": {k: v for k, v in (getattr(self.model, "prompts", None) or {}).items() if v},
        }


PROBE_TEXT = "a"
MAX_REASON_CHARS = 200


def _first_rejected(tokenizer: Any, texts: list[str], kwargs: dict[str, Any]) -> tuple[int, str] | None:
    """After the tokenizer failed on `texts`: (index, reason) of the first text it rejects on its
    own, or None when it fails on none of them alone, or also on a plain probe text (a server fault)."""
    for index, text in enumerate(texts):
        try:
            tokenizer([text], **kwargs)
        except Exception as err:
            try:
                tokenizer([PROBE_TEXT], **kwargs)
            except Exception:
                return None
            return index, describe_rejection(text, err)
    return None


def describe_rejection(text: str, err: BaseException) -> str:
    """A short, JSON-safe description of why the tokenizer refused `text` (never echoes raw surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as bad:  # the usual case; the Rust tokenizers only say "TypeError: TextEncodeInput..."
        return f"it contains a lone surrogate (U+{ord(text[bad.start]):04X}), which is not valid Unicode text"
    message = f"{type(err).__name__}: {err}".encode("utf-8", "backslashreplace").decode("utf-8")
    return message if len(message) <= MAX_REASON_CHARS else message[: MAX_REASON_CHARS - 3] + "..."


def default_model_name(name_or_path: str) -> str:
    """The id clients send as `model`: the folder name for a local path, the id itself for a hub id."""
    if name_or_path in BUNDLED_ALIASES:
        return "all-MiniLM-L6-v2"
    path = Path(name_or_path)
    if path.exists():
        return path.resolve().name
    return name_or_path


BACKENDS = ("torch", "onnx")
DTYPES = ("float32", "float16", "bfloat16")


def load_served_model(
    name_or_path: str,
    *,
    model_name: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    backend: str = "torch",
    onnx_file: str = "model.onnx",
    dtype: str = "float32",
    threads: int | None = None,
) -> ServedModel:
    """Load a model folder, hub id or the bundled alias for serving.

    backend="onnx" serves onnx/`onnx_file` of a folder written by `hybridembed export` with
    onnxruntime on the CPU (`threads` intra-op threads; float32 only: the graph's own precision);
    the torch backend casts the model to `dtype` after loading (one copy of the fp32 weights
    is briefly in memory).
    """
    from hybridembed.model import load_model, matryoshka_dims, resolve_backbone

    if backend not in BACKENDS:
        raise HybridembedError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise HybridembedError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    resolved = resolve_backbone(name_or_path)
    started = time.perf_counter()
    if backend == "onnx":
        if dtype != "float32":
            raise HybridembedError(f"--dtype {dtype}: the onnx backend runs the exported float32 (or int8) graph; use --dtype float32")
        if device not in (None, "cpu"):
            raise HybridembedError(f"--device {device}: the onnx backend runs on the CPU only")
        from hybridembed.serve.onnx_backend import OnnxEncoder

        model: Any = OnnxEncoder(resolved, file_name=onnx_file, intra_op_num_threads=threads)
    else:
        import torch

        model = load_model(name_or_path, device=device, trust_remote_code=trust_remote_code)
        if dtype != "float32":
            model.to(getattr(torch, dtype))
    model.eval()
    dims = matryoshka_dims(resolved) if os.path.isdir(resolved) else []
    served = ServedModel.from_model(model, model_name or default_model_name(name_or_path), dims)
    logger.info(
        "loaded %s (%s) as %r in %.1f s: %d dims, Matryoshka dims %s, max %s tokens per input",
        resolved,
        f"onnx {onnx_file}" if backend == "onnx" else f"torch {dtype}",
        served.name,
        time.perf_counter() - started,
        served.dim,
        served.matryoshka_dims or "none recorded",
        served.max_seq_length,
    )
    return served
