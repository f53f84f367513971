"""`hybridembed data …`: check datasets (the same validation `train` runs before its first step), import LLM instruction data as pairs, and synthesize queries for a corpus."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybridembed.data.loading import TaskDataset
    from hybridembed.data.streaming import StreamCheck


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect and validate training data", description="Data tools.")
    children = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    check = children.add_parser(
        "check",
        help="validate a recipe's datasets or one data file",
        description="Check every dataset of every stage (and the text files of an mlm stage) as `train` reads them; print "
        "per-stage, per-dataset counts; exit non-zero listing every bad record as file:line: field: problem.",
    )
    check.add_argument("target", help="a recipe YAML, or a data file/folder")
    check.add_argument("--task", help="task type of a single data file (unless its format carries it)")
    check.add_argument("--format", default="auto", help="data format of a single file (default: auto-detect)")
    check.add_argument("--no-header", action="store_true", help="csv/tsv file without a header row")
    check.add_argument("--allow-missing", action="store_true", help="list data files that are not here (yet) instead of failing on them; check the rest")
    check.set_defaults(func=run_check)
    _register_from_instructions(children)
    _register_synthesize(children)


def _register_from_instructions(children: argparse._SubParsersAction) -> None:
    from hybridembed.data.pair_filters import LANGUAGE_SCRIPTS, FilterSettings

    d = FilterSettings()
    conv = children.add_parser(
        "from-instructions",
        help="turn LLM instruction data (alpaca, ShareGPT, OpenAI chat) into (query, positive) pairs",
        description="Read alpaca / ShareGPT / OpenAI-chat .jsonl or .json files, filter the pairs (rules in docs/data.md) "
        "and write {query, positive} jsonl; prints how many pairs each filter removed.",
    )
    conv.add_argument("inputs", nargs="+", metavar="IN", help="input file(s)")
    conv.add_argument("--out", required=True, help="output .jsonl (our retrieval format)")
    conv.add_argument("--format", default="auto", choices=["auto", "alpaca", "sharegpt", "openai"])
    conv.add_argument("--turns", default="first", choices=["first", "all"], help="exchanges kept per conversation (default: first)")
    conv.add_argument("--min-query-chars", type=int, default=d.min_query_chars)
    conv.add_argument("--max-query-chars", type=int, default=d.max_query_chars)
    conv.add_argument("--min-response-chars", type=int, default=d.min_response_chars)
    conv.add_argument("--max-response-chars", type=int, default=d.max_response_chars)
    conv.add_argument("--keep-refusals", action="store_true", help="do not drop refusals / AI disclaimers")
    conv.add_argument("--template-min-count", type=int, default=d.template_min_count, help="a reply shared by this many queries is templated (0: off)")
    conv.add_argument(
        "--language", choices=sorted(LANGUAGE_SCRIPTS), help="keep pairs written in this language's script (a Latin-script code keeps any Latin script)"
    )
    conv.add_argument("--near-threshold", type=float, default=d.near_threshold, help="MinHash Jaccard for near duplicates")
    conv.add_argument("--no-near-dedup", action="store_true", help="keep near duplicates (exact ones are still removed)")
    conv.set_defaults(func=run_from_instructions)


def run_from_instructions(args: argparse.Namespace) -> int:
    import json

    from hybridembed.data.instructions import InstructionFormat, read_instruction_pairs
    from hybridembed.data.pair_filters import FilterSettings, filter_pairs
    from hybridembed.errors import DataError, HybridembedError

    if not args.no_near_dedup and not 0 < args.near_threshold <= 1:
        raise HybridembedError(f"--near-threshold {args.near_threshold}: must be in (0, 1]")
    pairs, problems, records = [], [], 0
    for path in args.inputs:
        try:
            found, count = read_instruction_pairs(path, InstructionFormat(args.format), args.turns)
        except DataError as err:
            problems.extend(err.problems)
            continue
        pairs.extend(found)
        records += count
    if problems:
        raise DataError(problems, summary=f"{len(problems)} invalid record(s); nothing was written")
    settings = FilterSettings(
        min_query_chars=args.min_query_chars, max_query_chars=args.max_query_chars,
        min_response_chars=args.min_response_chars, max_response_chars=args.max_response_chars,
        drop_refusals=not args.keep_refusals, template_min_count=args.template_min_count, language=args.language,
        near_threshold=None if args.no_near_dedup else args.near_threshold,
    )  # fmt: skip
    kept, report = filter_pairs(pairs, settings)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for pair in kept:
            f.write(json.dumps({"query": pair.query, "positive": pair.positive}, ensure_ascii=False) + "\n")
    print(f"read {records} records ({len(pairs)} pairs) from {len(args.inputs)} file(s)")
    print("removed by filter:")
    print("\n".join(report.lines()))
    print(f"wrote {report.kept} pairs to {out}")
    return 0


def _register_synthesize(children: argparse._SubParsersAction) -> None:
    from hybridembed.synthesize.config import EndpointSettings, GenerationSettings, QualitySettings, SynthesisSettings

    e, g, q, s = EndpointSettings(url="", model=""), GenerationSettings(), QualitySettings(), SynthesisSettings(corpus="", out="")
    syn = children.add_parser(
        "synthesize",
        help="generate retrieval queries for a corpus with an LLM (OpenAI-compatible endpoint or local model), filtered",
        description="Ask an LLM for one query per passage, filter the replies (malformed, copies, language, duplicates, "
        "round-trip consistency) and append {query, positives, generator, prompt_id, passage_id} rows; a re-run resumes. "
        "See docs/synthesize.md.",
    )
    syn.add_argument("--corpus", required=True, help="jsonl of passages {text, id/_id?, title?} or a BEIR folder (its corpus.jsonl)")
    syn.add_argument("--out", required=True, help="output .jsonl (appended; passages already in it are skipped)")
    source = syn.add_mutually_exclusive_group(required=True)
    source.add_argument("--endpoint", help="OpenAI-compatible server URL (e.g. http://localhost:8000/v1)")
    source.add_argument("--local", metavar="PATH", help="a transformers causal-LM folder run here")
    syn.add_argument("--model", help="model name sent to --endpoint")
    syn.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key (optional; default: OPENAI_API_KEY)")
    syn.add_argument("--prompt", action="append", help=f"template name or file; repeat or comma-separate to rotate per passage (default: {s.prompts[0]})")
    syn.add_argument("--language", help="language code of the queries (zh, en, ...): named in the prompt and enforced by the script filter")
    syn.add_argument("--instruction", help="task description filled into the template's {instruction} line")
    syn.add_argument("--limit", type=int, help="use only the first N passages")
    syn.add_argument("--max-passage-chars", type=int, default=s.max_passage_chars, help=f"cut longer passages in the prompt (default: {s.max_passage_chars})")
    syn.add_argument("--concurrency", type=int, default=e.concurrency, help=f"requests in flight (default: {e.concurrency})")
    syn.add_argument("--timeout", type=float, default=e.timeout, help=f"seconds per request (default: {e.timeout:g})")
    syn.add_argument("--max-retries", type=int, default=e.max_retries, help=f"retries on 429/5xx/timeouts (default: {e.max_retries})")
    syn.add_argument("--max-requests", type=int, help="budget of HTTP requests, retries included (default: unbounded)")
    syn.add_argument("--batch-size", type=int, default=8, help="--local prompts per generate() call (default: 8)")
    syn.add_argument("--max-new-tokens", type=int, default=g.max_new_tokens, help=f"(default: {g.max_new_tokens})")
    syn.add_argument("--temperature", type=float, default=g.temperature, help=f"0 = greedy (default: {g.temperature:g})")
    syn.add_argument("--top-p", type=float, default=g.top_p, help=f"(default: {g.top_p:g})")
    syn.add_argument("--seed", type=int, default=g.seed)
    syn.add_argument(
        "--max-overlap",
        type=float,
        default=q.max_overlap,
        help=f"drop queries with this share of their tokens in the passage; 1 = off (default: {q.max_overlap:g})",
    )
    syn.add_argument(
        "--near-threshold", type=float, default=q.near_threshold, help=f"MinHash Jaccard for near-duplicate queries (default: {q.near_threshold:g})"
    )
    syn.add_argument("--no-near-dedup", action="store_true", help="drop exact duplicate queries only")
    syn.add_argument("--filter-model", default=q.filter_model, help=f"embedding model of the consistency filter and mining (default: {q.filter_model})")
    syn.add_argument("--consistency-k", type=int, default=q.consistency_k, help=f"keep a query if its passage ranks in its top K (default: {q.consistency_k})")
    syn.add_argument("--no-consistency", action="store_true", help="skip the round-trip consistency filter")
    syn.add_argument("--mine-negatives", type=int, default=0, metavar="N", help="also mine N hard negatives per kept row (default: 0)")
    syn.add_argument("--negatives-range", nargs=2, type=int, default=list(s.negatives_range), metavar=("FIRST", "LAST"),
                     help=f"rank window of mined negatives (default: {s.negatives_range[0]} {s.negatives_range[1]})")  # fmt: skip
    syn.add_argument("--cache-dir", help="corpus-embedding cache folder (default: the mining cache)")
    syn.add_argument("--no-progress", action="store_true", help="hide progress bars")
    syn.set_defaults(func=run_synthesize)


def run_synthesize(args: argparse.Namespace) -> int:
    import os
    from collections import Counter

    from pydantic import ValidationError

    from hybridembed.errors import HybridembedError
    from hybridembed.schema import validation_problems
    from hybridembed.synthesize import EndpointGenerator, LocalGenerator, synthesize
    from hybridembed.synthesize.config import EndpointSettings, GenerationSettings, LocalSettings, QualitySettings, SynthesisSettings
    from hybridembed.synthesize.filters import check_quality

    if args.endpoint and not args.model:
        raise HybridembedError("--endpoint needs --model (the model name the server serves)")
    try:
        generation = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
        quality = QualitySettings(
            max_overlap=args.max_overlap, language=args.language, near_threshold=None if args.no_near_dedup else args.near_threshold,
            consistency=not args.no_consistency, consistency_k=args.consistency_k, filter_model=args.filter_model, cache_dir=args.cache_dir,
        )  # fmt: skip
        settings = SynthesisSettings(
            corpus=args.corpus, out=args.out, prompts=args.prompt or ["question"], language=args.language, instruction=args.instruction,
            max_passage_chars=args.max_passage_chars, limit=args.limit, mine_negatives=args.mine_negatives,
            negatives_range=tuple(args.negatives_range), progress=not args.no_progress, generation=generation, quality=quality,
        )  # fmt: skip
        if args.endpoint:
            source: EndpointSettings | LocalSettings = EndpointSettings(
                url=args.endpoint, model=args.model, api_key=os.environ.get(args.api_key_env) or None, concurrency=args.concurrency,
                timeout=args.timeout, max_retries=args.max_retries, max_requests=args.max_requests,
            )  # fmt: skip
        else:
            source = LocalSettings(path=args.local, batch_size=args.batch_size)
    except ValidationError as err:
        raise HybridembedError("invalid synthesize option: " + "; ".join(validation_problems(err))) from None
    check_quality(quality)
    stats: Counter = Counter()
    generator = EndpointGenerator(source, generation, stats) if isinstance(source, EndpointSettings) else LocalGenerator(source, generation, stats)
    report = synthesize(settings, generator)
    print("\n".join(report.lines()))
    return 0


@dataclass
class CheckGroup:
    """What one stage (or the whole single-stage recipe, or one file) trains on."""

    label: str | None  # None: a single-stage recipe or one data file (no stage heading)
    datasets: list = field(default_factory=list)  # DatasetConfig, resolved as the stage trains on them
    texts: list = field(default_factory=list)  # TextsConfig of an mlm stage


@dataclass
class CheckTotals:
    datasets: int = 0
    rows: int = 0
    text_files: int = 0
    texts: int = 0
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_groups(recipe) -> list[CheckGroup]:
    """Every stage's datasets (as `train` resolves them: the recipe's when a stage has none, pairs-stage
    rows defaulting to retrieval) and every mlm stage's text files; a recipe without stages is one group."""
    from pydantic import ValidationError

    from hybridembed.errors import RecipeError
    from hybridembed.recipe import StageKind
    from hybridembed.training.stages import plan_stages, stage_recipe

    if not recipe.stages:
        return [CheckGroup(None, list(recipe.datasets))]
    groups = []
    for plan in plan_stages(recipe):
        if plan.stage.kind is StageKind.MLM:
            groups.append(CheckGroup(plan.label, texts=list(plan.stage.texts or [])))
            continue
        try:
            resolved = stage_recipe(recipe, plan, recipe.model.backbone, resume=False)
        except ValidationError as err:
            raise RecipeError(f"{plan.label}: {err}") from None
        groups.append(CheckGroup(plan.label, datasets=list(resolved.datasets)))
    return groups


