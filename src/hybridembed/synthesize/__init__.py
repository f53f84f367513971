"""LLM-synthesized retrieval data (Promptagator / Gecko / Piccolo2): generate a query per passage, filter it, write our retrieval rows."""

from hybridembed.synthesize.config import EndpointSettings, GenerationSettings, LocalSettings, QualitySettings, SynthesisSettings
from hybridembed.synthesize.generators import EndpointGenerator, LocalGenerator, Reply
from hybridembed.synthesize.pipeline import SynthesisReport, synthesize

__all__ = [
    "EndpointGenerator", "EndpointSettings", "GenerationSettings", "LocalGenerator", "LocalSettings", "QualitySettings",
    "Reply", "SynthesisReport", "SynthesisSettings", "synthesize",
]  # fmt: skip
