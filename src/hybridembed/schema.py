"""The one base class of every validated settings model (recipe, eval, suite, mining, serve, synthesis) and the one formatter of their errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """A pydantic model that rejects keys it does not define: a misspelt recipe or suite key fails with its name instead of being ignored."""

    model_config = ConfigDict(extra="forbid")


def validation_problems(err: ValidationError) -> list[str]:
    """One `dotted.key: problem` line per error of a settings model (`unknown key` for a key the model does not define)."""
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        problem = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {problem}")
    return problems
