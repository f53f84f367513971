"""The `mlm` stage: masked-language-model pre-training of an encoder backbone on raw text, saved as a Hugging Face checkpoint the next stage loads.

What this adds over transformers (whose ``Trainer`` + ``DataCollatorForLanguageModeling`` do the
training): reading raw text from the same files and formats the other stages use (``.txt`` one
text per line, or the text fields of any supported data file), exact-duplicate removal with a
count, the stage's schema (Jina's 30% mask rate by default), position extension before
pre-training so that long-input backbones learn their new positions here, and streamed corpora
(`data.text_stream`: sharded, resumable, masks a pure function of seed, rank and batch) for
pre-training on more text than fits in memory.
"""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

from transformers import Trainer

from hybridembed.data.readers import iter_texts, read_records
from hybridembed.data.text_stream import StreamedTexts, open_text_sources, record_texts, text_format
from hybridembed.errors import DataError, RecipeError
from hybridembed.model_folder import RunResult, last_complete_checkpoint, write_training_log
from hybridembed.modeling.model import resolve_backbone
from hybridembed.recipe import ModelConfig, TextsConfig, TrainingConfig
from hybridembed.training.gc_freeze import frozen_startup_objects
from hybridembed.training.stream_training import StreamedTrainingMixin, pass_through

logger = logging.getLogger(__name__)
DEFAULT_MLM_LENGTH = 512


def read_texts(config: TextsConfig) -> list[str]:
    """Every text of one `texts:` entry, in file order; a record without any text is an error with its line."""
    path = Path(config.path)
    if path.suffix.lower() == ".txt" and path.is_file():
        # The shared reader: invalid UTF-8 and lone surrogates name their line, a BOM is dropped, blank lines are skipped.
        stream = iter_texts(path)
        texts = [item.text.strip() for item in islice(stream, config.max_samples)]
        stream.check()  # islice may stop before the end, where iteration would check
        return texts
    texts, problems = [], []
    fmt = None
    for record in read_records(path, header=config.header):
        fmt = fmt or text_format(path, record.line, record.fields, config)
        found, problem = record_texts(record.fields, config, fmt)
        if problem:
            problems.append(f"{path}:{record.line}: {problem}")
            continue
        texts.extend(found)
        if config.max_samples is not None and len(texts) >= config.max_samples:
            break
    if problems:
        raise DataError(problems, summary=f"{path}: {len(problems)} record(s) without text")
    return texts[: config.max_samples]


def load_texts(configs: list[TextsConfig]) -> list[str]:
    """All texts of an mlm stage, exact duplicates removed (the count is logged)."""
    texts = [t for cfg in configs for t in read_texts(cfg)]
    unique = list(dict.fromkeys(texts))
    logger.info("mlm texts: %d read, %d exact duplicates removed, %d kept", len(texts), len(texts) - len(unique), len(unique))
    return unique


def _mlm_arguments(training: TrainingConfig, **overrides):
    """The other stages' TrainingArguments (training.training_arguments: use_cpu + gloo under CPU torchrun, ddp_timeout, …), as transformers' class.

    DDP keeps looking for unused parameters here (transformers' default) rather than assuming none, as
    training.py may for its sentence-transformers model: an MLM head is a different module set.
    """
    from transformers import TrainingArguments

    from hybridembed.training.builder import training_arguments

    return training_arguments(training, TrainingArguments, ddp_find_unused_parameters=None, disable_tqdm=None, **overrides)


class StreamedMLMTrainer(StreamedTrainingMixin, Trainer):
    """transformers' Trainer fed by a streamed corpus: batches arrive masked from `StreamedTexts`; a bad text stops every rank at the same step."""

    def __init__(self, streamed: StreamedTexts, *args, **kwargs) -> None:
        kwargs.setdefault("callbacks", [])
        self.setup_stream(streamed, kwargs["callbacks"])
        super().__init__(*args, **kwargs)

    def get_train_dataloader(self):
        return self.streamed_loader(self.data_collator)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        problems, summary = self.take_stream_state(inputs, model.training)
        self.stop_on_stream_error(problems, summary)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


def run_mlm(model_cfg: ModelConfig, texts: list[TextsConfig], training: TrainingConfig, mlm_probability: float, resume: bool) -> RunResult:
    """Pre-train `model_cfg.backbone` with masked LM on `texts`; save model + tokenizer to training.output_dir."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

    from hybridembed.modeling.backbones import is_decoder
    from hybridembed.modeling.positions import fit_positions

    backbone = resolve_backbone(model_cfg.backbone)
    remote = {"trust_remote_code": True} if model_cfg.trust_remote_code else {}
    tokenizer = AutoTokenizer.from_pretrained(backbone, **remote)
    if tokenizer.mask_token is None:
        raise RecipeError(f"stage mlm: {model_cfg.backbone} has no mask token; MLM needs an encoder (BERT, RoBERTa, XLM-R, ModernBERT)")
    kwargs = {"attn_implementation": model_cfg.attn_implementation} if model_cfg.attn_implementation else {}
    kwargs |= remote
    if training.keep_freed_memory:
        from hybridembed.allocator import keep_freed_memory

        keep_freed_memory()
    torch.manual_seed(training.seed)
    model = AutoModelForMaskedLM.from_pretrained(backbone, **kwargs)
    if is_decoder(model.config):
        raise RecipeError(f"stage mlm: {model_cfg.backbone} is a decoder; masked-LM pre-training needs an encoder")
    max_length = model_cfg.max_seq_length or min(tokenizer.model_max_length, DEFAULT_MLM_LENGTH)
    fit_positions(model, tokenizer, max_length, model_cfg.extend_positions, model_cfg.hierarchical_alpha)
    if training.lane_dropout:
        from hybridembed.modeling.dropout import use_lane_dropout

        use_lane_dropout(model)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)
    if texts and texts[0].streaming:  # the stage's schema: all of its texts stream or none do
        if not training.max_steps:
            raise RecipeError("stage mlm: training.max_steps: a streamed corpus has no epoch length; set max_steps")
        sources = open_text_sources(texts)
        logger.info("mlm texts: streamed from %d shard(s) (checked as they arrive, not de-duplicated)", len(sources.files))
        args = _mlm_arguments(training, ignore_data_skip=True)  # the readers resume at their saved positions
        streamed = StreamedTexts(sources, tokenizer, collator, max_length, training.batch_size, training.seed, args.process_index, args.world_size)
        trainer = StreamedMLMTrainer(streamed, model=model, args=args, train_dataset=streamed, data_collator=pass_through)
    else:
        corpus = Dataset.from_dict({"text": load_texts(texts)})
        tokenized = corpus.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length, return_special_tokens_mask=True),
            batched=True,
            remove_columns=["text"],
        )
        trainer = Trainer(model=model, args=_mlm_arguments(training), train_dataset=tokenized, data_collator=collator)
    out = Path(training.output_dir)
    checkpoint = last_complete_checkpoint(out) if resume else None  # not one a kill left half-written
    if checkpoint:
        logger.info("resuming from checkpoint %s", checkpoint)
    with frozen_startup_objects():  # the corpus and the libraries' objects stay out of the GC's full passes
        trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    if trainer.is_world_process_zero():
        write_training_log(out, trainer.state.log_history)
    return RunResult.from_log(out, trainer.state.log_history)
