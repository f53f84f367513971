"""The embedding server: an OpenAI-compatible HTTP API over a sentence-transformers model, with micro-batching."""

from __future__ import annotations

from hybridembed.serve.app import ServeSettings, create_app
from hybridembed.serve.engine import ServedModel, load_served_model

__all__ = ["ServeSettings", "ServedModel", "create_app", "load_served_model"]
