"""The synthesis pass: passages → prompts → generator → parse → filters → appended retrieval rows, resumable, with every outcome counted."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hybridembed.errors import DataError, HybridembedError
from hybridembed.synthesize import filters as rules
from hybridembed.synthesize.config import SynthesisSettings
from hybridembed.synthesize.corpus import Passage, read_passages
from hybridembed.synthesize.generators import Generator
from hybridembed.synthesize.prompts import load_prompts, parse_query, prompt_for

logger = logging.getLogger(__name__)


@dataclass
class SynthesisReport:
    out: str
    passages: int = 0
    stats: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        s = self.stats
        http = sorted((k.removeprefix("http error: "), v) for k, v in s.items() if k.startswith("http error: "))
        lines = [
            f"passages: {self.passages} in the corpus, {s['skipped: already done']} already done (skipped), {s['to do']} to do",
            f"generated: {s['generated']} replies ({s['requests sent']} requests sent, {s['retries']} of them retries)",
            "dropped by filter:",
            *(f"  {rule}: {s[rule]}" for rule in rules.RULES),
            f"kept: {s['kept']} rows appended to {self.out}",
            "http errors: " + (", ".join(f"{k}: {v}" for k, v in http) or "none"),
            f"not done (a re-run retries them): {s['failed: retries exhausted']} gave up after retries, "
            f"{s['failed: not retryable']} not retryable, {s['not sent: --max-requests spent']} not sent (--max-requests spent)",
        ]
        if s["negatives mined"] or s["rows with negatives"]:
            lines.append(f"hard negatives: {s['negatives mined']} mined for {s['rows with negatives']} rows")
        return lines + [f"note: {n}" for n in self.notes]


def done_path(out: str | Path) -> Path:
    """Beside the output: ids of passages whose reply was judged (kept or dropped), so a re-run does not ask again."""
    return Path(f"{out}.done")


def _complete_lines(path: Path) -> list[str]:
    """The file's lines, first cutting off a last line left half-written by a killed run."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a half-written last line (an interrupted run)", path)
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    return data.decode("utf-8").splitlines()


