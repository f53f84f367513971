"""Export a sentence-transformers model folder to one ONNX graph (fp32, optionally int8) and verify it against torch.

What this adds over sentence-transformers: its own ONNX/OpenVINO backends (`backend="onnx"`,
`export_optimized_onnx_model`, `export_dynamic_quantized_onnx_model`) go through `optimum-onnx`,
whose releases all pin transformers<4.58, and `optimum-intel` (OpenVINO) pins transformers<5.6;
both conflict with our transformers 5.23, so neither can be installed beside hybridembed. This
module does the same job with plain `torch.onnx.export` + `onnx` + `onnxruntime`: the whole
pipeline (Transformer → Pooling → Dense → Normalize) becomes ONE graph
`input_ids, attention_mask (, token_type_ids) → sentence_embedding` with dynamic batch and
sequence axes, written as `onnx/model.onnx` (the layout sentence-transformers' ONNX backend
reads) into a copy of the folder, plus `onnx/model_qint8.onnx` (dynamic int8) on request; each
export is checked against the torch model before it is accepted.

Exporter: torch's default dynamo exporter (`torch.onnx.export(..., dynamo=True)`, needs
onnxscript), with the TorchScript exporter (`dynamo=False`) as the fallback when torch.export
cannot capture a model. Both produce graphs within ~2e-7 of torch on the tiny BERT (with and
without Dense), the tiny Qwen2-style decoder and all-MiniLM-L6-v2; dynamo is the one torch keeps
developing (TorchScript export is deprecated) but exports several times slower (5-8 s vs
1.3-1.7 s on the tiny models, 10 s on MiniLM). For
decoders the graph computes `position_ids` from the mask itself: our left-padding hook's
data-dependent branch is what torch.export could not guard on, and tracing would bake it in.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from hybridembed.errors import HybridembedError

if TYPE_CHECKING:
    from sentence_transformers.sentence_transformer.modules import Transformer

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")
EXTERNAL_DATA_BYTES = 1_800_000_000
FP32_TOLERANCE = 1e-4
OPENVINO_REFUSAL = (
    "--format openvino is not offered: exporting to OpenVINO needs optimum-intel, whose releases pin "
    "transformers<5.6, which conflicts with hybridembed's transformers 5.23; use --format onnx (serve it with --backend onnx)"
)
# Texts of very different lengths in one batch, so the check exercises padding.
CHECK_TEXTS = (
    "a",
    "A man is playing a guitar.",
    "Two dogs run through a field of tall grass while their owner watches from the fence.",
    "short text",
    "The quick brown fox jumps over the lazy dog. " * 6,
)


@dataclass
class ExportReport:
    """What one export wrote and how far the ONNX outputs are from torch's on the check texts."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    exporter: str = "dynamo"
    fp32_max_abs_diff: float = 0.0
    int8_max_abs_diff: float | None = None
    int8_mean_cosine: float | None = None
    int8_min_cosine: float | None = None

    def summary(self) -> str:
        lines = [f"fp32 {self.files[0].name} ({self.exporter} exporter): max |onnx - torch| = {self.fp32_max_abs_diff:.2e} (limit {FP32_TOLERANCE:g})"]
        if self.int8_max_abs_diff is not None:
            lines.append(
                f"int8 {self.files[1].name}: max |int8 - fp32| = {self.int8_max_abs_diff:.3f}, "
                f"cosine to fp32 mean {self.int8_mean_cosine:.4f}, min {self.int8_min_cosine:.4f}"
            )
        return "\n".join(lines)


def _graph_module(model: Any, decoder: bool):
    """The nn.Module traced into ONNX: the tokenizer's tensors in, the pipeline's sentence embedding out."""
    from torch import nn

    from hybridembed.modeling.backbones import mask_position_ids

    class SentenceEmbeddingGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pipeline = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            if decoder:
                # Always from the mask: tracing would bake in whether the example batch was
                # left-padded (our hook only adds them then); right-padded results are unchanged.
                features["position_ids"] = mask_position_ids(attention_mask)
            for module in self.pipeline:
                features = module(features)
            return features[OUTPUT_NAME]

    return SentenceEmbeddingGraph().eval()


