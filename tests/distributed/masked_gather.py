"""torchrun worker: gathered InfoNCE with ragged negatives and a positive shared across ranks vs one process (run by test_training_path.py)."""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hybridembed.data.collator import text_hash
from hybridembed.distributed import finish_distributed_run, gathering_over
from hybridembed.losses import InfoNCELoss

# Per rank: (query, positive, negatives). Rank 1's second row has rank 0's first positive; rank 1's
# first row has rank 0's third positive as a hard negative; rows have 0, 1 or 2 negatives.
ROWS = [
    [("q0", "shared", ["a", "b"]), ("q1", "p01", []), ("q2", "p02", ["c"])],
    [("q3", "p10", ["p02"]), ("q4", "shared", [])],
]


def vector(text: str) -> torch.Tensor:
    return F.normalize(torch.randn(16, generator=torch.Generator().manual_seed(text_hash(text) & 0xFFFF), dtype=torch.float64), dim=0)


def tensors(rows, width):
    q = torch.stack([vector(r[0]) for r in rows]).float()
    p = torch.stack([vector(r[1]) for r in rows]).float()
    negs = [torch.stack([vector(r[2][j] if j < len(r[2]) else r[1]) for r in rows]).float() for j in range(width)]
    labels = {
        "negative_counts": torch.tensor([len(r[2]) for r in rows]),
        "query_ids": torch.tensor([text_hash(r[0]) for r in rows]),
        "positive_ids": torch.tensor([text_hash(r[1]) for r in rows]),
        "negative_ids": torch.tensor([[text_hash(r[2][j]) if j < len(r[2]) else 0 for j in range(width)] for r in rows]).view(len(rows), width),
    }
    return q, p, negs, labels


def main() -> None:
    out_path = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    loss_fn = InfoNCELoss(None, temperature=0.05, bidirectional=True)
    mine = ROWS[rank]
    q, p, negs, labels = tensors(mine, max(len(r[2]) for r in mine))
    with gathering_over(dist.group.WORLD):
        loss = loss_fn.loss_from_embeddings(q, p, negs, labels)
        unmasked = loss_fn.loss_from_embeddings(q, p, negs)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": rank, "rows": len(mine), "loss": loss.item(), "unmasked": unmasked.item()})
    if rank == 0:
        every = [r for rows in ROWS for r in rows]
        single = loss_fn.loss_from_embeddings(*tensors(every, max(len(r[2]) for r in every)))
        with open(out_path, "w") as f:
            json.dump({"ranks": gathered, "single_loss": single.item()}, f)
    finish_distributed_run()  # close the group, leave without interpreter teardown


if __name__ == "__main__":
    main()
