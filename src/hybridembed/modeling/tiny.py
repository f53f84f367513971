"""Tiny random backbones of every supported family (BERT, RoBERTa, XLM-R, ModernBERT encoders; Qwen2, LLaMA, GPT-2 decoders) with tokenizers trained on the fly, for tests and smoke runs offline."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

SPECIAL_BERT = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert_tokenizer(corpus: list[str], vocab_size: int, max_length: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_BERT))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def _bpe_tokenizer(corpus: list[str], vocab_size: int, max_length: int, style: str = "eos"):
    """Byte-level BPE. `style` picks the special-token convention of a real family:

    eos: Qwen2-like, ``$A <eos>`` (the tokenizer appends EOS itself); bos: LLaMA-like, ``<s> $A``
    (BOS only, no pad token); plain: GPT-2-like, no special tokens added, EOS ``<|endoftext|>``, no pad
    token; roberta: ``<s> $A </s>`` with ``<pad>`` and ``<mask>`` (RoBERTa / XLM-R).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {
        "eos": ["<pad>", "<unk>", "<eos>"],
        "bos": ["<unk>", "<s>", "</s>"],
        "plain": ["<|endoftext|>"],
        "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    }[style]
    tok = Tokenizer(models.BPE(unk_token=None if style == "plain" else "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=style == "roberta")
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    ids = {name: tok.token_to_id(name) for name in specials}
    match style:
        case "eos":
            tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", ids["<eos>"])])
            names = {"unk_token": "<unk>", "pad_token": "<pad>", "eos_token": "<eos>"}
        case "bos":
            tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", ids["<s>"])])
            names = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
        case "plain":
            names = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
        case "roberta":
            sep_id, cls_id = ids["</s>"], ids["<s>"]
            assert sep_id is not None and cls_id is not None, "special tokens are always in the trained vocabulary"
            tok.post_processor = processors.RobertaProcessing(("</s>", sep_id), ("<s>", cls_id))
            names = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                     "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **names)


ENCODER_KINDS = ("bert", "roberta", "xlm-roberta", "modernbert")
DECODER_KINDS = ("qwen2", "llama", "gpt2")
TINY_KINDS = ENCODER_KINDS + DECODER_KINDS


class _Sizes(TypedDict):
    """Shape arguments shared by the BERT-style and LLaMA-style configs (GPT-2 names them differently)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


class _Ids(TypedDict):
    pad_token_id: int | None
    vocab_size: int


def build_tiny_backbone(
    out_dir: str | Path,
    corpus: Iterable[str],
    kind: str = "bert",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 2000,
    max_positions: int = 128,
    seed: int = 0,
) -> Path:
    """Save a random-weight Hugging Face backbone plus tokenizer to `out_dir` and return the path.

    Kinds (one per family hybridembed supports): encoders ``bert``, ``roberta``, ``xlm-roberta``,
    ``modernbert``; decoders ``qwen2`` (tokenizer appends EOS, left padding), ``llama`` (BOS only,
    no pad token) and ``gpt2`` (no special tokens, no pad token, absolute positions) — the last two
    leave EOS and padding to hybridembed, as their real checkpoints do.
    """
    import torch
    import transformers

    corpus = list(corpus)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sizes: _Sizes = {"hidden_size": hidden_size, "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
                     "intermediate_size": hidden_size * 4}  # fmt: skip
    config: PreTrainedConfig
    match kind:
        case "bert" | "modernbert":
            tokenizer = _bert_tokenizer(corpus, vocab_size, max_positions)
            ids: _Ids = {"pad_token_id": tokenizer.pad_token_id, "vocab_size": len(tokenizer)}
            if kind == "bert":
                config = transformers.BertConfig(max_position_embeddings=max_positions, **ids, **sizes)
            else:
                special = {"cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id,
                           "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}  # fmt: skip
                # global_attn_every_n_layers is no dataclass field: ModernBertConfig.__post_init__ reads it from its kwargs.
                config = transformers.ModernBertConfig(  # type: ignore[call-arg]
                    max_position_embeddings=max_positions, local_attention=16, global_attn_every_n_layers=2, **ids, **special, **sizes
                )
        case "roberta" | "xlm-roberta":
            tokenizer = _bpe_tokenizer(corpus, vocab_size, max_positions, style="roberta")
            encoder_class = transformers.RobertaConfig if kind == "roberta" else transformers.XLMRobertaConfig
            # RoBERTa numbers positions from padding_idx + 1, so its table has two extra rows.
            config = encoder_class(
                vocab_size=len(tokenizer), max_position_embeddings=max_positions + 2, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **sizes,
            )  # fmt: skip
        case "qwen2" | "llama":
            tokenizer = _bpe_tokenizer(corpus, vocab_size, max_positions, style="eos" if kind == "qwen2" else "bos")
            decoder_class = transformers.Qwen2Config if kind == "qwen2" else transformers.LlamaConfig
            if kind == "qwen2":
                tokenizer.padding_side = "left"
            config = decoder_class(
                vocab_size=len(tokenizer), num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=max_positions,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id or tokenizer.eos_token_id, **sizes,
            )  # fmt: skip
        case "gpt2":
            tokenizer = _bpe_tokenizer(corpus, vocab_size, max_positions, style="plain")
            config = transformers.GPT2Config(
                vocab_size=len(tokenizer), n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions,
                bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        case _:
            raise ValueError(f"unknown tiny backbone kind {kind!r} (expected one of {TINY_KINDS})")
    model = transformers.AutoModel.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
