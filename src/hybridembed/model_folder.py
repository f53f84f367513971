"""The model folder's contract in one place: the files hybridembed writes beside the weights (recipe, training log, stage markers, checkpoints), how they are written and read, and the result a run returns.

sentence-transformers and transformers own the weights, `modules.json`, the card and the
`checkpoint-<step>` folders; `hybridembed.json` (the run's metadata) is written by
`model.write_metadata`. Everything else a run leaves in a folder is named and written here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)
RECIPE_FILE = "recipe.yaml"  # the recipe as written (comments kept) or, with overrides, as run
TRAINING_LOG = "training_log.jsonl"  # the trainer's log history, one entry per line
STAGE_MARKER = "stage_done.json"  # a finished stage: its fingerprint, backbone and global step


def checkpoint_folder(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint folder, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(p.name.rsplit("-", 1)[1], p) for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()]
    return sorted((int(step), path) for step, path in found if step.isdigit())


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint folder whose trainer state was fully written (the trainer writes it last).

    A run killed while saving leaves a newer folder without (or with a truncated) trainer_state.json;
    transformers' ``get_last_checkpoint`` would pick it and the resume would fail or load torn state.
    """
    for _, path in reversed(checkpoints(output_dir)):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logger.warning("resume: %s is incomplete (interrupted while saving), skipping it", path)
            continue
        return str(path)
    return None


def write_recipe(out: Path, recipe: Any, recipe_text: str | None) -> None:
    (out / RECIPE_FILE).write_text(recipe_text or yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def write_training_log(out: Path, log_history: Iterable[dict[str, Any]]) -> None:
    with open(out / TRAINING_LOG, "w", encoding="utf-8") as f:
        for entry in log_history:
            f.write(json.dumps(entry) + "\n")


def read_training_log(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / TRAINING_LOG
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def write_marker(out: Path, marker: dict[str, Any]) -> None:
    """Written whole, then renamed: a reader (another rank, a rerun) never sees half of it."""
    staging = out / f".{STAGE_MARKER}.tmp"
    staging.write_text(json.dumps(marker, indent=2))
    os.replace(staging, out / STAGE_MARKER)


def read_marker(out: Path) -> dict[str, Any] | None:
    path = out / STAGE_MARKER
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class RunResult:
    """What a training run returns: the model folder (usable wherever a path is), its global step and its last logged metrics."""

    folder: Path
    global_step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the last value of every logged number (loss, eval_*, train_runtime, …)

    @classmethod
    def from_log(cls, folder: Path, log: list[dict[str, Any]]) -> RunResult:
        metrics: dict[str, float] = {}
        for entry in log:
            metrics |= {k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")}
        return cls(Path(folder), max((int(e.get("step", 0)) for e in log), default=0), metrics)

    def __fspath__(self) -> str:
        return str(self.folder)

    def __str__(self) -> str:  # printed and formatted as its folder, as the Path it replaces was
        return str(self.folder)


__all__ = [
    "RECIPE_FILE", "STAGE_MARKER", "TRAINING_LOG", "RunResult", "checkpoint_folder", "checkpoints", "last_complete_checkpoint",
    "read_marker", "read_training_log", "write_marker", "write_recipe", "write_training_log",
]  # fmt: skip
