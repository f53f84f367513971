"""Rewrite a saved model folder so that sentence-transformers 5.x and 6.x, TEI and vLLM all read it.

What this adds over sentence-transformers: 6.x saves its own new class paths and config keys
(`sentence_transformers.base.modules.dense.Dense`, `1_Pooling/config.json` with `embedding_dimension` /
`pooling_mode`, a `sentence_bert_config.json` without `max_seq_length`, `module_input_name` in the
Dense config, a `TokenizersBackend` tokenizer class). sentence-transformers 5.x cannot import those
paths and passes every config key to its constructors, so it refuses the folder; TEI parses
`modules.json` types against a fixed list (an unknown type makes it drop the Dense projection) and needs
`pooling_mode_*` in `1_Pooling/config.json` and `max_seq_length` in `sentence_bert_config.json`; vLLM
reads the same files and takes the Matryoshka dims only from the top-level `config.json`.

`make_interoperable(folder)` rewrites, in place and idempotently, after sentence-transformers saved:

- `modules.json`: the Transformer, Pooling, Dense and Normalize types become the 5.x-era names
  `sentence_transformers.models.<Class>` (6.x resolves them through its backwards-compatible aliases);
- `sentence_bert_config.json`: `max_seq_length` (the tokenizer's `model_max_length`, as 6.x uses it)
  and `do_lower_case`; the 6.x-only keys are dropped where they hold 6.x's defaults for a text
  feature-extraction model (6.x restores exactly those defaults when they are absent);
- `<n>_Pooling/config.json`: `word_embedding_dimension`, the six `pooling_mode_*` booleans and
  `include_prompt` (what 5.x's constructor takes; 6.x converts them back);
- `<n>_Dense/config.json`: `in_features`, `out_features`, `bias`, `activation_function` (a `torch.nn...`
  class path); `module_input_name`/`module_output_name` dropped when they are the default
  `sentence_embedding`. The weights stay `model.safetensors` with keys `linear.weight`/`linear.bias`,
  which 5.x and TEI read;
- `tokenizer_config.json`: transformers 5's `TokenizersBackend` class name becomes
  `PreTrainedTokenizerFast` (the same fast tokenizer from `tokenizer.json`, a name transformers 4 knows);
- `config.json`: `matryoshka_dimensions` (ascending) from `matryoshka_dims` or the folder's
  `hybridembed.json`, which vLLM and SGLang read to accept the request's `dimensions`.

`config_sentence_transformers.json` (prompts, default_prompt_name, similarity_fn_name, `__version__`)
is already read by both versions and is left as saved; 5.x logs that the folder was written by a newer
version. Whatever cannot be expressed for 5.x (a non-default 6.x setting, an unknown module type) is
left untouched and reported in the returned list, so a caller can warn.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PORTABLE_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
}
POOLING_FLAGS = {  # 5.x boolean key → 6.x pooling_mode name, in 5.x's concatenation order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# What 6.x writes into sentence_bert_config.json for a plain text feature-extraction Transformer, and
# restores itself when the keys are absent (Transformer.load_config → TRANSFORMER_TASK_DEFAULTS).
TRANSFORMER_DEFAULTS: dict[str, Any] = {
    "transformer_task": "feature-extraction",
    "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
    "module_output_name": "token_embeddings",
}
TRANSFORMER_KEYS_5X = ("max_seq_length", "do_lower_case", "model_args", "tokenizer_args", "config_args")
DENSE_KEYS_5X = ("in_features", "out_features", "bias", "activation_function")
ST_CONFIG_NAMES = ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                   "sentence_camembert_config.json", "sentence_albert_config.json", "sentence_xlm-roberta_config.json",
                   "sentence_xlnet_config.json")  # fmt: skip
HUGE_LENGTH = 10**9  # tokenizers without a limit report int(1e30)


def make_interoperable(folder: str | Path, matryoshka_dims: list[int] | None = None) -> list[str]:
    """Rewrite the sentence-transformers folder's files for 5.x/6.x/TEI/vLLM; returns what stayed 6.x-only.

    `matryoshka_dims` defaults to the ones recorded in the folder's hybridembed.json; none → no
    `matryoshka_dimensions` key. Safe to call again on the same folder (no change the second time).
    """
    folder = Path(folder)
    problems: list[str] = []
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = _read(modules_path)
        for module in modules:
            kind = module["type"].rsplit(".", 1)[-1]
            if not module["type"].startswith("sentence_transformers.") or kind not in PORTABLE_TYPES:
                problems.append(f"module {module.get('path') or '.'}: type {module['type']} has no 5.x name")
                continue
            path = folder / module.get("path", "")
            ok = {"Transformer": _transformer, "Pooling": _pooling, "Dense": _dense, "Normalize": _normalize}[kind](path, problems)
            if ok:
                module["type"] = PORTABLE_TYPES[kind]
        _write(modules_path, modules)
    if matryoshka_dims is None:
        from hybridembed.modeling.model import matryoshka_dims as recorded_dims

        matryoshka_dims = recorded_dims(folder)
    config_path = folder / "config.json"
    if matryoshka_dims and config_path.is_file():
        config = _read(config_path)
        config["matryoshka_dimensions"] = sorted({int(d) for d in matryoshka_dims})
        _write(config_path, config)
    for problem in problems:
        logger.warning("%s: %s (left as sentence-transformers 6 wrote it)", folder, problem)
    return problems


def _transformer(path: Path, problems: list[str]) -> bool:
    name = next((n for n in ST_CONFIG_NAMES if (path / n).is_file()), ST_CONFIG_NAMES[0])
    config = _read(path / name) if (path / name).is_file() else {}
    extra = {k: v for k, v in config.items() if k not in TRANSFORMER_KEYS_5X and TRANSFORMER_DEFAULTS.get(k, object()) != v}
    if extra:
        problems.append(f"{name}: 6.x-only settings {sorted(extra)}")
        return False
    new = {k: v for k, v in config.items() if k in TRANSFORMER_KEYS_5X}
    if "max_seq_length" not in new:
        length = _max_seq_length(path)
        if length is None:
            problems.append(f"{name}: no max_seq_length (neither tokenizer model_max_length nor max_position_embeddings)")
            return False
        new["max_seq_length"] = length
    new.setdefault("do_lower_case", False)  # 6.x neither saves nor applies it for a saved model
    _write(path / name, new)
    _portable_tokenizer_class(path)
    return True


def _max_seq_length(path: Path) -> int | None:
    """What 6.x uses: the saved tokenizer's model_max_length (else the position table, as 5.x does)."""
    tokenizer = _read(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    length = tokenizer.get("model_max_length")
    if isinstance(length, (int, float)) and 0 < length < HUGE_LENGTH:
        return int(length)
    config = _read(path / "config.json") if (path / "config.json").is_file() else {}
    positions = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    return int(positions) if positions else None


def _portable_tokenizer_class(path: Path) -> None:
    """transformers 5 names its generic fast tokenizer `TokenizersBackend`; transformers 4 only knows the old name."""
    config_path = path / "tokenizer_config.json"
    if not config_path.is_file() or not (path / "tokenizer.json").is_file():
        return
    config = _read(config_path)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        _write(config_path, config)


def _pooling(path: Path, problems: list[str]) -> bool:
    config = _read(path / "config.json")
    dim = config.get("word_embedding_dimension", config.get("embedding_dimension"))
    modes = config.get("pooling_mode")
    if modes is None:
        active = [mode for key, mode in POOLING_FLAGS.items() if config.get(key)]
    else:
        active = [modes] if isinstance(modes, str) else list(modes)
    unknown = [m for m in active if m not in POOLING_FLAGS.values()]
    if dim is None or unknown:
        problems.append(f"{path.name}/config.json: pooling {config} has no 5.x form")
        return False
    new: dict[str, Any] = {"word_embedding_dimension": int(dim)}
    new.update({key: mode in active for key, mode in POOLING_FLAGS.items()})
    new["include_prompt"] = bool(config.get("include_prompt", True))
    _write(path / "config.json", new)
    return True


def _dense(path: Path, problems: list[str]) -> bool:
    config = _read(path / "config.json")
    extra = {k: v for k, v in config.items() if k not in DENSE_KEYS_5X and not (k.startswith("module_") and v == "sentence_embedding")}
    activation = str(config.get("activation_function", ""))
    if extra or not activation.startswith("torch."):
        problems.append(f"{path.name}/config.json: Dense settings {sorted(extra) or activation} have no 5.x form")
        return False
    if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        problems.append(f"{path.name}: no model.safetensors or pytorch_model.bin")
        return False
    _write(path / "config.json", {k: config[k] for k in DENSE_KEYS_5X if k in config})
    return True


def _normalize(path: Path, problems: list[str]) -> bool:
    config_path = path / "config.json"
    config = _read(config_path) if config_path.is_file() else {}
    if any(v != "sentence_embedding" for v in config.values()):
        problems.append(f"{path.name}/config.json: Normalize of {config} has no 5.x form")
        return False
    return True  # 5.x ignores the file; 6.x reads the defaults from it


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: Any) -> None:
    """Write only on change, through a temporary file, so a concurrent reader never sees half a file."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["PORTABLE_TYPES", "make_interoperable"]
