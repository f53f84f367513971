"""Read a suite task's local file(s) into the column roles it maps (text1/text2/score, text/label, query/...).

csv / tsv (with a header, or headerless with 0-based column indices), jsonl, and BEIR folders
(corpus.jsonl, queries.jsonl, qrels/<split>.tsv), all read by the shared reader
(hybridembed.data.readers). Errors name the file, the line and the column.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridembed.data.readers import TextRecord, TextStream, iter_texts, read_records, text_problem
from hybridembed.errors import DataError
from hybridembed.evaluation.suite import TaskSpec


def read_columns(spec: TaskSpec, path: Path | None = None) -> list[dict[str, Any]]:
    """Rows of `path` (default: spec.path) as {role: value} for the roles in spec.columns, plus `_line`."""
    path = path or spec.path
    assert path is not None
    fmt = spec.resolved_format  # an explicit `format:` wins over the file name
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    for raw in read_records(path, spec.header, kind=fmt):
        number, record = raw.line, raw.fields
        row: dict[str, Any] = {"_line": number}
        for role, column in spec.columns.items():
            if column not in record or record[column] is None:
                problems.append(f"{path}:{number}: column {column!r} ({role}) missing")
                break
            # A JSON "\ud800" escape would only fail later, inside the tokenizer, without a line.
            problem = text_problem(record[column], allow_blank=True) if isinstance(record[column], str) else None
            if problem is not None:
                problems.append(f"{path}:{number}: {column}: {problem}")
                break
            row[role] = record[column]
        else:
            out.append(row)
        if len(problems) >= 20:
            break
    if problems:
        raise DataError(problems, summary=f"task {spec.name!r}: cannot read {path}")
    if not out:
        raise DataError([f"{path}: no rows"], summary=f"task {spec.name!r}")
    return out


def to_float(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError([f"{where}: expected a number, got {value!r}"]) from None


def subsample(rows: list[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded random subset of `limit` rows in their original order (all rows when limit is None)."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


@dataclass
class RetrievalData:
    """BEIR-shaped data: corpus id -> text, query id -> text, qrels query id -> {doc id: grade}."""

    corpus: dict[str, str] = field(default_factory=dict)
    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    # Reranking: the candidates of each query (mteb's `top_ranked`).
    candidates: dict[str, list[str]] = field(default_factory=dict)


def read_beir(spec: TaskSpec) -> RetrievalData:
    """A BEIR folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/<split>.tsv."""
    folder = spec.path
    assert folder is not None
    data = RetrievalData()
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / name).is_file():
            raise DataError([f"{folder}: BEIR folder lacks {name}"])
    stream = iter_texts(folder / "corpus.jsonl", "text", on_empty="keep")  # a title-only document is fine
    for item in stream:
        doc_id = _record_id(item, stream)
        title = item.fields.get("title") or ""
        problem = text_problem(title, allow_blank=True)
        if problem is not None:
            stream.add_problem(f"{stream.path}:{item.line}: title: {problem}")
        elif doc_id is not None:
            data.corpus[doc_id] = f"{title} {item.text}".strip() if title else item.text
    stream = iter_texts(folder / "queries.jsonl", "text", on_empty="keep")  # as before: real sets (cmrc2018) hold empty queries
    for item in stream:
        query_id = _record_id(item, stream)
        if query_id is not None:
            data.queries[query_id] = item.text
    qrels_dir = folder / "qrels"
    qrels_file = qrels_dir / f"{spec.split}.tsv"
    if not qrels_file.is_file():
        found = sorted(p.name for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
        raise DataError([f"{qrels_file}: not found (split {spec.split!r}; available: {found})"])
    for record in read_records(qrels_file, header=False, kind="tsv"):
        parts = list(record.fields.values())
        if len(parts) < 3 or not parts[2].lstrip("-").isdigit():
            if record.line == 1:
                continue  # header row (query-id corpus-id score)
            raise DataError([f"{qrels_file}:{record.line}: expected `query-id<TAB>corpus-id<TAB>score`"])
        qid, did, grade = parts[0], parts[1], int(parts[2])
        if qid in data.queries and did in data.corpus:
            data.qrels.setdefault(qid, {})[did] = grade
    return data


def _record_id(item: TextRecord, stream: TextStream) -> str | None:
    value = item.fields.get("_id")
    if value is None or str(value).strip() == "":
        stream.add_problem(f"{stream.path}:{item.line}: _id: missing or empty id")
        return None
    return str(value)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def read_ranking_rows(spec: TaskSpec) -> RetrievalData:
    """Retrieval/reranking from rows: one candidate per row (query, document, label) or lists per row
    (query, positive[], negative[] — the FlagEmbedding layout). Identical texts share one corpus id."""
    rows = read_columns(spec)
    data = RetrievalData()
    doc_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}

    def doc_id(text: str) -> str:
        return doc_ids.setdefault(text, f"d{len(doc_ids)}")

    for row in rows:
        query = str(row["query"])
        qid = str(row["query_id"]) if "query_id" in row else query_ids.setdefault(query, f"q{len(query_ids)}")
        data.queries[qid] = query
        cands = data.candidates.setdefault(qid, [])
        rels = data.qrels.setdefault(qid, {})
        if "document" in spec.columns:
            did = doc_id(str(row["document"]))
            grade = int(to_float(row["label"], f"{spec.path}:{row['_line']}: label"))
            cands.append(did)
            if grade > 0:
                rels[did] = grade
        else:
            for text in _as_list(row.get("positive")):
                cands.append(doc_id(text))
                rels[doc_id(text)] = 1
            for text in _as_list(row.get("negative")):
                if doc_id(text) not in rels:
                    cands.append(doc_id(text))
    data.corpus = {did: text for text, did in doc_ids.items()}
    for qid, cands in data.candidates.items():
        data.candidates[qid] = list(dict.fromkeys(cands))
    return data


def restrict_retrieval(data: RetrievalData, spec: TaskSpec) -> tuple[RetrievalData, int]:
    """Drop queries without a relevant document, then apply max_samples (queries) and max_corpus
    (keeps every document judged for a kept query, fills up with a seeded sample of the rest).
    Returns the data and the number of queries dropped for lacking a relevant document."""
    judged = [q for q in data.queries if any(g > 0 for g in data.qrels.get(q, {}).values())]
    dropped = len(data.queries) - len(judged)
    kept = subsample(judged, spec.max_samples, spec.seed)
    out = RetrievalData(
        queries={q: data.queries[q] for q in kept},
        qrels={q: data.qrels[q] for q in kept},
        candidates={q: data.candidates[q] for q in kept if q in data.candidates},
    )
    needed = {d for q in kept for d in data.qrels[q]} | {d for c in out.candidates.values() for d in c}
    doc_ids = list(data.corpus)
    if spec.max_corpus is not None and spec.max_corpus < len(doc_ids):
        others = [d for d in doc_ids if d not in needed]
        room = max(spec.max_corpus - len(needed), 0)
        keep = needed | set(subsample(others, room, spec.seed))
        doc_ids = [d for d in doc_ids if d in keep]
    out.corpus = {d: data.corpus[d] for d in doc_ids}
    return out, dropped
