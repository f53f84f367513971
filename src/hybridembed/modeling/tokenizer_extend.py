"""Extend a backbone's tokenizer with a new language's vocabulary (WordPiece or BPE) and grow its embedding matrix, each new row the mean of the token's pieces under the old tokenizer.

What this adds over `tokenizers` (which trains the new vocabulary) and transformers'
``resize_token_embeddings``: a merge of the new vocabulary into the old one that keeps every old id
and leaves ASCII (English) text tokenized exactly as before; for BERT-style tokenizers, which
put spaces around every CJK character so that multi-character Chinese entries could never match,
a pre-tokenizer that keeps runs of known CJK characters whole (chunked under WordPiece's
``max_input_chars_per_word``) for the WordPiece model to segment with ``##`` pieces; rows
initialised from the old pieces; and a fertility report (tokens per character / word, unknown
rate) before and after on held-apart text. See docs/backbones.md.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hybridembed.errors import HybridembedError

if TYPE_CHECKING:
    from sentence_transformers.sentence_transformer.modules import Transformer

logger = logging.getLogger(__name__)
REPORT_FILE = "tokenizer_extension.json"
# The code points BERT's BasicTokenizer treats as Chinese (`_is_chinese_char`), so the design below
# changes exactly the text the original `handle_chinese_chars` split.
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip
# Files of the old tokenizer that would contradict tokenizer.json (a slow BertTokenizer rebuilt
# from vocab.txt would split every CJK character again), removed from the saved folder.
STALE_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json")


def is_cjk(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in CJK_RANGES)


def _char_class(ranges: list[tuple[int, int]]) -> str:
    """A regex character class `[\\x{4E00}-\\x{9FFF}...]` (Oniguruma syntax, as `tokenizers` uses)."""
    parts = [f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in ranges]
    return "[" + "".join(parts) + "]"


def _ranges(chars: set[str]) -> list[tuple[int, int]]:
    """Consecutive code points merged into ranges, so a class of thousands of characters stays short."""
    ranges: list[tuple[int, int]] = []
    for code in sorted(map(ord, chars)):
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return ranges


def cjk_split_pattern(known: set[str], max_run: int) -> str:
    """Runs (≤ max_run) of `known` CJK characters as one pre-token each; any other CJK character alone, as BERT did."""
    any_cjk = _char_class(list(CJK_RANGES))
    if not known:
        return any_cjk
    return f"{_char_class(_ranges(known))}{{1,{max_run}}}|{any_cjk}"


@dataclass
class Fertility:
    """How finely a tokenizer cuts some text: tokens per non-space character and per whitespace word, and the unknown rate."""

    texts: int
    characters: int
    words: int
    tokens: int
    unknown: int

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / max(self.characters, 1)

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / max(self.words, 1)

    @property
    def unknown_rate(self) -> float:
        return self.unknown / max(self.tokens, 1)

    def as_dict(self) -> dict[str, Any]:
        rates = {"tokens_per_char": self.tokens_per_char, "tokens_per_word": self.tokens_per_word, "unknown_rate": self.unknown_rate}
        return {**asdict(self), **{k: round(v, 4) for k, v in rates.items()}}


def measure_fertility(tokenizer: Any, texts: list[str]) -> Fertility:
    """Fertility of a `tokenizers.Tokenizer` or a transformers tokenizer on `texts` (special tokens not counted)."""
    backend = bare(getattr(tokenizer, "backend_tokenizer", tokenizer))
    unk = _unk_token(backend)
    unk_id = backend.token_to_id(unk) if unk else None
    encodings = backend.encode_batch(texts, add_special_tokens=False) if texts else []
    ids = [i for enc in encodings for i in enc.ids]
    return Fertility(
        texts=len(texts),
        characters=sum(len(re.sub(r"\s", "", t)) for t in texts),
        words=sum(len(t.split()) for t in texts),
        tokens=len(ids),
        unknown=sum(i == unk_id for i in ids) if unk_id is not None else 0,
    )


def is_mostly_cjk(texts: list[str]) -> bool:
    """Chinese-like text (no spaces between words) is measured per character, other text per word."""
    chars = [c for t in texts for c in t if not c.isspace()]
    return sum(map(is_cjk, chars)) > len(chars) / 2


def split_held_out(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-apart): a seeded shuffle of the distinct texts; the held-apart part never trains the vocabulary."""
    unique = list(dict.fromkeys(texts))
    random.Random(seed).shuffle(unique)
    held = int(round(len(unique) * fraction)) if len(unique) > 1 else 0
    return unique[held:], unique[:held]