def check_text_file(cfg) -> int:
    """Validate one `texts:` entry of an mlm stage as the mlm stage reads it; return its number of texts.

    A .txt file is one text per line (blank lines skipped): every line must be UTF-8. Any other file
    goes through the mlm reader, every record (not only the first `max_samples`)."""
    from hybridembed.data.readers import iter_texts, missing_file
    from hybridembed.data.text_stream import count_streamed_texts
    from hybridembed.errors import DataError
    from hybridembed.training.mlm import read_texts

    if cfg.streaming:  # a file, folder or glob of shards, read as training reads them
        return count_streamed_texts(cfg)
    path = Path(cfg.path)
    if not path.exists():
        raise DataError([missing_file(path)])
    if path.suffix.lower() == ".txt" and path.is_file():
        count = sum(1 for _ in iter_texts(path))  # the shared reader: every bad line is collected, then raised
        if not count:
            raise DataError([f"{path}: empty file (no text lines)"])
        return count
    return len(read_texts(cfg.model_copy(update={"max_samples": None})))


def _check_group(group: CheckGroup, totals: CheckTotals, allow_missing: bool, cache: dict) -> list[str]:
    """Check one group; returns its report lines (problems go to `totals`)."""
    import json

    from hybridembed.data import load_dataset
    from hybridembed.data.loading import reader_settings
    from hybridembed.data.sources import is_hub
    from hybridembed.data.streaming import check_stream
    from hybridembed.errors import DataError

    lines = []
    for cfg in group.datasets:
        name = cfg.name or Path(cfg.path).stem
        if allow_missing and not is_hub(cfg.path) and not cfg.streaming and not Path(cfg.path).exists():
            totals.missing.append(cfg.path)
            lines.append(f"{name}: {cfg.path} is not here (not checked)")
            continue
        # The same file read the same way in two stages is validated once.
        key = json.dumps({"path": cfg.path, **reader_settings(cfg)}, sort_keys=True)
        if key not in cache:
            try:
                cache[key] = check_stream(cfg) if cfg.streaming else load_dataset(cfg)
            except DataError as err:
                cache[key] = err
                totals.problems.extend(err.problems or [str(err)])
        result = cache[key]
        if isinstance(result, DataError):
            lines.append(f"{name}: {cfg.path}: FAILED ({len(result.problems) or 1} problem(s), listed below)")
            continue
        totals.datasets += 1
        totals.rows += len(result)
        lines.append(replace(result, name=name).summary())
    for cfg in group.texts:
        if allow_missing and not cfg.streaming and not Path(cfg.path).exists():
            totals.missing.append(cfg.path)
            lines.append(f"texts {cfg.path}: not here (not checked)")
            continue
        try:
            count = check_text_file(cfg)
        except DataError as err:
            totals.problems.extend(err.problems or [str(err)])
            lines.append(f"texts {cfg.path}: FAILED ({len(err.problems) or 1} problem(s), listed below)")
            continue
        totals.text_files += 1
        totals.texts += count
        used = f", the first {cfg.max_samples} used" if cfg.max_samples and cfg.max_samples < count else ""
        lines.append(f"texts {cfg.path}: {count} texts{used}")
    return lines