def check_exportable(model: Any) -> None:
    """Refuse pipelines the one-graph export cannot reproduce, naming the module."""
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    modules = list(model)
    if not modules or not isinstance(modules[0], Transformer):
        raise HybridembedError("ONNX export needs a model whose first module is a sentence-transformers Transformer")
    for module in modules[1:]:
        if not isinstance(module, (Pooling, Dense, Normalize)):
            raise HybridembedError(f"ONNX export supports Transformer → Pooling → Dense → Normalize; this model has {type(module).__name__}")
        if isinstance(module, Pooling) and not module.include_prompt and any((model.prompts or {}).values()):
            # The prompt length would be a graph input of its own; sentence-transformers' ONNX backend has none either.
            raise HybridembedError("ONNX export: this model's pooling excludes prompt tokens (include_prompt: false), which the graph cannot do")


def export_onnx(
    model_path: str,
    out_dir: str | Path,
    *,
    quantize: str | None = None,
    trust_remote_code: bool = False,
    check_texts: tuple[str, ...] = CHECK_TEXTS,
    exporter: str = "auto",
) -> ExportReport:
    """Write a verified copy of `model_path` with onnx/model.onnx (and onnx/model_qint8.onnx for quantize="int8") to `out_dir`.

    `exporter`: "auto" (dynamo, falling back to TorchScript), "dynamo" or "torchscript".
    """
    from hybridembed.modeling.backbones import is_decoder
    from hybridembed.modeling.model import load_model, resolve_backbone, write_metadata

    if exporter not in EXPORTERS:
        raise HybridembedError(f"--exporter {exporter}: choose one of {', '.join(EXPORTERS)}")
    if quantize not in (None, "int8"):
        raise HybridembedError(f"--quantize {quantize}: only int8 is supported")
    model = load_model(model_path, device="cpu", trust_remote_code=trust_remote_code).float().eval()
    check_exportable(model)
    out = Path(out_dir)
    _copy_folder(resolve_backbone(model_path), model, out)
    onnx_dir = out / ONNX_DIR
    onnx_dir.mkdir(parents=True, exist_ok=True)
    for stale in (*onnx_dir.glob(f"{FP32_FILE}*"), *onnx_dir.glob(f"{INT8_FILE}*")):
        stale.unlink()  # an earlier export's graph or external data must not outlive this one
    fp32_path = onnx_dir / FP32_FILE
    tokenizer = model.tokenizer
    input_names = [n for n in INPUT_ORDER if n in tokenizer.model_input_names]
    example = tokenizer(list(check_texts[:2]), padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="pt")
    decoder = is_decoder(cast("Transformer", model[0]).auto_model.config)  # check_exportable made sure model[0] is one
    graph = _graph_module(model, decoder)
    args = tuple(example[n] for n in input_names)
    used = exporter
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(graph, args, input_names, fp32_path)
            used = "dynamo"
        except Exception as err:
            if exporter == "dynamo":
                raise HybridembedError(f"the dynamo ONNX exporter failed on {model_path}: {type(err).__name__}: {str(err)[:300]}") from None
            logger.warning("dynamo exporter failed (%s: %s); using the TorchScript exporter", type(err).__name__, str(err)[:200])
            used = "torchscript"
    if used == "torchscript":
        _export_torchscript(graph, args, input_names, fp32_path)
    report = ExportReport(out_dir=out, files=[fp32_path], exporter=used)
    expected = model.encode(list(check_texts), convert_to_numpy=True, batch_size=len(check_texts))
    got = _run_file(out, FP32_FILE, check_texts)
    report.fp32_max_abs_diff = float(np.abs(got - expected).max())
    if not report.fp32_max_abs_diff <= FP32_TOLERANCE:
        raise HybridembedError(
            f"ONNX export of {model_path} is wrong: its embeddings differ from torch's by up to {report.fp32_max_abs_diff:.2e} "
            f"(limit {FP32_TOLERANCE:g}); {fp32_path} is not usable"
        )
    if quantize == "int8":
        int8_path = onnx_dir / INT8_FILE
        quantize_int8(fp32_path, int8_path)
        report.files.append(int8_path)
        int8 = _run_file(out, INT8_FILE, check_texts)
        report.int8_max_abs_diff = float(np.abs(int8 - got).max())
        cosines = _cosines(int8, got)
        report.int8_mean_cosine, report.int8_min_cosine = float(cosines.mean()), float(cosines.min())
    # The encoder reads max_seq_length from here: ST 6 folders no longer always write it to sentence_bert_config.json.
    write_metadata(
        out,
        onnx={
            "max_seq_length": model.max_seq_length,
            "files": [p.name for p in report.files],
            "opset": OPSET,
            "exporter": used,
            "fp32_max_abs_diff": report.fp32_max_abs_diff,
            "int8_mean_cosine_to_fp32": report.int8_mean_cosine,
        },
    )
    logger.info("exported %s to %s", model_path, out)
    return report


