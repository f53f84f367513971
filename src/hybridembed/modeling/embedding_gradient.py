"""Word-embedding gradients added row by row into one dense gradient per step, instead of one vocabulary-sized gradient per forward.

torch's embedding backward (`sparse=False`) builds a dense (vocabulary × hidden) gradient for every
forward that used the table — zero-filled, the used rows added — and autograd sums those dense
tensors before they reach `.grad`. A step that embeds its texts in several chunks
(`training.forward_chunk_rows`), columns or GradCache mini-batches pays that per forward: for
all-MiniLM-L6-v2 a 47 MB zero-fill and a 47 MB add each time, though a chunk touches a few hundred
rows. `SparseBackwardEmbedding` asks for the sparse form of the same gradient (the used rows and
their gradients, `F.embedding(..., sparse=True)`) and gives the weight a dense zero `.grad` before
the first forward of a step, so autograd adds the rows into it in place (dense += sparse) and the
optimizer, gradient clipping and DDP see the dense gradient they always did. One zero-fill per step
remains, the one the first forward paid before. nn.Embedding(sparse=True) is not the same thing: it
leaves a sparse `.grad`, which fused AdamW, foreach clipping and DDP's dense buckets do not take.

Same values up to the order of float additions (tests/test_embedding_gradient.py); inference and
frozen tables use nn.Embedding's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SparseBackwardEmbedding(nn.Embedding):
    """`nn.Embedding` whose backward sends only the used rows, added in place into a dense `.grad`."""

    def forward(self, input: Tensor) -> Tensor:
        weight = self.weight
        if self.sparse or not (self.training and weight.requires_grad and torch.is_grad_enabled()):
            return super().forward(input)
        if weight.grad is None:
            # dense, so autograd adds each forward's rows into it instead of keeping a sparse gradient
            weight.grad = torch.zeros_like(weight)
        return F.embedding(input, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, sparse=True)


def use_sparse_embedding_backward(model: nn.Module) -> int:
    """Make every trainable `nn.Embedding` of `model` a `SparseBackwardEmbedding` in place (same parameters, so tied weights stay tied).

    Returns how many tables were changed. Tables with `sparse=True` of their own are left as they are.
    """
    changed = 0
    for module in model.modules():
        if type(module) is nn.Embedding and not module.sparse and module.weight.requires_grad:
            module.__class__ = SparseBackwardEmbedding
            changed += 1
    return changed
