"""Multi-process training with ``torch.distributed`` (DDP): one code path for 1..N processes.

Launched by torchrun (``torchrun --nproc_per_node N -m kolmotok train ...``), each process
reads RANK / WORLD_SIZE / LOCAL_RANK from the environment, joins the process group (NCCL
on GPUs, Gloo on CPU) and trains a DistributedDataParallel replica on its slice of every
global batch. Without those variables everything here is a no-op single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone logs, evaluates and writes checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def check_same(self, value, what: str, hint: str) -> None:
        """ValueError unless every rank holds the same ``value`` (one collective, on every rank)."""
        if self.world == 1:
            return
        values = [None] * self.world
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise ValueError(f"the processes disagree on {what} (by rank: {values}); {hint}")

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged scalars over the ranks (each saw its own slice of the batch)."""
        if self.world == 1 or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world).tolist()))


def init_distributed(device_name: str, timeout: timedelta | None = None) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun; pick this process's device.
    ``timeout``: how long a collective may wait for the slowest rank (default: torch's)."""
    requested = resolve_device(device_name)  # ValueError naming an unknown or absent device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), requested
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = requested.type == "cuda"
    if use_cuda and local >= torch.cuda.device_count():
        raise ValueError(f"process {local} of this node has no GPU: the node has {torch.cuda.device_count()} CUDA "
                         "device(s); start at most that many processes per node (--nproc_per_node) or use "
                         "--device cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return Dist(rank, world, local), device


class ObjectiveModule(nn.Module):
    """model + objective as one module, so DDP sees the whole loss computation as its forward."""

    def __init__(self, model: nn.Module, objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, images: torch.Tensor, draws):
        out = self.objective(self.model, images, draws)
        return out.loss, out.metrics


def wrap(module: ObjectiveModule, ddp: Dist, device: torch.device) -> nn.Module:
    if ddp.world == 1:
        return module
    # objectives leave some parameters unused (a fixed-length model never trains its halting head)
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=True)
