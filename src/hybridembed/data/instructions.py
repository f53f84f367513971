"""Read LLM instruction data (alpaca, ShareGPT, OpenAI chat) as (query, positive) pairs, with every structural problem reported as `file:line: field: problem`.

What this adds: sentence-transformers and datasets read the files but know nothing of these
conventions. Mapping: alpaca → query = instruction (+ blank line + input when present), positive =
output; ShareGPT (``conversations`` of ``from``/``value``) and OpenAI chat (``messages`` of
``role``/``content``, content as text or a list of ``{"type": "text"}`` parts) → each user turn and
the assistant turn right after it. ``turns="first"`` (default) keeps only the first exchange of a
conversation, whose query needs no earlier context; ``"all"`` keeps every exchange. System turns
are skipped. Files are read by the shared reader (hybridembed.data.readers): ``.jsonl`` (one
record per line), ``.json`` (also an array of records, each reported at the line where it
starts), or any other record format it reads (csv, parquet, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from hybridembed.data.readers import MAX_PROBLEMS, read_records, text_problem
from hybridembed.errors import DataError

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bot", "model"}
SYSTEM_ROLES = {"system", "developer", "tool", "function"}


class InstructionFormat(StrEnum):
    AUTO = "auto"
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    OPENAI = "openai"


@dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    line: int


def detect_instruction_format(record: dict[str | int, Any]) -> InstructionFormat | None:
    if "conversations" in record:
        return InstructionFormat.SHAREGPT
    if "messages" in record:
        return InstructionFormat.OPENAI
    if "instruction" in record and "output" in record:
        return InstructionFormat.ALPACA
    return None


def _alpaca(record: dict[str | int, Any], problems: list[str]) -> list[tuple[str, str]]:
    values: dict[str, Any] = {}  # text_problem passed: each is a str
    for key, required in (("instruction", True), ("input", False), ("output", True)):
        value = record.get(key)
        if value is None and not required:
            value = ""
        problem = text_problem(value, allow_blank=True)
        if problem is not None:
            problems.append(f"{key}: {problem}")
            continue
        values[key] = value
    if problems:
        return []
    query = values["instruction"].strip()
    if values["input"].strip():
        query = f"{query}\n\n{values['input'].strip()}"
    return [(query, values["output"].strip())]


def _content_text(content: Any, where: str, problems: list[str]) -> str | None:
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if not parts or not all(isinstance(p, str) for p in parts):
            problems.append(f"{where}: content parts without text")
            return None
        content = "\n".join(cast(list[str], parts))  # all str: checked just above
    problem = text_problem(content, allow_blank=True)
    if problem is not None:
        problems.append(f"{where}: {problem}")
        return None
    return content


def _turns(record: dict[str | int, Any], fmt: InstructionFormat, problems: list[str]) -> list[tuple[str, str]]:
    """(role kind, text) per turn: kind is user / assistant / system."""
    key, role_key, text_key = ("conversations", "from", "value") if fmt is InstructionFormat.SHAREGPT else ("messages", "role", "content")
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        problems.append(f"{key}: expected a non-empty list of turns")
        return []
    out = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            problems.append(f"{where}: expected an object with {role_key!r} and {text_key!r}")
            continue
        role = str(turn.get(role_key, "")).lower()
        kind = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else "system" if role in SYSTEM_ROLES else None
        if kind is None:
            problems.append(f"{where}.{role_key}: unknown role {turn.get(role_key)!r}")
            continue
        text = _content_text(turn.get(text_key), f"{where}.{text_key}", problems)
        if text is not None:
            out.append((kind, text))
    return out


def _exchanges(turns: list[tuple[str, str]], all_turns: bool) -> list[tuple[str, str]]:
    pairs = []
    for (kind, text), (next_kind, next_text) in zip(turns, turns[1:], strict=False):
        if kind == "user" and next_kind == "assistant":
            pairs.append((text.strip(), next_text.strip()))
            if not all_turns:
                break
    return pairs


def read_instruction_pairs(path: str | Path, fmt: InstructionFormat = InstructionFormat.AUTO, turns: str = "first") -> tuple[list[Pair], int]:
    """All (query, positive) pairs of a file and the number of records read; DataError lists every bad record."""
    path = Path(path)
    pairs: list[Pair] = []
    problems: list[str] = []
    records = 0
    for raw in read_records(path):
        line, record = raw.line, raw.fields
        records += 1
        found: list[str] = []
        record_format = fmt if fmt is not InstructionFormat.AUTO else detect_instruction_format(record)
        if record_format is None:
            found.append(f"(record): not alpaca (instruction/output), ShareGPT (conversations) or OpenAI chat (messages); keys {sorted(record)}")
        match record_format:
            case InstructionFormat.ALPACA:
                exchanges = _alpaca(record, found)
            case InstructionFormat.SHAREGPT | InstructionFormat.OPENAI:
                exchanges = _exchanges(_turns(record, record_format, found), turns == "all")
            case _:
                exchanges = []
        if found:
            problems.extend(f"{path}:{line}: {p}" for p in found[: MAX_PROBLEMS - len(problems)])
            continue
        pairs.extend(Pair(q, p, line) for q, p in exchanges)
    if problems:
        raise DataError(problems, summary=f"{path}: invalid record(s); nothing was written")
    return pairs, records
