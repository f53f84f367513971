"""LoRA for large backbones through peft: add the adapter before training, then merge it into the weights or keep it as adapter + base reference.

What this adds over peft / sentence-transformers: sentence-transformers' ``add_adapter`` (peft's
injection through transformers) trains the adapter and saves it as ``adapter_config.json`` +
``adapter_model.safetensors`` that name the base model — the ``save: adapter`` layout, which
``SentenceTransformer(path)`` loads back on top of the base. For ``save: merged`` (the default)
``merge_adapters`` folds each LoRA layer into its base layer and removes the adapter, so the
folder is an ordinary model that needs neither peft nor the base checkpoint. `add_lora` also keeps
adapters off modules that are not on the embedding path (the BERT pooler, which model.py freezes):
peft's ``all-linear`` would otherwise give them trainable adapters that never receive a gradient,
which DDP with ``find_unused_parameters=False`` rejects.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, cast

from torch import nn

from hybridembed.errors import RecipeError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from hybridembed.recipe import LoraSettings

logger = logging.getLogger(__name__)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def _require_peft():
    try:
        import peft
    except ImportError as err:
        raise RecipeError("model.lora needs the `peft` package: pip install peft (see docs/backbones.md)") from err
    return peft


def off_embedding_path(hf_model: nn.Module) -> list[str]:
    """Linear modules of `hf_model` that sentence embeddings never use: any `pooler`, and every one whose weights are all frozen.

    model.py freezes what pooling does not use (the BERT pooler) before LoRA is added, so a frozen
    linear module is one no gradient reaches; an adapter on it would be a parameter without gradient.
    """
    names = []
    for name, module in hf_model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        params = list(module.parameters())
        if "pooler" in name.split(".") or (params and not any(p.requires_grad for p in params)):
            names.append(name)
    return names


def add_lora(model: SentenceTransformer, settings: LoraSettings) -> None:
    """Inject a fresh LoRA adapter into the backbone; only adapter weights (and later modules such as Dense) train."""
    peft = _require_peft()
    hf_model = model.transformers_model
    assert hf_model is not None, "build_model's first module is a Hugging Face Transformer"
    excluded = off_embedding_path(hf_model)
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        # A regex of exact full names (a list would also match any module whose name ends with one).
        exclude_modules="|".join(f"^{re.escape(n)}$" for n in excluded) if excluded else None,
        bias="none",
    )
    model.add_adapter(config)
    trainable = sum(p.numel() for p in model[0].parameters() if p.requires_grad)
    total = sum(p.numel() for p in model[0].parameters())
    logger.info(
        "LoRA r=%d on %s (not on %s): %d of %d backbone parameters train",
        settings.r, settings.target_modules, excluded or "-", trainable, total,
    )  # fmt: skip


def merge_adapters(hf_model: nn.Module) -> int:
    """Fold every LoRA layer into its base layer and drop the adapter bookkeeping; returns how many layers merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = 0
    for parent in list(hf_model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
                merged += 1
    if hasattr(hf_model, "peft_config"):
        del hf_model.peft_config
    hf_model._hf_peft_config_loaded = False  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules only
    # Loading an adapter folder registers key renamings (base_model.model.*, lora_*) that saving would
    # apply in reverse; the merged model has plain keys.
    conversions = getattr(hf_model, "_weight_conversions", None)
    if conversions:
        hf_model._weight_conversions = [c for c in conversions if not _is_adapter_renaming(c)]  # type: ignore[assignment]  # as above
    return merged


def _is_adapter_renaming(conversion: object) -> bool:
    patterns = " ".join(str(p) for p in getattr(conversion, "source_patterns", []) or [])
    return "base_model.model." in patterns or "lora_" in patterns


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def merge_saved_adapter(model_dir: str | Path) -> None:
    """Rewrite a saved adapter-layout model folder as a merged, ordinary one (in place)."""
    from sentence_transformers import SentenceTransformer

    _require_peft()
    model_dir = Path(model_dir)
    model = SentenceTransformer(str(model_dir), device="cpu")
    count = merge_adapters(cast(nn.Module, model[0].auto_model))  # a PreTrainedModel; torch types the attribute Tensor | Module
    for name in ADAPTER_FILES:
        (model_dir / name).unlink(missing_ok=True)
    model.save(str(model_dir))
    logger.info("merged %d LoRA layers into %s", count, model_dir)
