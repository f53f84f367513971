"""LLM-synthesized retrieval data (Promptagator / Gecko / Piccolo2): generate a query per passage, filter it, write our retrieval rows."""

from __future__ import annotations

from typing import Any

from hybridembed.synthesize.config import EndpointSettings, GenerationSettings, LocalSettings, QualitySettings, SynthesisSettings

__all__ = [
    "EndpointGenerator", "EndpointSettings", "GenerationSettings", "LocalGenerator", "LocalSettings", "QualitySettings",
    "Reply", "SynthesisReport", "SynthesisSettings", "synthesize",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    # The generators and the pipeline load on first use, so that importing the settings (a schema) runs no
    # filters, numpy or data code (tests/test_import_graph.py).
    if name in ("EndpointGenerator", "LocalGenerator", "Reply"):
        from hybridembed.synthesize import generators

        return getattr(generators, name)
    if name in ("SynthesisReport", "synthesize"):
        from hybridembed.synthesize import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
