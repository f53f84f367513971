"""Tiny random backbones (BERT-style encoder, Qwen2-style decoder) with tokenizers trained on the fly, for tests and smoke runs offline."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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


def _bpe_tokenizer(corpus: list[str], vocab_size: int, max_length: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<unk>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    eos_id = tok.token_to_id("<eos>")
    # Decoder embedders pool the last token, so every input ends with EOS.
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", eos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>", model_max_length=max_length
    )


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
    """Save a random-weight Hugging Face backbone plus tokenizer to `out_dir` and return the path."""
    import torch
    from transformers import AutoModel, BertConfig, Qwen2Config

    corpus = list(corpus)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    match kind:
        case "bert":
            tokenizer = _bert_tokenizer(corpus, vocab_size, max_positions)
            config = BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=hidden_size,
                num_hidden_layers=num_layers,
                num_attention_heads=num_heads,
                intermediate_size=hidden_size * 4,
                max_position_embeddings=max_positions,
                pad_token_id=tokenizer.pad_token_id,
            )
        case "qwen2":
            tokenizer = _bpe_tokenizer(corpus, vocab_size, max_positions)
            tokenizer.padding_side = "left"
            config = Qwen2Config(
                vocab_size=len(tokenizer),
                hidden_size=hidden_size,
                num_hidden_layers=num_layers,
                num_attention_heads=num_heads,
                num_key_value_heads=max(1, num_heads // 2),
                intermediate_size=hidden_size * 4,
                max_position_embeddings=max_positions,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.eos_token_id,
            )
        case _:
            raise ValueError(f"unknown tiny backbone kind {kind!r} (expected 'bert' or 'qwen2')")
    model = AutoModel.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
