"""Evidence for `hybridembed tokenizer extend`: extend all-MiniLM-L6-v2 with a Chinese vocabulary, then train the extended and the unextended backbone with the same stages and compare them on suites/zh-local.yaml.

1. The vocabulary is learned from Chinese TRAINING text only (zh STS-B train, AFQMC train, the
   bge_finetune_data retrieval triples; rows sharing a text with the zh-local suite dropped, as
   benchmarks/reproduce_data.py does). Fertility (tokens per character) and the [UNK] rate are
   printed before/after on the held-apart tenth of that text, and English (en STS-B train) is
   checked token-for-token.
2. Both backbones then run the same stages with the same steps, batch and seed: an mlm stage on the
   Chinese training text (the vocabulary's training part) and a multitask stage on zh STS-B /
   AFQMC+BUSTM / bge triples (benchmarks/reproduce_data.py's decontaminated slices), and both are
   evaluated on suites/zh-local.yaml (a capped copy with --eval-max-samples). The last output is a
   markdown table of per-task main scores and their mean.

    python benchmarks/bilingual_extend.py            # full: ~25-30 min on 2 CPU cores (estimate)
    python benchmarks/bilingual_extend.py --quick    # a tiny random BERT, a few steps: plumbing only (< 2 min)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reproduce_arms as arms_mod  # noqa: E402
import reproduce_data as data_mod  # noqa: E402

REPO = data_mod.REPO
CORPUS_SOURCES = ("sts", "pcls", "bge")  # training splits only; reproduce_data's nli source reads dev/test files
FULL = {"backbone": "bundled:all-MiniLM-L6-v2", "corpus_cap": None, "vocab_size": 8000, "mlm_steps": 300, "train_steps": 150, "batch": 32,
        "quotas": {"sts": 4000, "pcls": 4000, "bge": 1500}, "eval_max_samples": None, "eval_max_corpus": None}  # fmt: skip
QUICK = {"backbone": None, "corpus_cap": 1500, "vocab_size": 3000, "mlm_steps": 2, "train_steps": 2, "batch": 8,
         "quotas": {"sts": 24, "pcls": 24, "bge": 16}, "eval_max_samples": 24, "eval_max_corpus": 60}  # fmt: skip
MAX_SEQ_LENGTH = 64


def chinese_training_texts(cap: int | None) -> tuple[list[str], dict[str, int]]:
    """Every text of the Chinese training sources, rows sharing a text with the zh-local suite dropped; (texts, dropped rows per source)."""
    dec = data_mod.Decontaminator(data_mod.suite_texts(data_mod.SUITES["zh"]))
    sources = data_mod.zh_sources()
    texts = [t.strip() for name in CORPUS_SOURCES for row in dec.keep(name, sources[name]) for t in data_mod.row_texts(row) if t.strip()]
    texts = list(dict.fromkeys(texts))
    if cap is not None and len(texts) > cap:
        texts = random.Random(0).sample(texts, cap)
    return texts, dec.dropped


def vocab_digest(backbone: str) -> str:
    """A hash of the backbone's vocabulary: a cached extension is reused only for the very tokenizer it extended."""
    import hashlib

    from transformers import AutoTokenizer

    from hybridembed.modeling.model import resolve_backbone

    vocab = sorted(AutoTokenizer.from_pretrained(resolve_backbone(backbone)).get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def english_texts() -> list[str]:
    rows = data_mod.tsv(data_mod.DATA / "en" / "stsb" / "train.tsv", header=True)
    return list(dict.fromkeys(t for r in rows for t in r[:2] if t.strip()))


def english_check(old_path: str, new_path: Path, texts: list[str]) -> dict[str, Any]:
    """Fertility of both tokenizers on English text and how many texts tokenize differently (expected: none)."""
    from transformers import AutoTokenizer

    from hybridembed.modeling.model import resolve_backbone
    from hybridembed.modeling.tokenizer_extend import measure_fertility

    old, new = AutoTokenizer.from_pretrained(resolve_backbone(old_path)), AutoTokenizer.from_pretrained(str(new_path))
    pairs = [(a, b) for a, b in zip(old(texts)["input_ids"], new(texts)["input_ids"]) if a != b]
    # A text whose old tokens had no [UNK] must come out identical; one that had [UNK] (a curly quote the
    # old vocabulary lacked, say) may now get the new token for it.
    changed_known = sum(old.unk_token_id not in a for a, _ in pairs)
    return {
        "texts": len(texts),
        "changed": len(pairs),
        "changed_without_unk": changed_known,
        "before": measure_fertility(old, texts).as_dict(),
        "after": measure_fertility(new, texts).as_dict(),
    }


def arm_recipe(backbone: str, out: Path, mlm_corpus: Path, files: dict[str, Path], sz: dict[str, Any]) -> dict[str, Any]:
    """mlm on the Chinese training text, then multitask on zh STS / pair classification / retrieval: the same for both arms."""
    return {
        "model": {"backbone": backbone, "pooling": "mean", "max_seq_length": MAX_SEQ_LENGTH},
        "training": {"output_dir": str(out), "batch_size": sz["batch"], "warmup_ratio": 0.1, "seed": 0, "logging_steps": max(1, sz["train_steps"] // 10), "report_to": []},
        "stages": [
            {"kind": "mlm", "mlm_probability": 0.30, "texts": [{"path": str(mlm_corpus)}],
             "training": {"max_steps": sz["mlm_steps"], "learning_rate": 1.0e-4}},
            {"kind": "multitask", "training": {"max_steps": sz["train_steps"], "learning_rate": 5.0e-5},
             "datasets": [
                 {"path": str(files["sts"]), "task": "sts", "score_range": [0, 5]},
                 {"path": str(files["pcls"]), "task": "pair_classification", "score_range": [0, 1]},
                 {"path": str(files["bge"]), "task": "retrieval", "num_negatives": 3},
             ]},
        ],
    }  # fmt: skip


def fertility_table(report: dict[str, Any], english: dict[str, Any]) -> str:
    lines = ["| text | tokenizer | tokens/char | tokens/word | [UNK] rate |", "|---|---|---|---|---|"]
    for name, source in ((f"zh held-apart ({report['held_out_texts']} texts)", report), (f"en STS-B train ({english['texts']} texts)", english)):
        for side in ("before", "after"):
            f = source[side]
            lines.append(f"| {name} | {side} | {f['tokens_per_char']:.3f} | {f['tokens_per_word']:.3f} | {f['unknown_rate']:.2%} |")
    return "\n".join(lines)


def score_table(results: dict[str, dict[str, Any]]) -> str:
    from hybridembed.evaluation import main_scores

    scores = {arm: main_scores(r) for arm, r in results.items()}
    arms = list(scores)
    tasks = list(scores[arms[0]])
    lines = ["| task | " + " | ".join(arms) + " | Δ |", "|---|" + "---|" * (len(arms) + 1)]
    for task in tasks + ["average"]:
        values = [sum(s.values()) / len(s) if task == "average" else s[task] for s in scores.values()]
        name = f"**{task}** (mean of tasks)" if task == "average" else task
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in values) + f" | {100 * (values[-1] - values[0]):+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bilingual-extend-bench", help="work folder (extended backbone, stage folders, results.json)")
    p.add_argument("--quick", action="store_true", help="a tiny random BERT, a small corpus and 2 steps per stage: plumbing only")
    p.add_argument("--backbone", default=None, help="backbone to extend (default all-MiniLM-L6-v2; --quick a tiny BERT built here)")
    p.add_argument("--mlm-steps", type=int, default=None, help="mlm stage steps (default 300)")
    p.add_argument("--train-steps", type=int, default=None, help="multitask stage steps (default 150)")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary trained on the Chinese text (default 8000)")
    p.add_argument("--eval-max-samples", type=int, default=None, help="cap every zh-local task at N samples (for time)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args(argv)

    import torch

    from hybridembed.modeling.tokenizer_extend import extend_backbone, format_report, split_held_out
    from hybridembed.recipe import Recipe
    from hybridembed.training.stages import run_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    sz = dict(QUICK if args.quick else FULL)
    overrides = {
        "backbone": args.backbone,
        "mlm_steps": args.mlm_steps,
        "train_steps": args.train_steps,
        "vocab_size": args.vocab_size,
        "eval_max_samples": args.eval_max_samples,
    }
    sz.update({k: v for k, v in overrides.items() if v is not None})
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if sz["backbone"] is None:  # --quick: a tiny random BERT with an English-only WordPiece, as the tests build
        from hybridembed.modeling.tiny import build_tiny_backbone

        tiny = out / "tiny-bert"
        sz["backbone"] = str(tiny if (tiny / "model.safetensors").is_file() else build_tiny_backbone(tiny, english_texts()[:3000], kind="bert"))

    texts, dropped = chinese_training_texts(sz["corpus_cap"])
    print(f"Chinese training text: {len(texts)} distinct texts (rows sharing a text with zh-local dropped: {dropped})")
    extended = out / "extended"
    report_path = extended / "tokenizer_extension.json"
    settings = {"backbone": sz["backbone"], "backbone_vocab": vocab_digest(sz["backbone"]), "vocab_size": sz["vocab_size"], "texts": len(texts)}
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else None
    if report is None or report.get("settings") != settings:
        t0 = time.perf_counter()
        report = extend_backbone(sz["backbone"], texts, extended, vocab_size=sz["vocab_size"], held_out_fraction=0.1, seed=0)
        report["settings"], report["seconds"] = settings, round(time.perf_counter() - t0, 1)
        report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(format_report(report))
    english = english_check(sz["backbone"], extended, english_texts())
    print(
        f"\nEnglish (en STS-B train): {english['changed']} of {english['texts']} texts tokenize differently after the extension, "
        f"{english['changed_without_unk']} of them without an [UNK] before\n"
    )
    print(fertility_table(report, english) + "\n")

    train_texts, _ = split_held_out(texts, 0.1, 0)  # the vocabulary's own training part: the held-apart tenth stays unseen
    mlm_corpus = out / "mlm_corpus.txt"
    mlm_corpus.write_text("\n".join(train_texts) + "\n", encoding="utf-8")
    data = data_mod.prepare("zh", out / "data", sz["quotas"], sz["eval_max_samples"], sz["eval_max_corpus"])
    results, seconds = {}, {}
    for arm, backbone in (("unextended", sz["backbone"]), ("extended", str(extended))):
        t0 = time.perf_counter()
        recipe = Recipe.model_validate(arm_recipe(backbone, out / "arms" / arm, mlm_corpus, data["files"], sz))
        model_dir = run_recipe(recipe)
        results[arm] = arms_mod.evaluate(str(model_dir), data["suite"], [], {"eval_max_seq_length": 256})
        seconds[arm] = round(time.perf_counter() - t0, 1)
        print(f"{arm}: trained and evaluated in {seconds[arm]:.0f} s")
    summary = {"sizes": sz, "extension": report, "english": english, "eval": results, "arm_seconds": seconds, "rows": data["rows"],
               "suite": str(data["suite"]), "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    capped = f"capped at {sz['eval_max_samples']} samples per task" if sz["eval_max_samples"] else "whole suite"
    print(
        f"\nzh-local ({capped}), main score ×100; both arms: mlm {sz['mlm_steps']} steps + multitask {sz['train_steps']} steps, "
        f"batch {sz['batch']}, seed 0, backbone {sz['backbone']}; total {summary['seconds'] / 60:.1f} min\n"
    )
    print(score_table(results))
    return summary


if __name__ == "__main__":
    main()
