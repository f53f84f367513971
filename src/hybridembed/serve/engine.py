"""The served model: loads a sentence-transformers model, encodes batches with token counts (one tokenization), describes itself."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridembed.errors import HybridembedError
from hybridembed.padding_cuts import cheapest_cuts
from hybridembed.precision import SERVING_DTYPES, resolve_serving_dtype
from hybridembed.recipe import BUNDLED_ALIASES
from hybridembed.serve.batching import InvalidInput

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from hybridembed.serve.onnx_backend import OnnxEncoder

logger = logging.getLogger(__name__)


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
        from hybridembed.modeling.model import embedding_dim

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

    def encode(self, texts: list[str], prompt_name: str | None = None, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embed `texts`; also return token counts (as the model saw them) and truncation flags.

        The texts are tokenized once, with the model's own preprocessing (prompt, max_seq_length);
        the counts come from that attention mask, and the forward passes (at most `batch_size`
        texts each, default all; see plan_passes) run on slices of the same features. The rows equal `model.encode(texts, prompt_name=...)`,
        including the model's `truncate_dim`. Without `prompt_name` the model's default prompt
        (if any) applies, as in `model.encode`.
        Runs on the batcher's worker thread only: the fast tokenizer is not safe to call from two
        threads at once with different truncation settings.
        Raises InvalidInput (with the index of the first offending text) when the tokenizer rejects
        a text that it cannot encode on its own while it still encodes an ordinary one; any
        other failure (the tokenizer or the model itself broken) propagates as is.
        """
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        prompt = self._prompt_text(prompt_name) or None
        features = self._tokenize(texts, prompt)
        counts = _token_counts(features)
        truncated = self._truncated(features, counts, texts, prompt)
        passes: list[tuple[np.ndarray | None, Any]] = [(None, features)]
        if "attention_mask" in features:  # flattened inputs carry no padding: one pass
            plan = plan_passes(counts, batch_size or len(texts))
            if len(plan) > 1:
                left = getattr(getattr(self.model, "tokenizer", None), "padding_side", "right") == "left"
                passes = [(rows, _select(features, rows, int(counts[rows].max()), left)) for rows in plan]
        embeddings: np.ndarray | None = None
        with torch.inference_mode():
            for rows, part in passes:
                out = self._forward(part)
                if rows is None:
                    embeddings = out
                    break
                if embeddings is None:
                    embeddings = np.empty((len(texts), out.shape[1]), dtype=np.float32)
                embeddings[rows] = out
        assert embeddings is not None
        return embeddings, counts, truncated

    def _tokenize(self, texts: list[str], prompt: str | None) -> Any:
        def tokenize(batch: list[str]) -> Any:
            return self.model.preprocess(batch, prompt=prompt)

        try:
            return tokenize(texts)
        except Exception as err:
            culprit = _first_rejected(tokenize, texts)
            if culprit is None:
                raise
            raise InvalidInput(*culprit) from err

    def _forward(self, features: Any) -> np.ndarray:
        """float32 sentence embeddings of one pass, cut to the model's truncate_dim as `model.encode` does."""
        from sentence_transformers.util import batch_to_device

        device = getattr(self.model, "device", None)
        out = self.model(batch_to_device(features, device) if device is not None else features)["sentence_embedding"]
        truncate_dim = getattr(self.model, "truncate_dim", None)
        if truncate_dim:  # a plain prefix, not re-normalized: sentence-transformers' truncate_embeddings
            out = out[..., :truncate_dim]
        return _numpy(out, np.float32)

    def _truncated(self, features: Any, counts: np.ndarray, texts: list[str], prompt: str | None) -> np.ndarray:
        """Which texts max_seq_length cut: only those that reached the limit can have been."""
        flags = np.zeros(len(texts), dtype=bool)
        limit = self.max_seq_length
        if not limit:
            return flags
        at_limit = np.flatnonzero(counts >= limit)
        if not at_limit.size:
            return flags
        encodings = getattr(features, "encodings", None)
        if encodings is not None and len(encodings) == len(texts):  # a fast tokenizer keeps what it cut as overflow
            flags[at_limit] = [bool(encodings[i].overflowing) for i in at_limit]
            return flags
        # a slow tokenizer: tokenize those texts again, to one token past the limit
        ids = self.model.tokenizer([(prompt or "") + texts[i] for i in at_limit], add_special_tokens=True, truncation=True, max_length=limit + 1)["input_ids"]
        flags[at_limit] = [len(x) > limit for x in ids]
        return flags

    def _prompt_text(self, prompt_name: str | None) -> str:
        prompts = getattr(self.model, "prompts", None) or {}
        name = prompt_name or getattr(self.model, "default_prompt_name", None)
        return prompts.get(name, "") if name else ""

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


