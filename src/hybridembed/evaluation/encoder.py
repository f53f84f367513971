"""The encoder mteb calls: sentence-transformers encoding once per distinct text, then Matryoshka truncation.

What this adds over mteb's `SentenceTransformerEncoderWrapper` (which it subclasses, so prompt
selection and `encode_query`/`encode_document` routing stay mteb's): a cache of full-size
embeddings keyed by (prompt type, prompt, text), so that

* every text is encoded once per run, however many tasks or dims ask for it (deduplication
  within a call and across tasks), and
* a `--dims` sweep re-runs the mteb tasks per dim on cached vectors, truncated to the first
  `dim` coordinates and re-normalised (`hybridembed.modeling.model.truncate_embeddings`).

At the model's full dimension the cached vectors are returned unchanged, so scores equal
plain mteb's. Encoding is batched and length-sorted by sentence-transformers itself.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.models import SentenceTransformerEncoderWrapper
from mteb.models.abs_encoder import get_prompt_name

from hybridembed.modeling.model import truncate_embeddings

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import PromptType
    from sentence_transformers import SentenceTransformer
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

# Show sentence-transformers' batch bar only for calls long enough to need one.
PROGRESS_MIN_TEXTS = 2000


class CachingTruncatingEncoder(SentenceTransformerEncoderWrapper):
    """An mteb encoder over a SentenceTransformer that caches full embeddings and truncates to `self.dim`."""

    def __init__(self, model: SentenceTransformer, full_dim: int, show_progress_bar: bool = True):
        with warnings.catch_warnings():  # mteb 2.26 calls a renamed sentence-transformers method
            warnings.simplefilter("ignore", FutureWarning)
            super().__init__(model)
        self.full_dim = full_dim
        self.dim: int | None = None  # None or >= full_dim: no truncation
        self.show_progress_bar = show_progress_bar
        self._cache: dict[tuple[str, str, str], np.ndarray] = {}
        self.texts_encoded = 0
        self.encode_seconds = 0.0

    def clear_cache(self) -> None:
        self._cache.clear()

    def _key_prefix(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> tuple[str, str]:
        name = get_prompt_name(self.model_prompts, task_metadata, prompt_type)
        prompt = (self.model_prompts or {}).get(name, "") if name else ""
        return (prompt_type.value if prompt_type else "", prompt or "")

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        ptype, prompt = self._key_prefix(task_metadata, prompt_type)
        missing = list(dict.fromkeys(t for t in texts if (ptype, prompt, t) not in self._cache))
        if missing:
            from datasets import Dataset
            from mteb._create_dataloaders import create_dataloader

            start = time.perf_counter()
            loader = create_dataloader(
                Dataset.from_dict({"text": missing}),
                task_metadata=task_metadata,
                input_column="text",
                batch_size=kwargs.get("batch_size", 32),
            )
            kwargs = {**kwargs, "show_progress_bar": self.show_progress_bar and len(missing) >= PROGRESS_MIN_TEXTS}
            embeddings = super().encode(
                loader,
                task_metadata=task_metadata,
                hf_split=hf_split,
                hf_subset=hf_subset,
                prompt_type=prompt_type,
                **kwargs,
            )
            embeddings = np.asarray(embeddings, dtype=np.float32)
            for text, vector in zip(missing, embeddings, strict=True):
                self._cache[(ptype, prompt, text)] = vector
            self.texts_encoded += len(missing)
            self.encode_seconds += time.perf_counter() - start
        full = np.stack([self._cache[(ptype, prompt, t)] for t in texts]) if texts else np.zeros((0, self.full_dim), np.float32)
        if self.dim is None or self.dim >= full.shape[1]:
            return full
        return np.asarray(truncate_embeddings(full, self.dim), dtype=np.float32)
