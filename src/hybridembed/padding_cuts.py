"""Where to cut rows, in a given order, into forward passes: the least padded tokens plus a fixed cost per pass (training chunks and serving passes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def cheapest_cuts(row_costs: Sequence[float] | np.ndarray, max_rows: int, pass_cost: float) -> list[int]:
    """The end (exclusive) of each run of consecutive rows, at most `max_rows` each, that minimises
    Σ over runs of (rows in the run × the run's largest `row_costs`) + `pass_cost` per run.

    A row's cost is what one padded position of its width costs (its token count, or a weighted
    one): a pass pads every row to its widest. Exact, by dynamic programming over the cut points
    (O(rows × max_rows)); ties go to the longer last run, i.e. fewer passes. Rows sorted by length
    give the plans that matter, but any order is handled (left-padded rows all have the full width).
    """
    costs = np.asarray(row_costs, dtype=np.float64)
    rows, cap = len(costs), max(1, int(max_rows))
    best = np.zeros(rows + 1)  # best[e]: least cost of rows [0, e)
    start = np.zeros(rows + 1, dtype=np.int64)
    for end in range(1, rows + 1):
        first = max(0, end - cap)
        widest = np.maximum.accumulate(costs[first:end][::-1])[::-1]  # widest[i]: max over rows first + i .. end - 1
        candidates = best[first:end] + (end - np.arange(first, end)) * widest
        pick = int(np.argmin(candidates))
        best[end], start[end] = candidates[pick] + pass_cost, first + pick
    ends, end = [], rows
    while end > 0:
        ends.append(end)
        end = int(start[end])
    return ends[::-1]
