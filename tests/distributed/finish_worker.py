"""torchrun worker: finish a gloo run with finish_distributed_run and record what ran before the process left (run by test_distributed.py)."""

import atexit
import sys
import threading
import time

import torch
import torch.distributed as dist

from hybridembed.distributed import finish_distributed_run


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def main() -> None:
    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    atexit.register(write, f"{out}.rank{rank}.atexit", str(float(total)))

    def late_writer() -> None:  # a non-daemon thread still running when the run finishes
        time.sleep(0.5)
        write(f"{out}.rank{rank}.thread", "done")

    threading.Thread(target=late_writer).start()
    print(f"rank {rank} finishing", flush=True)
    finish_distributed_run()
    write(f"{out}.rank{rank}.after", "finish_distributed_run returned")  # must never run


if __name__ == "__main__":
    main()