def bare(backend: Any) -> Any:
    """A copy of a `tokenizers.Tokenizer` without padding or truncation (a tokenizer.json may carry a fixed padding to 128)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def _unk_token(backend: Any) -> str | None:
    return json.loads(backend.to_str())["model"].get("unk_token")


def _walk(node: Any):
    """Every dict inside a tokenizer.json section (normalizers and pre-tokenizers nest in Sequences)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _is_ascii(surface: str) -> bool:
    return all(ord(c) < 128 for c in surface)


def _byte_level_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character → the byte it stands for."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)
    # GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to U+0100 onwards, in byte order.
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    shifted = [b for b in range(256) if b not in printable]
    mapping = {chr(b): b for b in printable}
    mapping.update({chr(256 + i): b for i, b in enumerate(shifted)})
    assert set(mapping) == set(alphabet)
    return mapping


@dataclass
class MergedVocab:
    """The extended tokenizer and the tokens it added, in id order (each token's id = start + its index)."""

    tokenizer: Any
    added: list[str]
    start: int


def _train_like(old_json: dict[str, Any], texts: list[str], trainer: Any) -> dict[str, Any]:
    """A fresh model of the old one's type trained on `texts` through the (edited) normalizer and pre-tokenizer of `old_json`."""
    from tokenizers import Tokenizer

    blank = json.loads(json.dumps(old_json))
    blank["added_tokens"], blank["post_processor"] = [], None
    tokenizer = Tokenizer.from_str(json.dumps(blank))
    tokenizer.train_from_iterator(texts, trainer)
    return json.loads(tokenizer.to_str())["model"]


def extend_wordpiece(old_json: dict[str, Any], texts: list[str], vocab_size: int, start: int, allow_ascii: bool) -> MergedVocab:
    """Train a WordPiece on `texts`, append the tokens the old vocabulary lacks, and keep CJK runs whole for it."""
    from tokenizers import Tokenizer, trainers

    model = old_json["model"]
    prefix, max_run = model.get("continuing_subword_prefix", "##"), int(model.get("max_input_chars_per_word", 100))
    new_json = json.loads(json.dumps(old_json))
    for node in _walk(new_json.get("normalizer")):
        if node.get("type") == "BertNormalizer":
            node["handle_chinese_chars"] = False  # the Split below isolates CJK instead, keeping known runs whole

    def with_split(pattern: str) -> dict[str, Any]:
        split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
        old = old_json.get("pre_tokenizer")
        return {"type": "Sequence", "pretokenizers": [split] + ([old] if old else [])}

    # Training sees every CJK run whole (≤ max_run characters), so it learns multi-character words.
    train_json = {**new_json, "pre_tokenizer": with_split(f"{_char_class(list(CJK_RANGES))}{{1,{max_run}}}")}
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[], continuing_subword_prefix=prefix, show_progress=False)
    trained = _train_like(train_json, texts, trainer)["vocab"]
    vocab: dict[str, int] = dict(model["vocab"])
    added: list[str] = []

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = start + len(added)
            added.append(token)

    for token in sorted(trained, key=trained.get):
        surface = token[len(prefix) :] if token.startswith(prefix) else token
        if surface and (allow_ascii or not _is_ascii(surface)):
            add(token)
    # Every character of a new token also gets its standalone and its `##` piece, so that a word the
    # greedy longest match cuts differently can always finish with single characters instead of
    # turning wholly into [UNK]; ASCII characters stay out (they would change English text).
    for char in sorted({c for t in list(added) for c in t.removeprefix(prefix) if allow_ascii or ord(c) >= 128}):
        add(char)
        add(prefix + char)
    known = {c for c in (t for t in vocab if len(t) == 1) if is_cjk(c) and prefix + c in vocab}
    new_json["pre_tokenizer"] = with_split(cjk_split_pattern(known, max_run))
    new_json["model"] = {**model, "vocab": vocab}
    return MergedVocab(Tokenizer.from_str(json.dumps(new_json)), added, start)


