"""torchrun worker: train a recipe (with or without its `deepspeed:` section) and write the per-step losses and what engine ran (run by test_deepspeed.py)."""

import json
import os
import sys

import torch.distributed as dist

from hybridembed.recipe import load_recipe
from hybridembed.training.builder import prepare_training


def main() -> None:
    recipe_path, out_prefix = sys.argv[1], sys.argv[2]
    trainer = prepare_training(load_recipe(recipe_path))
    trainer.train()
    rank = dist.get_rank() if dist.is_initialized() else 0
    engine = trainer.model_wrapped
    report = {
        "world": dist.get_world_size() if dist.is_initialized() else 1,
        "deepspeed": bool(trainer.is_deepspeed_enabled),
        "engine": type(engine).__name__,
        "zero_stage": engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None,
        "optimizer": type(getattr(engine, "optimizer", None) or trainer.optimizer).__name__,
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "grad_norms": [e.get("grad_norm") for e in trainer.state.log_history if "loss" in e],
        "step_tasks": trainer.step_tasks,
    }
    with open(f"{out_prefix}.rank{rank}.json", "w") as f:
        json.dump(report, f)
    # Leave together, then skip interpreter teardown: DeepSpeed's CPU communication threads sometimes
    # abort the exit ("terminate called without an active exception", rc 250) after the run is complete.
    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
