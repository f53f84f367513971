"""torchrun worker: train a recipe whose `eval:` suite is made slow on rank 0 (first evaluation sleeps SLOW_EVAL_SECONDS); write each rank's barrier count (run by test_multirank_hazards.py)."""

import json
import os
import sys
import time

import torch.distributed as dist

import hybridembed.evaluation.runner as runner
from hybridembed.distributed import finish_distributed_run
from hybridembed.recipe import load_recipe
from hybridembed.training.builder import prepare_training

real_run_suite = runner.run_suite
slept = []


def slow_run_suite(*args, **kwargs):
    if not slept:
        slept.append(float(os.environ["SLOW_EVAL_SECONDS"]))
        time.sleep(slept[0])
    return real_run_suite(*args, **kwargs)


def main() -> None:
    recipe_path, out_prefix = sys.argv[1], sys.argv[2]
    runner.run_suite = slow_run_suite  # the evaluator imports it from the module at call time
    trainer = prepare_training(load_recipe(recipe_path))
    trainer.train()
    evaluator = trainer.evaluator  # the suite runs in the trainer's evaluate(); only rank 0 scores it
    rank = dist.get_rank() if dist.is_initialized() else 0
    with open(f"{out_prefix}.rank{rank}.json", "w") as f:
        json.dump({"waits": evaluator.waits, "evaluated": [h["step"] for h in evaluator.history], "slept": slept,
                   "global_step": trainer.state.global_step, "ddp_timeout": trainer.args.ddp_timeout}, f)  # fmt: skip


if __name__ == "__main__":
    main()
    finish_distributed_run()  # every rank done: close the groups, leave without interpreter teardown
