"""Does LLM-synthesized retrieval data help? Train a small query generator, synthesize CMRC 2018 queries with `data synthesize --local`, fine-tune MiniLM with vs without them.

No generative model can be downloaded here, so the "LLM" is trained on the spot: a GPT-2 config
from scratch (4 layers × 256 hidden in the full run) with a WordPiece tokenizer trained on the fly
(BERT-style: one token per Chinese character), on the *training* pairs of
../shared/data/zh/retrieval/bge_finetune_data.jsonl, learning positive passage → query, for a bounded
time. Then:

1. `hybridembed data synthesize --local GENERATOR` on the CMRC 2018 paragraphs
   (../shared/data/zh/cmrc2018/retrieval/corpus.jsonl — the corpus only; its questions and qrels are
   never read for generation or filtering), with the consistency filter on the base MiniLM; prints
   sample queries and the filter counts. This is Promptagator's setting: queries are synthesized
   for the target corpus itself, without its labelled questions.
2. all-MiniLM-L6-v2 trained on a base Chinese mixture (bge retrieval triples + zh STS-B train) with
   and without the synthetic rows, equal steps, same seed;
3. the CMRC retrieval task of suites/zh-local.yaml scored for the base model and both arms; the last
   output is a markdown table.

    python benchmarks/synthetic_data.py                 # full: about 30 min on 2 CPU cores
    python benchmarks/synthetic_data.py --quick         # smoke run: tiny generator, few steps, < 2 min on an idle machine
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "zh"
BGE = SHARED / "retrieval" / "bge_finetune_data.jsonl"
STSB = SHARED / "stsb" / "train.tsv"
CMRC = SHARED / "cmrc2018" / "retrieval"
# Short on purpose: a prompt's tokens cost context on a 256-position model; the same text trains and prompts the generator.
PROMPT = "为下面的段落写一个搜索问题。\n段落：{passage}\n问题："

FULL = {"gen_minutes": 6.0, "gen_layers": 4, "gen_hidden": 256, "passages": None, "steps": 300, "batch": 32, "eval_queries": None,
        "max_seq_length": 256, "smoke": False}  # fmt: skip
# --quick only proves the script runs: an untrained generator writes noise, so its language and consistency filters are
# relaxed (no script check, top-k = every passage) for some rows to reach the synthetic arm; inputs are cut to 64 tokens.
QUICK = {"gen_minutes": 0.1, "gen_layers": 2, "gen_hidden": 64, "passages": 16, "steps": 2, "batch": 8, "eval_queries": 20,
         "max_seq_length": 48, "smoke": True}  # fmt: skip


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def generator_examples(tokenizer, max_passage_chars: int, max_query_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per bge pair: [CLS] prompt(pos) [SEP] query [SEP], the loss on the query and its final [SEP]."""
    sep = tokenizer.sep_token_id
    examples = []
    with open(BGE, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for positive in row["pos"][:1]:
                prompt = tokenizer(PROMPT.replace("{passage}", positive[:max_passage_chars]))["input_ids"]
                query = tokenizer(row["query"], add_special_tokens=False)["input_ids"][:max_query_tokens] + [sep]
                examples.append((prompt + query, [-100] * len(prompt) + query))
    return examples


def train_generator(out: Path, cfg: dict, max_passage_chars: int, seed: int) -> Path:
    """A GPT-2 trained from scratch for cfg['gen_minutes'] minutes; saved as a transformers folder (model + tokenizer)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from hybridembed.modeling.tiny import _bert_tokenizer

    if (out / "config.json").exists():
        log(f"generator: reusing {out}")
        return out
    torch.manual_seed(seed)
    # A WordPiece vocabulary trained here (Chinese characters one token each, as in MiniLM's) on the bge pairs and the
    # CMRC *passages*: ~8k entries instead of MiniLM's 30.5k, so the output layer — most of a small LM's cost — shrinks 4x.
    with open(BGE, encoding="utf-8") as f:
        texts = [t for line in f for r in [json.loads(line)] for t in [r["query"], *r["pos"]]]
    with open(CMRC / "corpus.jsonl", encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f]
    tokenizer = _bert_tokenizer(texts, 8000, 256)
    tokenizer.eos_token, tokenizer.bos_token = tokenizer.sep_token, tokenizer.cls_token  # generation stops at [SEP]
    examples = generator_examples(tokenizer, max_passage_chars, 48)
    positions = 256
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=positions, n_embd=cfg["gen_hidden"], n_layer=cfg["gen_layers"], n_head=4,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    rng = random.Random(seed)
    deadline = time.time() + cfg["gen_minutes"] * 60
    step, batch_size, losses = 0, 32, []
    log(f"generator: GPT-2 {cfg['gen_layers']}x{cfg['gen_hidden']}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"{len(examples)} bge pairs (passage -> query), {cfg['gen_minutes']:g} min")  # fmt: skip
    model.train()
    while time.time() < deadline:
        batch = rng.sample(examples, batch_size)
        width = min(positions, max(len(ids) for ids, _ in batch))
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            x, y = x[:width], y[:width]
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        lr = 1e-3 * min(1.0, (step + 1) / 50)  # linear warm-up, then constant: the run is cut by time, not steps
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        step += 1
        if step % 25 == 0:
            log(f"generator step {step}: loss {sum(losses[-25:]) / 25:.3f}")
    log(f"generator: {step} steps, last loss {sum(losses[-20:]) / max(1, len(losses[-20:])):.3f}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def synthesize(work: Path, generator: Path, cfg: dict, args) -> Path:
    """Run the CLI itself (`hybridembed data synthesize --local`) on the CMRC corpus; returns the output file."""
    from hybridembed.cli import main

    prompt = work / "cmrc_question.txt"
    prompt.write_text(PROMPT, encoding="utf-8")
    out = work / "synthetic_cmrc.jsonl"
    argv = [
        "data", "synthesize", "--corpus", str(CMRC), "--out", str(out), "--local", str(generator), "--prompt", str(prompt),
        "--max-passage-chars", str(args.max_passage_chars), "--max-new-tokens", "40", "--temperature", "0.7", "--batch-size", "16",
        "--consistency-k", str(cfg["passages"] if cfg["smoke"] else args.consistency_k), "--max-overlap", str(args.max_overlap),
        "--cache-dir", str(work / "cache"), "--no-progress",
    ]  # fmt: skip
    if not cfg["smoke"]:
        argv += ["--language", "zh"]
    if cfg["passages"]:
        argv += ["--limit", str(cfg["passages"])]
    log("synthesize: " + " ".join(argv))
    if main(argv) != 0:
        raise SystemExit("data synthesize failed")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] if out.exists() else []
    log(f"synthesize: {len(rows)} rows kept; samples:")
    for row in rows[:8]:
        print(f"  {row['query']}  <-  {row['positives'][0][:50]}…", flush=True)
    return out


def cmrc_suite(work: Path, eval_queries: int | None) -> Path:
    """The cmrc2018-retrieval task of suites/zh-local.yaml, alone (paths made absolute; a query subsample in --quick)."""
    import yaml

    suite = yaml.safe_load((REPO / "suites" / "zh-local.yaml").read_text(encoding="utf-8"))
    task = next(t for t in suite["tasks"] if t["name"] == "cmrc2018-retrieval")
    task["path"] = str((REPO / "suites" / task["path"]).resolve())
    if eval_queries:
        task["max_samples"] = eval_queries
    path = work / "cmrc_suite.yaml"
    path.write_text(yaml.safe_dump({"name": "cmrc-only", "tasks": [task]}, sort_keys=False), encoding="utf-8")
    return path


def score(name_or_path: str, suite: Path, max_seq_length: int) -> dict[str, float]:
    from hybridembed.api import evaluate
    from hybridembed.modeling.model import load_model

    model = load_model(name_or_path)
    model.max_seq_length = max_seq_length
    results = evaluate(model, suite, show_progress=False)
    task = results.tasks[0]
    metrics = results.metrics(task)
    extra = {k: float(metrics[k]) for k in ("recall_at_10", "mrr_at_10") if k in metrics}
    return {"ndcg@10": results.score(task), **extra}


def train_arm(work: Path, name: str, synthetic: Path | None, cfg: dict, seed: int) -> Path:
    # (hybridembed.train is the same function; the training package is hybridembed.training)
    from hybridembed.api import train

    datasets = [
        {"path": str(BGE), "task": "retrieval", "num_negatives": 1},
        {"path": str(STSB), "task": "sts", "header": False, "columns": {"text1": 0, "text2": 1, "score": 2}, "score_range": [0, 5]},
    ]
    if synthetic is not None:
        datasets.append({"path": str(synthetic), "task": "retrieval", "name": "synthetic_cmrc"})
    recipe = {
        "model": {"backbone": "bundled:all-MiniLM-L6-v2", "max_seq_length": cfg["max_seq_length"]},
        "datasets": datasets,
        "losses": {"sts": {"name": "cosent", "temperature": 0.2}},
        "training": {"output_dir": str(work / name), "batch_size": cfg["batch"], "learning_rate": 3e-5, "max_steps": cfg["steps"],
                     "warmup_ratio": 0.1, "logging_steps": max(1, cfg["steps"] // 10), "seed": seed, "report_to": []},
    }  # fmt: skip
    log(f"train {name}: {cfg['steps']} steps, batch {cfg['batch']}, datasets {[Path(d['path']).name for d in datasets]}")
    started = time.time()
    folder = train(recipe)
    log(f"train {name}: {time.time() - started:.0f} s -> {folder}")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny generator, 16 passages, 2 steps, 20 eval queries (< 2 min)")
    parser.add_argument("--work", default="runs/synthetic-data", help="working folder (generator, synthetic rows, models)")
    parser.add_argument("--steps", type=int, help="training steps per arm (default: 300; --quick 2)")
    parser.add_argument("--gen-minutes", type=float, help="generator training time (default: 6; --quick 0.1)")
    parser.add_argument("--consistency-k", type=int, default=1, help="consistency filter's top k (default: 1, Promptagator)")
    parser.add_argument("--max-overlap", type=float, default=0.8, help="copy filter's token-overlap bound (default: 0.8)")
    parser.add_argument("--max-passage-chars", type=int, default=180, help="passage prefix the generator sees (default: 180)")
    parser.add_argument("--synth-only", action="store_true", help="stop after synthesizing (inspect the generator and filter counts)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    cfg["steps"] = args.steps or cfg["steps"]
    cfg["gen_minutes"] = args.gen_minutes if args.gen_minutes is not None else cfg["gen_minutes"]
    for path in (BGE, STSB, CMRC / "corpus.jsonl"):
        if not path.exists():
            raise SystemExit(f"{path}: not found (../shared/data beside the checkout)")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    generator = train_generator(work / "generator", cfg, args.max_passage_chars, args.seed)
    synthetic = synthesize(work, generator, cfg, args)
    if args.synth_only:
        return 0
    suite = cmrc_suite(work, cfg["eval_queries"])
    table = [("base (all-MiniLM-L6-v2)", 0, score("bundled:all-MiniLM-L6-v2", suite, cfg["max_seq_length"]))]
    log(f"base: {table[-1][2]}")
    n_synthetic = 0
    if synthetic.exists():
        with open(synthetic, encoding="utf-8") as f:
            n_synthetic = sum(1 for _ in f)
    for name, extra in (("base-mixture", None), ("base-mixture+synthetic", synthetic if n_synthetic else None)):
        folder = train_arm(work, name, extra, cfg, args.seed)
        table.append((name, n_synthetic if extra else 0, score(str(folder), suite, cfg["max_seq_length"])))
        log(f"{name}: {table[-1][2]}")
    log(f"total {time.time() - started:.0f} s")
    metrics = list(table[0][2])
    print(f"\nCMRC 2018 retrieval ({cfg['eval_queries'] or 'all 1002'} queries, 256 paragraphs); {cfg['steps']} steps per arm, seed {args.seed}")
    print("| arm | synthetic rows | cmrc " + " | cmrc ".join(m.replace("_at_", "@") for m in metrics) + " |")
    print("|---|---|" + "---|" * len(metrics))
    for name, rows, scores in table:
        print(f"| {name} | {rows} | " + " | ".join(f"{scores[m]:.4f}" for m in metrics) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