def _export_dynamo(graph: Any, args: tuple, input_names: list[str], path: Path) -> None:
    import torch

    # One self-contained file where protobuf allows it (2 GiB); bigger models get model.onnx.data beside it.
    weight_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # The exporter's optimizer logs hundreds of INFO lines per graph (and torch warns that torchvision's ops are missing).
    quiet = _quiet_loggers(("torch.onnx", "onnxscript", "onnx_ir"))
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet:
        warnings.simplefilter("ignore")  # e.g. "axis name sequence will not be used": all inputs share it, as meant
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=input_names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in input_names},
            opset_version=OPSET,
            dynamo=True,
            external_data=weight_bytes > EXTERNAL_DATA_BYTES,
            verbose=False,
        )


def _export_torchscript(graph: Any, args: tuple, input_names: list[str], path: Path) -> None:
    import torch

    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings about Python-level branches on tensors, the exporter's deprecation:
        # the check after export runs the graph on a padded batch, which is what matters.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=input_names,
            output_names=[OUTPUT_NAME],
            dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization: int8 weights (per output channel), activations quantized on the fly.

    Per-channel scales keep far more of the fp32 geometry than one scale per tensor: on
    all-MiniLM-L6-v2 over 300 STS-B dev pairs, cosine to fp32 0.994 vs 0.969 and Spearman 0.933
    vs 0.929 (fp32 0.933); reduce_range lowered both. Only MatMul/Gemm weights are quantized
    (the embedding tables stay fp32), as in optimum's dynamic configs.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_loggers(("",)):  # onnxruntime logs one root-logger line per tensor it leaves in float
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    """Only errors from these loggers ("" is the root logger) while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _copy_folder(source: str, model: Any, out: Path) -> None:
    """The sentence-transformers folder as it is (tokenizer, configs, README, hybridembed.json) without
    checkpoints, TensorBoard runs or an older onnx/; a hub id is saved from the loaded model instead."""
    src = Path(source)
    if out.resolve() == src.resolve():
        return
    if out.exists() and any(p.name != ONNX_DIR for p in out.iterdir()) and not (out / "modules.json").is_file():
        raise HybridembedError(f"--out {out}: exists and is not a model folder; give a new or empty folder")
    if not src.is_dir():
        model.save(str(out))
        return
    from hybridembed.commands.push import uploadable_files

    for relative in uploadable_files(src):
        if relative.parts[0] == ONNX_DIR:
            continue
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / relative, target)


def _run_file(folder: Path, file_name: str, texts: tuple[str, ...]) -> np.ndarray:
    from hybridembed.serve.onnx_backend import OnnxEncoder

    encoder = OnnxEncoder(folder, file_name=file_name)
    return encoder.encode(list(texts), batch_size=len(texts))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return (a * b).sum(axis=1)
