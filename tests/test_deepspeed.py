"""DeepSpeed ZeRO-1 and ZeRO-2 on 2 CPU processes (gloo, DS_ACCELERATOR=cpu): the per-step losses equal the same run under DDP.

Launched as docs/distributed.md says: ZeRO-1 under torchrun, ZeRO-2 under the `deepspeed` launcher
(with --no_local_rank). The first multi-process DeepSpeed start on a machine compiles DeepSpeed's
CPU shared-memory comm op (C++, about 45 s; cached in ~/.cache/torch_extensions); later runs take
about 25 s each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import QUICKSTART

pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install -e '.[deepspeed]' (requirements/dev.txt pins it)")
if torch.cuda.is_available() and torch.cuda.device_count() < 2:
    pytest.skip("needs 2 processes: CPU, or at least 2 GPUs", allow_module_level=True)

HERE = Path(__file__).parent
WORKER = HERE / "distributed" / "deepspeed_worker.py"
STEPS = 6
# fp32 everywhere; ZeRO-1/2 only change where the optimizer state lives and how gradients are reduced,
# so the runs agree to float rounding (observed: identical to ~1e-7).
LOSS_TOLERANCE = 1e-5


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    return env


def _recipe(tmp_path: Path, backbone: Path, zero_stage: int | None) -> Path:
    import yaml

    recipe = {
        "model": {"backbone": str(backbone), "max_seq_length": 32},
        "datasets": [
            {"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts", "max_samples": 64},
            {"path": str(QUICKSTART / "stsb_paraphrase_pairs.jsonl"), "task": "retrieval", "max_samples": 64},
        ],
        "training": {"output_dir": str(tmp_path / "out"), "batch_size": 8, "max_steps": STEPS, "report_to": [], "logging_steps": 1,
                     "learning_rate": 1e-3, "warmup_steps": 0, "max_grad_norm": 1.0},
    }  # fmt: skip
    if zero_stage is not None:  # the shape of recipes/piccolo2.yaml's section, fp32
        recipe["deepspeed"] = {
            "zero_optimization": {"stage": zero_stage},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(tmp_path: Path, backbone: Path, zero_stage: int | None, launcher: str) -> list[dict]:
    recipe = _recipe(tmp_path, backbone, zero_stage)
    port = str(_free_port())
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    else:  # the deepspeed launcher; --no_local_rank: hybridembed reads LOCAL_RANK from the environment
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", port, "--no_local_rank"]
    result = subprocess.run([*command, str(WORKER), str(recipe), str(tmp_path / "log")], capture_output=True, text=True, timeout=400, env=_env())
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return [json.loads((tmp_path / f"log.rank{r}.json").read_text()) for r in range(2)]


def test_zero1_and_zero2_per_step_losses_match_ddp(tmp_path, tiny_bert_dir):
    baseline = _run(tmp_path / "ddp", tiny_bert_dir, None, "torchrun")
    assert baseline[0]["engine"] == "DistributedDataParallel" and baseline[0]["world"] == 2
    reference = baseline[0]["losses"]
    assert len(reference) == STEPS and len(set(baseline[0]["step_tasks"])) == 2
    for stage, launcher in ((1, "torchrun"), (2, "deepspeed")):
        ranks = _run(tmp_path / f"zero{stage}", tiny_bert_dir, stage, launcher)
        for rank in ranks:
            assert rank["deepspeed"] and rank["engine"] == "DeepSpeedEngine" and rank["world"] == 2
            assert rank["zero_stage"] == stage and rank["optimizer"] == "DeepSpeedZeroOptimizer"
            assert rank["step_tasks"] == baseline[0]["step_tasks"]
        losses = ranks[0]["losses"]
        gap = max(abs(a - b) for a, b in zip(losses, reference))
        print(f"ZeRO-{stage} ({launcher}) vs DDP: max |loss difference| over {STEPS} steps = {gap:.2e}; losses {losses}")
        assert losses == pytest.approx(reference, abs=LOSS_TOLERANCE, rel=LOSS_TOLERANCE)
        assert ranks[0]["grad_norms"] == pytest.approx(baseline[0]["grad_norms"], abs=1e-4, rel=1e-4)
