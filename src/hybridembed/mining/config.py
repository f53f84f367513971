"""The recipe's `mining:` section: settings of dynamic hard-negative re-mining during training (Conan-embedding)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hybridembed.schema import Strict


class DynamicMiningConfig(Strict):
    """Every `every_steps` steps, re-score the active negatives of the upcoming batches and swap the ones that became easy."""

    every_steps: int = Field(
        100, gt=0, description="re-score the active negatives of the next N steps every N steps (before the first of their batches is collated)"
    )
    ratio: float = Field(
        1.15,
        gt=0,
        description="a negative is easy when its current score < initial − (1 − 1/ratio)·|initial| "
        "(Conan's score × ratio < initial for initial ≥ 0, and monotone for negative scores)",
    )
    max_score: float = Field(
        0.8,
        description="no negative becomes active at or above this cosine (replacements and initial negatives; "
        "higher ones may be false negatives), and none at or above it is judged easy",
    )
    pool_size: int = Field(50, ge=1, description="candidates per query: the row's first `pool_size` negatives")
    init: Literal["start", "lazy"] = Field(
        "start",
        description="when active negatives get their initial score: all rows of this process's first epoch before step 1 "
        "(start), or each row the first time it is checked (lazy: cheaper, but a row is only judged from its second check)",
    )
    batch_size: int = Field(64, gt=0, description="texts per forward pass when scoring")


class MiningConfig(Strict):
    dynamic: DynamicMiningConfig | None = None


__all__ = ["DynamicMiningConfig", "MiningConfig"]
