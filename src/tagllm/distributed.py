"""Several processes (data parallel) through accelerate: who am I, and the few collectives
tag training needs.

Launched with ``accelerate launch`` or ``torchrun`` (``WORLD_SIZE`` > 1), each process takes
a slice of every global batch; the tag and head gradients (a few thousand numbers) are
summed across processes with one all-reduce, so every process applies the same update and
the tags stay identical everywhere. Only the main process writes files. A plain ``python``
run is a world of one and touches no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, items: list) -> list:
        """This process's share of a global batch (every size-th item)."""
        return items[self.rank::self.size]

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all processes, in place (through this process's device, which
        NCCL needs)."""
        if self.distributed:
            if t.device == self.device:
                torch.distributed.all_reduce(t)
            else:
                on_device = t.to(self.device)
                torch.distributed.all_reduce(on_device)
                t.copy_(on_device)
        return t

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def gather_object(self, obj: Any) -> list[Any]:
        """``obj`` from every process, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out


@cache
def world() -> World:
    """The current world: from accelerate's ``PartialState`` under a multi-process launch
    (gloo on CPU, NCCL on GPUs), else a single process on the GPU if there is one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return World(state.process_index, state.num_processes, torch.device(state.device))
    return World(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
