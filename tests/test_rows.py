"""The canonical row types are the one source of the stored columns, and the readers' rows match them."""

from __future__ import annotations

import typing

from hybridembed.data.formats import convert
from hybridembed.data.rows import ROW_COLUMNS, ScoredPairRow, TripletRow, arrow_schema, row_texts
from hybridembed.tasks import RowShape, TaskType


def test_columns_and_arrow_schema_follow_the_row_types():
    for shape, row_type in ((RowShape.TRIPLET, TripletRow), (RowShape.SCORED_PAIR, ScoredPairRow)):
        assert ROW_COLUMNS[shape] == tuple(typing.get_type_hints(row_type))
        assert arrow_schema(shape).names == ["row_id", *ROW_COLUMNS[shape]]


def test_converted_rows_have_exactly_the_typed_keys():
    triplet = convert({"query": "q", "positive": "p", "negatives": ["n", "p"]}, TaskType.RETRIEVAL, None).row
    labelled = convert({"text": "t", "label": 3}, TaskType.CLASSIFICATION, None).row
    pair = convert({"text1": "a", "text2": "b", "score": 0.5}, TaskType.STS, None).row
    assert set(triplet) == set(labelled) == set(ROW_COLUMNS[RowShape.TRIPLET])
    assert set(pair) == set(ROW_COLUMNS[RowShape.SCORED_PAIR])
    assert row_texts(triplet) == {"q", "p", "n"} and row_texts(labelled) == {"t", "3"}
