"""torchrun worker: train a recipe and write this rank's per-step task types and trained word embeddings (run by test_distributed.py)."""

import json
import sys

import torch
import torch.distributed as dist

from hybridembed.distributed import finish_distributed_run
from hybridembed.recipe import load_recipe
from hybridembed.training.builder import prepare_training


def main() -> None:
    recipe_path, out_prefix = sys.argv[1], sys.argv[2]
    trainer = prepare_training(load_recipe(recipe_path))
    trainer.train()
    rank = dist.get_rank() if dist.is_initialized() else 0
    with open(f"{out_prefix}.rank{rank}.json", "w") as f:
        json.dump({"step_tasks": trainer.step_tasks, "task_batches": dict(trainer.task_batches)}, f)
    torch.save(trainer.model[0].auto_model.get_input_embeddings().weight.detach(), f"{out_prefix}.rank{rank}.pt")


if __name__ == "__main__":
    main()
    finish_distributed_run()  # every rank done: close the groups, leave without interpreter teardown