def _first_rejected(tokenize: Callable[[list[str]], Any], texts: list[str]) -> tuple[int, str] | None:
    """After `tokenize` failed on `texts`: (index, reason) of the first text it rejects on its
    own, or None when it fails on none of them alone, or also on a plain probe text (a server fault)."""
    for index, text in enumerate(texts):
        try:
            tokenize([text])
        except Exception as err:
            try:
                tokenize([PROBE_TEXT])
            except Exception:
                return None
            return index, describe_rejection(text, err)
    return None


# What one more forward pass costs beyond its tokens, in padded-token equivalents: the fixed
# Python and kernel-launch work of a pass, guessed for a small encoder on a CPU. Bigger models
# make each token dearer and so this smaller; a too-high value only merges passes a little more.
# (Training's chunks pay a backward too: hybridembed.precision.CPU_CHUNK_COST_TOKENS, measured.)
PASS_OVERHEAD_TOKENS = 128


def plan_passes(counts: np.ndarray, max_rows: int) -> list[np.ndarray]:
    """Rows of each forward pass: the texts sorted by token count (longest first) and cut into
    runs of at most `max_rows` so that padded tokens plus PASS_OVERHEAD_TOKENS per pass is least
    (hybridembed.padding_cuts; padding costs compute on a CPU, each pass a fixed overhead)."""
    order = np.argsort(-counts, kind="stable")
    if len(order) <= 1:
        return [order]
    ends = cheapest_cuts(counts[order], max_rows, PASS_OVERHEAD_TOKENS)
    return [order[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def _token_counts(features: Any) -> np.ndarray:
    """Tokens per text as the model reads them: the attention mask's ones, or the lengths of
    flattened (unpadded) sequences."""
    mask = features.get("attention_mask")
    if mask is not None:
        return _numpy(mask.sum(-1), np.int64)
    cumulative = features.get("cu_seq_lens_q")
    if cumulative is not None:
        return np.diff(_numpy(cumulative, np.int64))
    raise HybridembedError(f"cannot count tokens: the model's features have neither attention_mask nor cu_seq_lens_q ({sorted(features)})")


def _select(features: Any, rows: np.ndarray, width: int, left_padded: bool) -> dict[str, Any]:
    """The features of texts `rows`, with the padding columns none of them needs dropped."""
    import torch

    n, seq = features["attention_mask"].shape
    columns = slice(seq - width, seq) if left_padded else slice(0, width)
    index = torch.from_numpy(rows)
    part = {}
    for key, value in features.items():
        if getattr(value, "ndim", 0) >= 1 and value.shape[0] == n:  # per text; the rest (modality, prompt_length) is shared
            value = value[index] if isinstance(value, torch.Tensor) else value[rows]
            if value.ndim == 2 and value.shape[1] == seq:
                value = value[:, columns]
        part[key] = value
    return part


def _numpy(value: Any, dtype: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; float() first: numpy has no bfloat16
        value = value.detach().float().cpu() if value.is_floating_point() else value.detach().cpu()
        value = value.numpy()
    return np.asarray(value, dtype=dtype)


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
    is briefly in memory); `auto` is bfloat16 where the device computes bf16 natively, else
    float32 (and float32 on the onnx backend).
    """
    from hybridembed.modeling.model import load_model, matryoshka_dims, resolve_backbone

    if backend not in BACKENDS:
        raise HybridembedError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if dtype not in SERVING_DTYPES:
        raise HybridembedError(f"--dtype {dtype}: choose one of {', '.join(SERVING_DTYPES)}")
    if dtype == "auto":
        dtype = "float32" if backend == "onnx" else resolve_serving_dtype(dtype, device)
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
