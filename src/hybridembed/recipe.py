"""The recipe schema (one YAML file describes a whole run) and its loading with clear errors."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hybridembed.errors import RecipeError
from hybridembed.tasks import TaskType


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class LossName(StrEnum):
    INFONCE = "infonce"
    COSENT = "cosent"
    LABEL_CONTRASTIVE = "label_contrastive"
    PEARSON = "pearson"


class DataFormat(StrEnum):
    AUTO = "auto"
    HYBRIDEMBED = "hybridembed"
    PICCOLO = "piccolo"
    FLAGEMBEDDING = "flagembedding"
    SENTENCE_TRANSFORMERS = "sentence_transformers"
    COLUMNS = "columns"


class MixingStrategy(StrEnum):
    PROPORTIONAL = "proportional"
    ROUND_ROBIN = "round_robin"
    TEMPERATURE = "temperature"


class ModelConfig(Strict):
    backbone: str = Field("bundled:all-MiniLM-L6-v2", description="local path, hub id, or bundled:all-MiniLM-L6-v2")
    pooling: Literal["cls", "mean", "last"] | None = Field(None, description="None keeps an ST backbone's own pooling, else mean")
    max_seq_length: int | None = Field(None, gt=0)
    projection_dim: int | None = Field(None, gt=0, description="dimension scaling: Dense(hidden→projection_dim), Identity activation")
    projection_seed: int = 0
    normalize: bool = True
    matryoshka_dims: list[int] | None = None
    matryoshka_weights: list[float] | None = None
    query_prefix: str = ""
    passage_prefix: str = ""
    attn_implementation: str | None = None

    @model_validator(mode="after")
    def _check_matryoshka(self) -> ModelConfig:
        if self.matryoshka_weights is not None:
            if not self.matryoshka_dims or len(self.matryoshka_weights) != len(self.matryoshka_dims):
                raise ValueError("matryoshka_weights needs one weight per entry of matryoshka_dims")
        if self.matryoshka_dims and any(d <= 0 for d in self.matryoshka_dims):
            raise ValueError("matryoshka_dims must be positive")
        if self.matryoshka_dims and self.projection_dim and max(self.matryoshka_dims) > self.projection_dim:
            raise ValueError(f"matryoshka_dims {self.matryoshka_dims} exceed projection_dim {self.projection_dim}")
        return self


class LossConfig(Strict):
    name: LossName
    temperature: float | None = Field(None, gt=0)
    weight: float | None = Field(None, gt=0)
    bidirectional: bool | None = Field(None, description="infonce: add the passage→query term")
    in_batch_negatives: bool | None = Field(None, description="infonce: score against other rows' passages too (default true)")


class DatasetConfig(Strict):
    path: str
    name: str | None = None
    task: TaskType | None = Field(None, description="required unless the format carries it (Piccolo's `type` column)")
    format: DataFormat = DataFormat.AUTO
    columns: dict[str, str | int] | None = Field(None, description="canonical field → column name (or 0-based index without header)")
    header: bool = True
    score_range: tuple[float, float] | None = None
    weight: float = Field(1.0, gt=0, description="sampling weight relative to the other datasets")
    repeat: int = Field(1, ge=1, description="pass over this dataset this many times per epoch")
    max_samples: int | None = Field(None, gt=0, description="keep the first N valid rows")
    num_negatives: int | None = Field(None, ge=0, description="hard negatives (or negative labels) per row per step")
    batch_size: int | None = Field(None, gt=0)
    query_prefix: str | None = None
    passage_prefix: str | None = None
    loss: LossConfig | None = None


class TrainingConfig(Strict):
    output_dir: str = "runs/model"
    batch_size: int = Field(32, gt=0, description="rows per batch (per device)")
    batch_size_per_task: dict[TaskType, int] = Field(default_factory=dict)
    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = 0.01
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    logging_steps: int = Field(10, gt=0)
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    save_steps: int | None = Field(None, gt=0)
    save_total_limit: int | None = 2
    resume: bool | str = False
    dataloader_num_workers: int = 0


class DistributedStrategy(StrEnum):
    SYNCHRONIZED = "synchronized"
    CBB = "cbb"


class SamplingConfig(Strict):
    mixing: MixingStrategy = MixingStrategy.PROPORTIONAL
    temperature: float = Field(2.0, gt=0, description="temperature mixing: share ∝ (batches × weight)^(1/T)")
    strategy: DistributedStrategy = Field(
        DistributedStrategy.SYNCHRONIZED,
        description="multi-process: every rank trains the same dataset per step (synchronized) or different task types (cbb)",
    )


class Recipe(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    datasets: list[DatasetConfig]
    losses: dict[TaskType, LossConfig] = Field(default_factory=dict, description="per task type loss override")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    # Sections owned by later features; kept as free-form mappings until their schema lands.
    eval: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        if not self.datasets:
            raise ValueError("datasets: at least one dataset is required")
        seen: set[str] = set()
        for ds in self.datasets:
            ds.name = ds.name or Path(ds.path).stem.replace(".", "_")
            base, n = ds.name, 2
            while ds.name in seen:
                ds.name, n = f"{base}_{n}", n + 1
            seen.add(ds.name)
        return self


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid recipe"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a YAML recipe; relative dataset paths resolve against the recipe's folder."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with model/datasets/training/losses keys")
    for dataset in raw.get("datasets") or []:
        if isinstance(dataset, dict) and "path" in dataset:
            dataset["path"] = str(resolve_relative(dataset["path"], path.parent))
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(_format_validation_error(err, str(path))) from None


def resolve_relative(value: str, base: Path) -> Path:
    """A relative path is tried against the recipe's folder first, then the working directory."""
    candidate = Path(value)
    if candidate.is_absolute():
        return candidate
    beside_recipe = base / candidate
    if beside_recipe.exists() or not candidate.exists():
        return beside_recipe.resolve() if beside_recipe.exists() else candidate
    return candidate