def run_check(args: argparse.Namespace) -> int:
    from hybridembed.errors import DataError
    from hybridembed.recipe import DatasetConfig, load_recipe

    target = Path(args.target)
    if target.suffix.lower() in (".yaml", ".yml"):
        groups = check_groups(load_recipe(target))
    else:
        config = DatasetConfig(path=str(target), task=args.task, format=args.format, header=not args.no_header)
        config.name = target.stem
        groups = [CheckGroup(None, [config])]
    totals = CheckTotals()
    cache: dict[str, TaskDataset | StreamCheck | DataError] = {}  # one entry per file and reader settings, across groups
    for group in groups:
        before = (totals.datasets, totals.rows, totals.text_files, totals.texts, len(totals.problems))
        lines = _check_group(group, totals, args.allow_missing, cache)
        if group.label is None:
            print("\n".join(lines))
            continue
        n_datasets, n_rows = totals.datasets - before[0], totals.rows - before[1]
        n_files, n_texts = totals.text_files - before[2], totals.texts - before[3]
        what = f"{n_files} text file(s), {n_texts} texts" if group.texts else f"{n_datasets} dataset(s), {n_rows} rows"
        failed = len(totals.problems) - before[4]
        print(f"{group.label}: {what}" + (f"; FAILED: {failed} problem(s)" if failed else ""))
        print("\n".join(f"  {line}" for line in lines))
    summary = f"{totals.datasets} dataset(s), {totals.rows} rows"
    if any(g.texts for g in groups):
        summary += f"; {totals.text_files} text file(s), {totals.texts} texts"
    if len(groups) > 1 or groups[0].label is not None:
        summary = f"{len(groups)} stage(s): {summary}"
    if totals.missing:
        summary += f"; {len(totals.missing)} file(s) not here, not checked (--allow-missing)"
    if totals.problems:
        hint = " (--allow-missing checks the rest without them)" if any(p.endswith(": file not found") for p in totals.problems) else ""
        raise DataError(totals.problems, summary=f"{len(totals.problems)} data problem(s) found{hint}; valid: {summary}")
    print(f"ok: {summary}")
    return 0
