"""The canonical rows every reader produces and every batch is built from, typed, with their columns and Arrow schema in one place.

TypedDicts rather than classes because these rows feed `datasets` / Arrow tables and the collator
as plain dicts; the types let a type checker catch a misspelt key.
"""

from __future__ import annotations

from typing import TypedDict

from hybridembed.tasks import RowShape


class TripletRow(TypedDict):
    """retrieval, reranking (query → positives, hard negatives) and classification, clustering (text → its label as the positive)."""

    query: str
    positives: list[str]
    negatives: list[str] | None  # None: a label row, whose negatives come from the dataset's label pool
    label: str | None  # label rows only


class ScoredPairRow(TypedDict):
    """sts, pair_classification: two texts and a graded or binary score."""

    text1: str
    text2: str
    score: float


CanonicalRow = TripletRow | ScoredPairRow
ROW_COLUMNS: dict[RowShape, tuple[str, ...]] = {RowShape.TRIPLET: tuple(TripletRow.__annotations__), RowShape.SCORED_PAIR: tuple(ScoredPairRow.__annotations__)}


def row_texts(row: TripletRow) -> set[str]:
    """Every text of a triplet row: what a duplicate-free batch must not repeat."""
    return {row["query"], *row["positives"], *(row["negatives"] or [])}


def arrow_schema(shape: RowShape):
    """The Arrow schema of a stored dataset of `shape` rows (plus `row_id`, the row's index)."""
    import pyarrow as pa

    if shape is RowShape.SCORED_PAIR:
        return pa.schema([("row_id", pa.int64()), ("text1", pa.string()), ("text2", pa.string()), ("score", pa.float64())])
    return pa.schema(
        [("row_id", pa.int64()), ("query", pa.string()), ("positives", pa.list_(pa.string())),
         ("negatives", pa.list_(pa.string())), ("label", pa.string())]
    )  # fmt: skip


__all__ = ["ROW_COLUMNS", "CanonicalRow", "ScoredPairRow", "TripletRow", "arrow_schema", "row_texts"]
