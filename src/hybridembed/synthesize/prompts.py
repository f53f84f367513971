"""Prompt templates (packaged `prompts/*.txt` or the user's own files): load, fill in a passage, rotate per passage, and parse the query out of a reply."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hybridembed.errors import HybridembedError

PLACEHOLDERS = ("{passage}", "{title}", "{language}", "{instruction}")
# Lines holding only an optional field: dropped when the field is empty so the prompt has no "Title: " stub.
OPTIONAL = ("{title}", "{instruction}")
# "Query:", "Question 1:", "问题：", "**Query**:" … that models put before the answer.
PREFIX_RE = re.compile(
    r"^\s*(?:[*_#>\-•]+\s*)?(?:(?:search\s+)?query|question|keywords?|claim|answer|output|查询|问题|关键词|声明|陈述)"
    r"(?:\s*\d+)?\s*[*_]*\s*[:：]\s*",
    re.IGNORECASE,
)
NUMBERING_RE = re.compile(r"^\s*(?:\d+[.)、]|[-*•])\s+")
QUOTES = [('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("「", "」"), ("『", "』"), ("«", "»"), ("`", "`")]
JSON_KEYS = ("query", "question", "claim", "keywords", "text")
FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class PromptTemplate:
    name: str  # the file's stem: written to every row as `prompt_id`
    text: str

    @property
    def wants_json(self) -> bool:
        return "json" in self.text.lower()

    def render(self, passage: str, title: str | None = None, language: str = "", instruction: str | None = None) -> str:
        values = {"{passage}": passage, "{title}": title or "", "{language}": language, "{instruction}": instruction or ""}
        lines = []
        for line in self.text.splitlines():
            if any(p in line and not values[p].strip() for p in OPTIONAL):
                continue
            lines.append(line)
        text = "\n".join(lines).strip() + "\n"
        # One pass over the template, so a passage containing "{language}" is not filled in itself.
        return re.sub("|".join(re.escape(p) for p in PLACEHOLDERS), lambda m: values[m.group(0)], text)


def packaged_prompts() -> list[str]:
    folder = resources.files("hybridembed.synthesize") / "prompts"
    return sorted(p.name[: -len(".txt")] for p in folder.iterdir() if p.name.endswith(".txt"))


def load_prompt(name_or_path: str) -> PromptTemplate:
    """A packaged template by name (question, short_query, keyword_query, claim) or a text file of your own."""
    path = Path(name_or_path)
    if path.suffix or path.exists() or "/" in name_or_path:
        if not path.is_file():
            raise HybridembedError(f"--prompt {name_or_path}: file not found")
        text = path.read_text(encoding="utf-8")
        name = path.stem
    else:
        resource = resources.files("hybridembed.synthesize") / "prompts" / f"{name_or_path}.txt"
        if not resource.is_file():
            raise HybridembedError(f"--prompt {name_or_path}: no such template (packaged: {', '.join(packaged_prompts())}; or give a file path)")
        text = resource.read_text(encoding="utf-8")
        name = name_or_path
    if "{passage}" not in text:
        raise HybridembedError(f"--prompt {name_or_path}: the template has no {{passage}} placeholder")
    return PromptTemplate(name, text)


def load_prompts(specs: list[str]) -> list[PromptTemplate]:
    """`--prompt` values, each one name/path or a comma list; order kept, repeats removed."""
    names = list(dict.fromkeys(s.strip() for spec in specs for s in spec.split(",") if s.strip()))
    if not names:
        raise HybridembedError("--prompt: no template given")
    return [load_prompt(n) for n in names]


def prompt_for(templates: list[PromptTemplate], position: int) -> PromptTemplate:
    """Round-robin over the corpus order, so every template gets an equal share and a re-run picks the same one."""
    return templates[position % len(templates)]


def _unquote(text: str) -> str:
    text = text.strip()
    changed = True
    while changed and len(text) >= 2:
        changed = False
        for left, right in QUOTES:
            if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
                text, changed = text[len(left) : -len(right)].strip(), True
    return text


def _from_json(reply: str) -> str | None:
    fenced = FENCE_RE.search(reply)
    candidates = [fenced.group(1)] if fenced else []
    start, end = reply.find("{"), reply.rfind("}")
    if 0 <= start < end:
        candidates.append(reply[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            for key in JSON_KEYS:
                if isinstance(value.get(key), str):
                    return value[key]
                if isinstance(value.get(key), list) and all(isinstance(v, str) for v in value[key]):
                    return " ".join(value[key])
    return None


def parse_query(reply: str | None) -> str | None:
    """The query in a model's reply, or None when there is none: JSON {"query": …} when present, else the first
    non-empty line without a "Query:"-style prefix, list numbering or surrounding quotes."""
    if not reply or not reply.strip():
        return None
    found = _from_json(reply)
    if found is None:
        if reply.lstrip().startswith("{"):
            return None  # a JSON reply without a usable field (or cut off): not a query
        lines = [FENCE_RE.sub(lambda m: m.group(1), line) for line in reply.strip().splitlines()]
        lines = [line.strip().strip("`").strip() for line in lines]
        lines = [line for line in lines if line and not PREFIX_RE.fullmatch(line + " ")]
        if not lines:
            return None
        found = lines[0]
    found = NUMBERING_RE.sub("", PREFIX_RE.sub("", found.strip()))
    found = _unquote(found.strip().strip("*").strip())
    found = " ".join(found.split())
    return found or None
