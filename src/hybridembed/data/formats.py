"""Format adapters: detect a file's convention (ours, Piccolo, FlagEmbedding, sentence-transformers, explicit columns) and map raw records to canonical rows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hybridembed.data.readers import lone_surrogate
from hybridembed.data.rows import CanonicalRow
from hybridembed.recipe import DataFormat
from hybridembed.tasks import RowShape, TaskType

# Piccolo2's `type` column values and the task type each one means.
PICCOLO_TYPES = {
    "retri_contrast": TaskType.RETRIEVAL,
    "cls_contrast": TaskType.CLASSIFICATION,
    "cosent": TaskType.STS,
}

# sentence-transformers column conventions → our canonical fields.
ST_ALIASES = {
    "anchor": "query", "query": "query", "question": "query", "premise": "query",
    "positive": "positive", "answer": "positive", "response": "positive", "entailment": "positive", "hypothesis": "positive",
    "negative": "negative", "contradiction": "negative",
    "sentence1": "text1", "sentence_a": "text1", "sentence_A": "text1", "text1": "text1",
    "sentence2": "text2", "sentence_b": "text2", "sentence_B": "text2", "text2": "text2",
    "score": "score", "scores": "score", "similarity": "score", "relatedness_score": "score",
    "sentence": "text", "text": "text",
    "label": "label", "labels": "label", "category": "label",
}  # fmt: skip
CANONICAL_FIELDS = {"query", "positive", "positives", "negative", "negatives", "text1", "text2", "score", "text", "label"}


@dataclass
class Converted:
    """A canonical row (or the problems that stopped it) plus notes for documented skip rules."""

    row: CanonicalRow | None = None
    problems: list[str] = field(default_factory=list)
    task: TaskType | None = None
    removed_false_negatives: int = 0


def detect_format(fields: Mapping[str | int, Any], has_columns: bool) -> DataFormat | None:
    keys = set(fields)
    if has_columns:
        return DataFormat.COLUMNS
    if "type" in keys and "text" in keys and ({"text_pos", "text_pair"} & keys):
        return DataFormat.PICCOLO
    if "query" in keys and "pos" in keys:
        return DataFormat.FLAGEMBEDDING
    if {"query", "positive"} <= keys or {"query", "positives"} <= keys or {"text1", "text2", "score"} <= keys or {"text", "label"} <= keys:
        return DataFormat.HYBRIDEMBED
    if sum(1 for k in keys if isinstance(k, str) and (k in ST_ALIASES or k.startswith("negative"))) >= 2:
        return DataFormat.SENTENCE_TRANSFORMERS
    return None


def canonical_fields(fields: Mapping[Any, Any], fmt: DataFormat, columns: Mapping[str, str | int] | None) -> dict[str, Any]:
    """Rename a record's fields to canonical names (query/positive(s)/negative(s)/text1/text2/score/text/label)."""
    match fmt:
        case DataFormat.COLUMNS:
            return {name: fields.get(source) for name, source in (columns or {}).items()}
        case DataFormat.PICCOLO:
            if "text_pair" in fields:
                return {"text1": fields.get("text"), "text2": fields.get("text_pair"), "score": fields.get("label")}
            return {"query": fields.get("text"), "positive": fields.get("text_pos"), "negatives": fields.get("text_neg")}
        case DataFormat.FLAGEMBEDDING:
            return {"query": fields.get("query"), "positives": fields.get("pos"), "negatives": fields.get("neg")}
        case DataFormat.SENTENCE_TRANSFORMERS:
            out: dict[str, Any] = {}
            negatives = [v for k, v in fields.items() if isinstance(k, str) and (k.startswith("negative") or k == "contradiction")]
            for key, value in fields.items():
                alias = ST_ALIASES.get(key) if isinstance(key, str) else None
                if alias and alias != "negative":
                    out.setdefault(alias, value)
            if negatives:
                out["negatives"] = negatives
            return out
        case _:
            return dict(fields)


