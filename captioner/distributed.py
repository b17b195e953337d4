"""Multi-process training under torchrun: the process group, each process's share of the work, and
the few collectives that training and validation need.

`torchrun --nproc-per-node N -m captioner.cli train ...` starts N processes with RANK, WORLD_SIZE
and LOCAL_RANK set; `setup` joins them into one group (NCCL on CUDA, each process on its own GPU
cuda:LOCAL_RANK; gloo on the CPU). Started any other way a process is rank 0 of 1, and every
method here does nothing or returns its input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import distributed as dist

from captioner.estimators import ReinforceBaseline

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """True in a process that torchrun started (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: rank `rank` of `world_size`, on GPU `local_rank` of its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Distributed":
        """The place torchrun gave this process (rank 0 of 1 when it was not started by torchrun)."""
        if not launched_by_torchrun():
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))

    @property
    def active(self) -> bool:
        """True when several processes share the work."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and shows progress; the others only compute."""
        return self.rank == 0

    def share(self, count: int) -> range:
        """This process's contiguous share of `count` items; shares differ in size by at most one."""
        return range(count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size)

    def device(self, name: str) -> torch.device:
        """The device this process trains on: `name` (train.device), except that with several processes
        a CUDA run puts each on its own GPU, cuda:LOCAL_RANK. A GPU is named with its index (plain
        'cuda' is the current GPU), so that tensors' devices compare equal to it."""
        device = torch.device(name)
        if device.type != "cuda":
            return device
        if self.active:
            return torch.device("cuda", self.local_rank)
        return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the processes, in place (on the training device: NCCL needs a GPU tensor)."""
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, items: list) -> list:
        """Every process's list of picklable `items`, concatenated in rank order, on every process."""
        if not self.active:
            return items
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    def broadcast(self, value):
        """Rank 0's picklable `value`, on every process."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup(device: str) -> Distributed:
    """Join torchrun's process group, once per process: backend NCCL when `device` (train.device) is
    CUDA, with this process's current GPU set to cuda:LOCAL_RANK, else gloo. The rendezvous address
    comes from torchrun's MASTER_ADDR and MASTER_PORT. Outside torchrun: rank 0 of 1, nothing joined."""
    place = Distributed.from_environment()
    if not launched_by_torchrun() or dist.is_initialized():
        return place
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(place.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=place.rank, world_size=place.world_size)
    return place


def shutdown() -> None:
    """Leave the process group (at the end of a command), if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class AllReducedBaseline(ReinforceBaseline):
    """VAR's moving-average baseline for a batch split across processes: it moves with the mean reward
    of the whole batch (summed over the processes), so every process holds the same value, the one a
    single process would."""

    def update(self, reward: torch.Tensor, decay: float) -> None:
        reward = reward.detach()
        totals = torch.stack([reward.sum(), torch.ones_like(reward).sum()])
        dist.all_reduce(totals)
        super().update(totals[0] / totals[1], decay)