def extend_bpe(old_json: dict[str, Any], texts: list[str], vocab_size: int, start: int, allow_ascii: bool) -> MergedVocab:
    """Train a BPE on `texts` and append its merges that build tokens the old vocabulary lacks (after the old merges, so those apply first)."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers

    model = old_json["model"]
    byte_level = any(n.get("type") == "ByteLevel" for n in _walk(old_json.get("pre_tokenizer")))
    to_byte = _byte_level_decoder() if byte_level else {}

    def non_ascii(token: str) -> bool:
        return any(to_byte[c] >= 128 for c in token) if byte_level else not _is_ascii(token)

    affixes = {k: model[k] for k in ("continuing_subword_prefix", "end_of_word_suffix") if model.get(k)}
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], show_progress=False, initial_alphabet=alphabet, **affixes)
    trained = _train_like(old_json, texts, trainer)
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model["merges"]]
    added: list[str] = []
    new_alphabet = [t for t in sorted(trained["vocab"], key=trained["vocab"].get) if len(t) == 1 and t not in vocab]
    for token in new_alphabet:
        if allow_ascii or non_ascii(token):
            vocab[token] = start + len(added)
            added.append(token)
    for pair in trained["merges"]:
        left, right = pair.split(" ", 1) if isinstance(pair, str) else pair
        token = left + right
        if token in vocab or left not in vocab or right not in vocab or not (allow_ascii or non_ascii(token)):
            continue
        vocab[token] = start + len(added)
        added.append(token)
        merges.append([left, right])
    new_json = json.loads(json.dumps(old_json))
    new_json["model"] = {**model, "vocab": vocab, "merges": merges}
    return MergedVocab(Tokenizer.from_str(json.dumps(new_json)), added, start)


def old_pieces(old_backend: Any, token: str, model_type: str, prefix: str = "##") -> list[int]:
    """Ids of `token`'s pieces under the old tokenizer: its text through the whole old pipeline (WordPiece), or the old merges applied to its symbols (BPE)."""
    if model_type == "BPE":
        return [t.id for t in old_backend.model.tokenize(token)]
    surface = token[len(prefix) :] if token.startswith(prefix) else token
    return old_backend.encode(surface, add_special_tokens=False).ids


def initial_rows(old_embeddings: Any, old_backend: Any, added: list[str], model_type: str, prefix: str) -> tuple[Any, int]:
    """One row per added token: the mean of its old pieces' rows, [UNK] pieces left out when any piece is known (all-[UNK] → the [UNK] row).

    Returns (rows, how many tokens had only [UNK] pieces).
    """
    import torch

    unk = _unk_token(old_backend)
    unk_id = old_backend.token_to_id(unk) if unk else None
    rows, only_unk = [], 0
    for token in added:
        ids = old_pieces(old_backend, token, model_type, prefix)
        known = [i for i in ids if i != unk_id]
        if not known:
            only_unk += 1
            known = [unk_id] if unk_id is not None else list(range(old_embeddings.shape[0]))
        rows.append(old_embeddings[torch.tensor(known)].mean(dim=0))
    return (torch.stack(rows) if rows else old_embeddings[:0]), only_unk


def _transformer_dir(out: Path) -> Path:
    """Where a sentence-transformers folder keeps its Transformer module (usually the folder itself)."""
    modules = json.loads((out / "modules.json").read_text())
    first = next(m for m in modules if m["type"].endswith("Transformer"))
    return out / first["path"]