def _text(value: Any, name: str, problems: list[str]) -> str | None:
    if value is None:
        problems.append(f"{name}: missing field")
        return None
    if not isinstance(value, str):
        problems.append(f"{name}: expected text, got {type(value).__name__}")
        return None
    if not value.strip():
        problems.append(f"{name}: empty or whitespace-only text")
        return None
    surrogate = lone_surrogate(value)  # a JSON escape like "\ud800": half of a UTF-16 pair, which no tokenizer or Arrow file takes
    if surrogate is not None:
        problems.append(f"{name}: contains a lone surrogate (U+{surrogate[1]:04X}) at character {surrogate[0]}")
        return None
    return value


def _text_list(value: Any, name: str, problems: list[str], required: bool) -> list[str]:
    if value is None or value == "":
        if required:
            problems.append(f"{name}: missing field")
        return []
    items = value if isinstance(value, list) else [value]
    texts = []
    for i, item in enumerate(items):
        text = _text(item, f"{name}[{i}]", problems)
        if text is not None:
            texts.append(text)
    if required and not items:
        problems.append(f"{name}: empty list")
    return texts


def _score(value: Any, score_range: tuple[float, float] | None, problems: list[str]) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        problems.append("score: missing field")
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        problems.append(f"score: not a number: {value!r}")
        return None
    if math.isnan(score) or math.isinf(score):
        problems.append(f"score: not a finite number: {value!r}")
        return None
    if score_range is not None and not (score_range[0] <= score <= score_range[1]):
        problems.append(f"score: {score:g} outside the declared range [{score_range[0]:g}, {score_range[1]:g}]")
        return None
    return score


def record_task(fields: Mapping[str | int, Any], fmt: DataFormat) -> tuple[TaskType | None, str | None]:
    """The task a record declares itself (Piccolo's `type`), or a problem message for an unknown one."""
    if fmt != DataFormat.PICCOLO:
        return None, None
    value = fields.get("type")
    if value not in PICCOLO_TYPES:
        return None, f"type: unknown task type {value!r} (expected one of {sorted(PICCOLO_TYPES)})"
    return PICCOLO_TYPES[value], None


def convert(fields: dict[str, Any], task: TaskType, score_range: tuple[float, float] | None) -> Converted:
    """Validate canonical fields for `task` and build the canonical row."""
    problems: list[str] = []
    result = Converted(problems=problems, task=task)
    if task.shape is RowShape.SCORED_PAIR:
        text1 = _text(fields.get("text1"), "text1", problems)
        text2 = _text(fields.get("text2"), "text2", problems)
        score = _score(fields.get("score", fields.get("label")), score_range, problems)
        if not problems and text1 is not None and text2 is not None and score is not None:  # each is None only with a problem
            result.row = {"text1": text1, "text2": text2, "score": score}
        return result
    if "query" not in fields and "text" in fields:
        # (text, label) classification/clustering rows: the label is the positive "document".
        query = _text(fields.get("text"), "text", problems)
        label = fields.get("label")
        label_text = _text(None if label is None else str(label), "label", problems)
        if not problems and query is not None and label_text is not None:
            result.row = {"query": query, "positives": [label_text], "negatives": None, "label": label_text}
        return result
    query = _text(fields.get("query"), "query", problems)
    positive_value = fields.get("positives", fields.get("positive"))
    positive_name = "positives" if "positives" in fields else "positive"
    if positive_value is None or positive_value == [] or positive_value == "":
        problems.append(f"{positive_name}: row has no positive")
        positives: list[str] = []
    else:
        positives = _text_list(positive_value, positive_name, problems, required=True)
    negative_value = fields.get("negatives", fields.get("negative"))
    negatives = _text_list(negative_value, "negatives", problems, required=False)
    if problems or query is None:  # query is None only with a problem
        return result
    # Documented skip rule: a negative identical to one of the row's positives is a false negative.
    kept = [n for n in negatives if n not in positives]
    result.removed_false_negatives = len(negatives) - len(kept)
    result.row = {"query": query, "positives": positives, "negatives": kept, "label": None}
    return result
