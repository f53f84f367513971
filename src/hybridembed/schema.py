"""The one base class of every validated settings model (recipe, eval, suite, mining sections): unknown keys are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A pydantic model that rejects keys it does not define: a misspelt recipe or suite key fails with its name instead of being ignored."""

    model_config = ConfigDict(extra="forbid")