def read_done(out: str | Path) -> tuple[set[str], list[str]]:
    """(passage ids already judged, queries already written) from an earlier run's output and done file."""
    out = Path(out)
    done: set[str] = set()
    queries: list[str] = []
    for number, line in enumerate(_complete_lines(out), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            done.add(str(row["passage_id"]))
            queries.append(row["query"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError([f"{out}:{number}: passage_id: not a row this command wrote; choose another --out"]) from None
    for line in _complete_lines(done_path(out)):
        if line.strip():
            done.add(json.loads(line))
    return done, queries


def _row(query: str, passage: Passage, generator: str, prompt_id: str) -> dict[str, Any]:
    return {"query": query, "positives": [passage.text], "generator": generator, "prompt_id": prompt_id, "passage_id": passage.id}


def synthesize(settings: SynthesisSettings, generator: Generator, filter_model=None) -> SynthesisReport:
    """Generate, filter and append rows for every passage not done yet; `filter_model` (a SentenceTransformer) is loaded from
    `settings.quality.filter_model` when consistency or mining needs one and none is given."""
    quality = settings.quality
    templates = load_prompts(settings.prompts)
    passages = read_passages(settings.corpus, settings.limit)
    out = Path(settings.out)
    if out.resolve() == Path(settings.corpus).resolve():
        raise HybridembedError(f"--out {out}: would overwrite --corpus")
    report = SynthesisReport(str(out), len(passages), generator.stats)  # one counter: the generator's HTTP outcomes too
    stats = report.stats
    filters = rules.QueryFilters(quality, stats)
    done, written = read_done(out)
    filters.remember(written)
    todo = [p for p in passages if p.id not in done]
    stats["skipped: already done"] = len(passages) - len(todo)
    stats["to do"] = len(todo)

    if filter_model is None and ((quality.consistency and todo) or settings.mine_negatives):
        from hybridembed.modeling.model import load_model

        try:
            filter_model = load_model(quality.filter_model)
        except OSError as err:
            raise HybridembedError(f"--filter-model {quality.filter_model}: cannot load: {err}") from None
    texts = list(dict.fromkeys(p.text for p in passages))
    consistency = rules.ConsistencyFilter(filter_model, texts, quality, settings.progress) if quality.consistency and todo else None
    position_of = {text: i for i, text in enumerate(texts)}

    out.parent.mkdir(parents=True, exist_ok=True)
    language = settings.language_name()
    with open(out, "a", encoding="utf-8") as sink, open(done_path(out), "a", encoding="utf-8") as marks, \
            tqdm(total=len(todo), desc="synthesizing", unit="passage", disable=not settings.progress) as bar:  # fmt: skip
        for start in range(0, len(todo), settings.chunk_size):
            chunk = todo[start : start + settings.chunk_size]
            chosen = [prompt_for(templates, p.position) for p in chunk]
            prompts = [t.render(p.text[: settings.max_passage_chars], p.title, language, settings.instruction) for t, p in zip(chosen, chunk)]
            replies = generator.generate(prompts, [settings.generation.seed + p.position for p in chunk])
            judged, survivors = [], []
            for passage, template, reply in zip(chunk, chosen, replies, strict=True):
                if reply.status != "ok":
                    continue  # failed or never sent: not done, a re-run asks again
                stats["generated"] += 1
                judged.append(passage)
                query = parse_query(reply.text)
                rule = filters.rule(query, passage.text)
                if rule is None:
                    assert query is not None  # rule() calls a reply without a query MALFORMED
                    survivors.append((query, passage, template))
                else:
                    stats[rule] += 1
            if consistency is not None and survivors:
                verdicts = consistency.keep([q for q, _, _ in survivors], [position_of[p.text] for _, p, _ in survivors])
                stats[rules.INCONSISTENT] += sum(not v for v in verdicts)
                survivors = [s for s, v in zip(survivors, verdicts) if v]
            for query, passage, template in survivors:
                rule = filters.duplicate(query)
                if rule is not None:
                    stats[rule] += 1
                    continue
                sink.write(json.dumps(_row(query, passage, generator.name, template.name), ensure_ascii=False) + "\n")
                stats["kept"] += 1
            sink.flush()
            # The rows first: a run killed between the two writes finds the kept rows' ids in the output anyway.
            marks.writelines(json.dumps(p.id, ensure_ascii=False) + "\n" for p in judged)
            marks.flush()
            bar.update(len(chunk))
            bar.set_postfix(kept=stats["kept"], refresh=False)
            if any(r.status == "budget" for r in replies):
                skipped = len(todo) - start - len(chunk)
                stats["not sent: --max-requests spent"] += skipped
                report.notes.append(f"--max-requests spent: {stats['not sent: --max-requests spent']} passage(s) not asked; re-run to continue")
                break
    if settings.mine_negatives:
        mine_into(out, filter_model, texts, settings, stats, report)
    return report


def mine_into(out: Path, model, corpus: list[str], settings: SynthesisSettings, stats: Counter, report: SynthesisReport) -> None:
    """Hard negatives for every row of `out` with mining.offline, merged back into the rows (provenance kept), file replaced atomically."""
    from hybridembed.mining.offline import MiningOptions, load_queries, mine_hard_negatives

    if not out.exists() or not out.stat().st_size:
        report.notes.append("no rows to mine negatives for")
        return
    dataset = load_queries(out)
    options = MiningOptions(num_negatives=settings.mine_negatives, rank_range=settings.negatives_range, seed=settings.generation.seed)
    mined_path = out.with_name(out.name + ".mined.tmp")
    mined = mine_hard_negatives(model, dataset, mined_path, corpus, options, settings.quality.cache_dir, settings.progress)
    report.notes.extend(mined.notes)
    raw = [json.loads(line) for line in _complete_lines(out) if line.strip()]
    merged_path = out.with_name(out.name + ".merged.tmp")
    with open(mined_path, encoding="utf-8") as source, open(merged_path, "w", encoding="utf-8") as sink:
        for row, line in zip(raw, source, strict=True):
            negatives = json.loads(line)
            row.update({k: negatives[k] for k in ("negatives", "negative_scores", "negative_ranks")})
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            stats["rows with negatives"] += bool(row["negatives"])
    os.replace(merged_path, out)
    mined_path.unlink()
    stats["negatives mined"] += mined.negatives_written
