"""Data-parallel MTP training over torch.distributed, launched by torchrun.

    torchrun --nproc_per_node 2 -m gpr.cli train --model gpr --data W --sids T --out RUN

Every process builds the same model and draws the same window order (same seed); step s takes the
global batch of `train.batch_size` x world-size windows and each process trains on its share,
through `DistributedDataParallel` (gloo on CPU, NCCL on GPU), so N processes train like one with
an N times larger batch. Each process's loss is scaled by its share of the global batch's
predictions, which makes the averaged gradient the gradient of the global mean for losses that
are means over predictions (exact for HSTU; GPR's other terms are weighted by the same share).
Rank 0 alone writes the run and the checkpoints. Multi-node: torchrun's rendezvous flags
(`--nnodes`, `--node_rank`, `--rdzv_endpoint`), see docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> World:
        """The torchrun environment (WORLD_SIZE > 1) joins the process group; else one process."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def share(self, batch: np.ndarray) -> np.ndarray:
        """This process's part of a global batch of window indices."""
        return np.array_split(batch, self.size)[self.rank] if self.size > 1 else batch

    def total(self, n: int, device: torch.device) -> int:
        """The sum of `n` over the processes."""
        if self.size == 1:
            return n
        t = torch.tensor([n], dtype=torch.long, device=device)
        dist.all_reduce(t)
        return int(t.item())


class LossOf(nn.Module):
    """`model.loss` as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> dict[str, torch.Tensor]:
        return self.model.loss(*args)  # type: ignore[operator]


def data_parallel(model: nn.Module, world: World) -> nn.Module:
    """What the training step calls: the model's loss, wrapped in DDP when there are peers."""
    step = LossOf(model)
    if world.size == 1:
        return step
    return nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)


def no_sync(step: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """Skip DDP's gradient all-reduce (all but the last micro-batch of an accumulated step)."""
    if isinstance(step, nn.parallel.DistributedDataParallel):
        return step.no_sync()
    return contextlib.nullcontext()


def finish(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
