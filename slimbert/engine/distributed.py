"""Multi-process training on torch.distributed, launched by torchrun (or `accelerate launch`).

Every rank draws the same global batch (batches are a pure function of seed, stage and step), masks it the
same way, and trains on its rows [rank::world]; DistributedDataParallel averages the gradients. So N
processes at batch B follow the single-process run at batch B, and resume works unchanged. Rank 0 alone
writes the run directory. CPU runs use the gloo backend.

    torchrun --nproc_per_node 2 -m slimbert.cli run recipe.yaml --out runs/x
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each term averaged over ranks (detached): the loss of the global batch, for logs and the NaN guard."""
        if not values:
            return {}
        stacked = torch.stack([v.detach().float() for v in values.values()])
        if self.active:
            dist.all_reduce(stacked)
            stacked /= self.size
        return dict(zip(values, stacked))

    def any(self, flag: bool) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t)
        return bool(t.item())

    def wrap(self, module: nn.Module):
        """DDP around the modules a stage trains; unused parameters are expected (progressive stages run only
        the layers up to the current one)."""
        if not self.active:
            return module
        return nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)

    def no_sync(self, module, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
        return module.no_sync() if self.active and not last else nullcontext()


def world_from_env() -> World:
    """torchrun / accelerate set WORLD_SIZE and RANK; without them this is a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SLIMBERT_BACKEND") == "nccl" else "gloo"
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size())
