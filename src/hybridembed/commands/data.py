"""`hybridembed data …`: check datasets (the same validation `train` runs before its first step) and import LLM instruction data as pairs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path


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
    check.add_argument(
        "--allow-missing", action="store_true", help="list data files that are not here (yet) instead of failing on them; check the rest"
    )
    check.set_defaults(func=run_check)
    _register_from_instructions(children)


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
    conv.add_argument(
        "--template-min-count", type=int, default=d.template_min_count, help="a reply shared by this many queries is templated (0: off)"
    )
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
    from hybridembed.stages import plan_stages, stage_recipe

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
    from hybridembed.errors import DataError
    from hybridembed.mlm import read_texts

    path = Path(cfg.path)
    if not path.exists():
        raise DataError([f"{path}: file not found"])
    if path.suffix.lower() == ".txt" and path.is_file():
        problems, count = [], 0
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    problems.append(f"{path}:{number}: (line): invalid UTF-8 at byte {err.start}")
                    continue
                count += bool(text.strip())
        if problems:
            raise DataError(problems[:200], summary=f"{path}: {len(problems)} line(s) of invalid UTF-8")
        if not count:
            raise DataError([f"{path}: empty file (no text lines)"])
        return count
    return len(read_texts(cfg.model_copy(update={"max_samples": None})))


def _check_group(group: CheckGroup, totals: CheckTotals, allow_missing: bool, cache: dict) -> list[str]:
    """Check one group; returns its report lines (problems go to `totals`)."""
    import json

    from hybridembed.data import load_dataset
    from hybridembed.errors import DataError

    lines = []
    for cfg in group.datasets:
        name = cfg.name or Path(cfg.path).stem
        if allow_missing and not Path(cfg.path).exists():
            totals.missing.append(cfg.path)
            lines.append(f"{name}: {cfg.path} is not here (not checked)")
            continue
        # The same file read the same way in two stages is validated once.
        key = json.dumps(cfg.model_dump(mode="json", include={"path", "task", "format", "columns", "header", "score_range", "max_samples"}), sort_keys=True)
        if key not in cache:
            try:
                cache[key] = load_dataset(cfg)
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
        if allow_missing and not Path(cfg.path).exists():
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
    totals, cache = CheckTotals(), {}
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
