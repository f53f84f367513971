"""User-facing errors: the CLI prints them as one clear message and exits non-zero instead of a traceback."""

from __future__ import annotations


class HybridembedError(Exception):
    """An error caused by the user's input (recipe, data, arguments), reported without a traceback."""

    exit_code = 2


class RecipeError(HybridembedError):
    """The recipe file is missing, malformed or names an unknown key/value."""


class DataError(HybridembedError):
    """One or more data records are invalid; the message lists `file:line: field: problem` entries."""

    def __init__(self, problems: list[str], summary: str | None = None):
        self.problems = problems
        shown = problems[:50]
        more = f"\n... and {len(problems) - len(shown)} more problems" if len(problems) > len(shown) else ""
        head = f"{summary}\n" if summary else ""
        super().__init__(head + "\n".join(shown) + more)
