"""Multi-process training on torch.distributed, launched by torchrun (or `accelerate launch`).

Every rank draws the same global batch (batches are a pure function of seed, stage and step), masks it the
same way, and trains on its rows [rank::world]; DistributedDataParallel averages the gradients. So N
processes at batch B follow the single-process run at batch B, and resume works unchanged. Rank 0 alone
writes the run directory. GPU runs use NCCL with each process on cuda:LOCAL_RANK; CPU runs use gloo.

    torchrun --nproc_per_node 8 -m slimbert.cli run recipe.yaml --out runs/x               # one node, 8 GPUs
    accelerate launch --num_processes 8 -m slimbert.cli run recipe.yaml --out runs/x       # the same
    torchrun --nnodes 2 --node_rank $RANK --nproc_per_node 8 --rdzv_backend c10d \
        --rdzv_endpoint $HOST:29500 -m slimbert.cli run recipe.yaml --out /shared/runs/x    # two nodes
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives' tensors live

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
        stacked = torch.stack([v.detach().float().to(self.device) for v in values.values()])
        if self.active:
            dist.all_reduce(stacked)
            stacked /= self.size
        return dict(zip(values, stacked))

    def any(self, flag: bool) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t)
        return bool(t.item())

    def wrap(self, module: nn.Module):
        """DDP around the modules a stage trains; unused parameters are expected (progressive stages run only
        the layers up to the current one)."""
        if not self.active:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, output_device=ids and ids[0],
                                                   find_unused_parameters=True)

    def no_sync(self, module, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
        return module.no_sync() if self.active and not last else nullcontext()


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes (SLIMBERT_BACKEND overrides, e.g. gloo to debug)."""
    return os.environ.get("SLIMBERT_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")


def world_from_env(device: torch.device | None = None) -> World:
    """torchrun / accelerate set WORLD_SIZE, RANK and LOCAL_RANK; without them this is a single process.
    `device` is this process's (cuda:LOCAL_RANK on GPUs, see engine/device.py)."""
    device = torch.device("cpu") if device is None else device
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=device)
    if not dist.is_initialized():
        backend = backend_for(device)
        kwargs = {"device_id": device} if backend == "nccl" else {}  # binds NCCL's communicator to this GPU
        dist.init_process_group(backend, **kwargs)
    return World(dist.get_rank(), dist.get_world_size(), device)
