"""The limits and batching knobs of one server: a validated settings model the CLI reads its defaults from, importing nothing heavy."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from hybridembed.schema import Strict


class ServeSettings(Strict):
    """Limits and batching knobs of one server (the CLI options of `hybridembed serve`)."""

    model_config = ConfigDict(frozen=True)

    max_batch_size: int = Field(128, ge=1, description="a loaded server sorts this many texts by length into planned passes (benchmarks/encode_speed.py)")
    max_batch_tokens: int | None = Field(None, ge=1, description="estimated tokens per batch (serve.batching.estimate_tokens); None: count only")
    max_wait_ms: float = Field(5.0, ge=0)
    encode_batch_size: int | None = Field(None, ge=1, description="most texts per forward pass inside a batch; None: max_batch_size")
    max_inputs: int = Field(2048, ge=1)
    max_chars: int = Field(32768, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1)
    max_queue: int = Field(8192, ge=1)
    api_key: str | None = None
    warmup: bool = True

    @model_validator(mode="after")
    def _queue_holds_one_request(self) -> ServeSettings:
        if self.max_queue < self.max_inputs:
            raise ValueError(f"max_queue ({self.max_queue}) must be >= max_inputs ({self.max_inputs})")
        return self

    def forward_batch_size(self) -> int:
        """Most texts per forward pass. The engine plans the passes of a batch from its exact token
        counts (serve.engine.plan_passes), so long and short texts go in separate passes where the
        padding saved is worth a pass; no fixed small pass size is needed on a CPU."""
        if self.encode_batch_size is not None:
            return min(self.encode_batch_size, self.max_batch_size)
        return self.max_batch_size

    def public(self) -> dict[str, Any]:
        """The settings as /health reports them: the API key only as whether one is set."""
        return self.model_dump() | {"api_key": self.api_key is not None}


def defaults() -> dict[str, Any]:
    """Every setting's default, by name (the CLI's option defaults)."""
    return {name: field.default for name, field in ServeSettings.model_fields.items()}


__all__ = ["ServeSettings", "defaults"]
