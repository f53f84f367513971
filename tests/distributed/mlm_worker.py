"""torchrun worker: run the mlm stage and report whether it trained as one process group (run by test_multirank_hazards.py)."""

import json
import sys

import torch.distributed as dist

from hybridembed.distributed import finish_distributed_run
from hybridembed.recipe import load_recipe
from hybridembed.training.mlm import run_mlm


def main() -> None:
    recipe_path, out_prefix = sys.argv[1], sys.argv[2]
    recipe = load_recipe(recipe_path)
    stage = recipe.stages[0]
    run_mlm(recipe.model, stage.texts, recipe.training, stage.mlm_probability, resume=False)
    initialized = dist.is_initialized()
    rank = dist.get_rank() if initialized else -1
    world = dist.get_world_size() if initialized else 1
    backend = dist.get_backend() if initialized else None
    with open(f"{out_prefix}.pid{__import__('os').getpid()}.json", "w") as f:
        json.dump({"initialized": initialized, "rank": rank, "world": world, "backend": backend}, f)


if __name__ == "__main__":
    main()
    finish_distributed_run()  # every rank done: close the groups, leave without interpreter teardown
