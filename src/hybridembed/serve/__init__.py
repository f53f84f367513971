"""The embedding server: an OpenAI-compatible HTTP API over a sentence-transformers model, with micro-batching."""

from __future__ import annotations

from typing import Any

from hybridembed.serve.settings import ServeSettings

_LAZY = {"create_app": "hybridembed.serve.app", "ServedModel": "hybridembed.serve.engine", "load_served_model": "hybridembed.serve.engine"}


def __getattr__(name: str) -> Any:
    # The app and engine import FastAPI and torch: only when used, so the CLI can read ServeSettings cheaply.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ServeSettings", "ServedModel", "create_app", "load_served_model"]
