"""The limits and batching knobs of one server: a plain dataclass the CLI reads its defaults from, importing nothing heavy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching knobs of one server (the CLI options of `hybridembed serve`)."""

    max_batch_size: int = 128  # a loaded server sorts this many texts by length into planned passes (benchmarks/encode_speed.py)
    max_batch_tokens: int | None = None  # estimated tokens per batch (serve.batching.estimate_tokens); None: count only
    max_wait_ms: float = 5.0
    encode_batch_size: int | None = None  # most texts per forward pass inside a batch; None: max_batch_size
    max_inputs: int = 2048
    max_chars: int = 32768
    max_body_bytes: int = 8 * 1024 * 1024
    max_queue: int = 8192
    api_key: str | None = None
    warmup: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_tokens", "max_inputs", "max_chars", "max_body_bytes", "max_queue", "encode_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < self.max_inputs:
            raise ValueError(f"max_queue ({self.max_queue}) must be >= max_inputs ({self.max_inputs})")

    def forward_batch_size(self) -> int:
        """Most texts per forward pass. The engine plans the passes of a batch from its exact token
        counts (serve.engine.plan_passes), so long and short texts go in separate passes where the
        padding saved is worth a pass; no fixed small pass size is needed on a CPU."""
        if self.encode_batch_size is not None:
            return min(self.encode_batch_size, self.max_batch_size)
        return self.max_batch_size

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["api_key"] = self.api_key is not None
        return data


def defaults() -> dict[str, Any]:
    """Every setting's default, by name (the CLI's option defaults)."""
    return {f.name: f.default for f in fields(ServeSettings)}


__all__ = ["ServeSettings", "defaults"]
