"""torchrun worker: InfoNCE on gathered embeddings vs one process on the concatenated batch (run by test_distributed.py)."""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hybridembed.distributed import finish_distributed_run, gathering_over
from hybridembed.losses import InfoNCELoss


def embeddings(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def main() -> None:
    out_path, negatives, sizes = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dim = 16
    total = sum(sizes)
    q_all, p_all = embeddings(total, dim, 1), embeddings(total, dim, 2)
    n_all = [embeddings(total, dim, 10 + j) for j in range(negatives)]
    start = sum(sizes[:rank])
    mine = slice(start, start + sizes[rank])
    loss_fn = InfoNCELoss(None, temperature=0.05, bidirectional=True)
    q = q_all[mine].clone().float().requires_grad_(True)
    p = p_all[mine].clone().float().requires_grad_(True)
    n = [x[mine].clone().float().requires_grad_(True) for x in n_all]
    with gathering_over(dist.group.WORLD):
        loss = loss_fn.loss_from_embeddings(q, p, n)
    loss.backward()
    result = {"rank": rank, "loss": loss.item(), "rows": sizes[rank], "grad_q": q.grad.tolist(), "grad_p": p.grad.tolist(),
              "grad_n": [x.grad.tolist() for x in n]}  # fmt: skip
    gathered = [None] * world
    dist.all_gather_object(gathered, result)
    if rank == 0:
        qs, ps = q_all.float().requires_grad_(True), p_all.float().requires_grad_(True)
        ns = [x.float().requires_grad_(True) for x in n_all]
        single = loss_fn.loss_from_embeddings(qs, ps, ns)
        single.backward()
        with open(out_path, "w") as f:
            json.dump({"ranks": gathered, "single_loss": single.item(), "single_grad_q": qs.grad.tolist(), "single_grad_p": ps.grad.tolist(),
                       "single_grad_n": [x.grad.tolist() for x in ns], "sizes": sizes}, f)  # fmt: skip
    finish_distributed_run()  # close the group, leave without interpreter teardown


if __name__ == "__main__":
    main()