def extend_backbone(
    backbone: str,
    texts: list[str],
    out: str | Path,
    vocab_size: int = 8000,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    allow_ascii: bool = False,
) -> dict[str, Any]:
    """Extend `backbone`'s tokenizer with a vocabulary trained on `texts`, save the grown backbone to `out`, and return the report."""
    import torch
    from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast

    from hybridembed.modeling.model import _is_sentence_transformers_folder, resolve_backbone

    path, out = resolve_backbone(backbone), Path(out)
    source = None
    if _is_sentence_transformers_folder(path):
        from sentence_transformers import SentenceTransformer

        source = SentenceTransformer(path, device="cpu")
        transformer = cast("Transformer", source[0])  # the folder's Transformer module; nn.Sequential indexing only promises a Module
        tokenizer, auto_model = transformer.tokenizer, transformer.auto_model
    else:
        tokenizer, auto_model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    old_backend = getattr(tokenizer, "backend_tokenizer", None)
    if tokenizer is None or old_backend is None:
        raise HybridembedError(f"{backbone}: tokenizer {type(tokenizer).__name__} has no tokenizers backend (tokenizer.json); cannot extend it")
    old_backend = bare(old_backend)  # transformers sets padding and truncation per call
    old_json = json.loads(old_backend.to_str())
    model_type = old_json["model"]["type"]
    if model_type not in ("WordPiece", "BPE"):
        raise HybridembedError(f"{backbone}: a {model_type} tokenizer; tokenizer extend handles WordPiece and BPE")
    train_texts, held_texts = split_held_out(texts, held_out_fraction, seed)
    if not train_texts:
        raise HybridembedError("the corpus has no text left to train on after holding part apart")
    embeddings = cast(torch.Tensor, auto_model.get_input_embeddings().weight)  # an embedding table; torch types it Tensor | Module
    start = max(len(tokenizer), old_backend.get_vocab_size(with_added_tokens=True), embeddings.shape[0])
    extend = extend_wordpiece if model_type == "WordPiece" else extend_bpe
    merged = extend(old_json, train_texts, vocab_size, start, allow_ascii)
    prefix = old_json["model"].get("continuing_subword_prefix") or "##"
    logger.info("%s: %d tokens added after id %d (%s trained on %d texts)", backbone, len(merged.added), start - 1, model_type, len(train_texts))
    rows, only_unk = initial_rows(embeddings.detach(), old_backend, merged.added, model_type, prefix)
    if merged.added:
        auto_model.resize_token_embeddings(start + len(merged.added), mean_resizing=False)
        resized = cast(torch.Tensor, auto_model.get_input_embeddings().weight)
        with torch.no_grad():
            resized[start:] = rows
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    new_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=merged.tokenizer, model_max_length=tokenizer.model_max_length, padding_side=tokenizer.padding_side, **specials
    )
    out.mkdir(parents=True, exist_ok=True)
    if source is not None:
        source.save(str(out))
        tokenizer_dir = _transformer_dir(out)
    else:
        auto_model.save_pretrained(out)
        tokenizer_dir = out
    for name in (*STALE_TOKENIZER_FILES, "special_tokens_map.json", "tokenizer_config.json", "tokenizer.json"):
        (tokenizer_dir / name).unlink(missing_ok=True)
    # Saved as the generic tokenizers backend: AutoTokenizer (fast or `use_fast=False`) then reads
    # tokenizer.json as it is, where a BertTokenizer class would rebuild BERT's CJK splitting.
    new_tokenizer.save_pretrained(tokenizer_dir)
    cjk = is_mostly_cjk(held_texts or train_texts)
    report = {
        "backbone": backbone,
        "model_type": model_type,
        "vocab_size_before": start,
        "vocab_size_after": start + len(merged.added),
        "added_tokens": len(merged.added),
        "added_from_unknown_only": only_unk,
        "trained_vocab_size": vocab_size,
        "train_texts": len(train_texts),
        "held_out_texts": len(held_texts),
        "measure": "tokens_per_char" if cjk else "tokens_per_word",
        "before": measure_fertility(old_backend, held_texts).as_dict(),
        "after": measure_fertility(merged.tokenizer, held_texts).as_dict(),
        "sample_added": merged.added[:20],
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The fertility report as a few printable lines."""
    measure = report["measure"]
    lines = [
        f"added {report['added_tokens']} tokens ({report['vocab_size_before']} → {report['vocab_size_after']}); "
        f"{report['added_from_unknown_only']} of them had only [UNK] pieces before and start from the [UNK] row",
        f"held-apart text: {report['held_out_texts']} texts (not used to train the vocabulary); fertility = {measure.replace('_', ' ')}",
        "| tokenizer | tokens/char | tokens/word | unknown rate |",
        "|---|---|---|---|",
    ]
    for name in ("before", "after"):
        f = report[name]
        lines.append(f"| {name} | {f['tokens_per_char']:.3f} | {f['tokens_per_word']:.3f} | {f['unknown_rate']:.2%} |")
    return "\n".join(lines)
