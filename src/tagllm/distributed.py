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
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch

from tagllm.errors import ConfigError


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

    def share(self, n: int) -> tuple[list[int], int]:
        """This process's contiguous share of ``n`` items, padded (by repeating its last
        item) to the same length on every process, so every process runs the same number
        of forward passes, which a sharded (FSDP) model needs: (indices, how many are
        real)."""
        per = -(-n // self.size)
        real = list(range(min(self.rank * per, n), min((self.rank + 1) * per, n)))
        fill = real[-1] if real else n - 1
        return real + [fill] * (per - len(real)), len(real)

    def gather_rows(self, local: torch.Tensor | np.ndarray, share: list[int], real: int,
                    n: int) -> torch.Tensor:
        """(n, ...) float64: this process's results for ``share`` (from :meth:`share`) and
        every other process's, in item order (one all-reduce of a tensor, no pickling)."""
        local = torch.as_tensor(local, dtype=torch.float64)
        out = local.new_zeros((n, *local.shape[1:]))
        out[share[:real]] = local[:real]
        return self.sum_(out)

    def on_shares(self, n: int, fn: Callable[[list[int]], Any]) -> torch.Tensor:
        """(n, ...) float64: ``fn(indices)`` -> one row per index, run on this process's
        share of ``n`` items and assembled from every process's share."""
        share, real = self.share(n)
        return self.gather_rows(fn(share), share, real, n)

    def gather_object(self, obj: Any) -> list[Any]:
        """``obj`` from every process, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out


def fsdp_requested() -> bool:
    """Whether the launch asked for sharded base weights: ``accelerate launch`` with an FSDP
    configuration (``ACCELERATE_USE_FSDP``) or ``TAGLLM_FSDP=1``."""
    return any(os.environ.get(k, "").lower() in ("1", "true")
               for k in ("ACCELERATE_USE_FSDP", "TAGLLM_FSDP"))


def shard_model(base: torch.nn.Module, w: World, offload: bool | None = None) -> int:
    """Shard the frozen base model's transformer blocks across the processes with FSDP2
    (``fully_shard``): each process keeps 1/N of every block's weights and gathers a block
    only while it runs. The embeddings, final norm and LM head stay whole (tags are spliced
    into the embeddings outside the model's forward). Blocks are the modules named in the
    model's ``_no_split_modules``, as accelerate's transformer auto-wrap policy does; the
    rest of the model is then moved to this process's device. With ``offload`` (default:
    accelerate's ``FSDP_OFFLOAD_PARAMS``) the shards live in CPU memory.

    Every process must then run the same sequence of forward passes (each block's forward
    is a collective): training, evaluation and generation do so when ``is_sharded``.
    Returns the number of sharded blocks.
    """
    if not w.distributed:
        return 0
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    names = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in base.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError(f"{type(base).__name__} names no transformer block class "
                         "(_no_split_modules), so it cannot be sharded")
    if offload is None:
        offload = os.environ.get("FSDP_OFFLOAD_PARAMS", "").lower() == "true"
    mesh = init_device_mesh(w.device.type, (w.size,))
    policy = CPUOffloadPolicy() if offload else OffloadPolicy()
    for block in blocks:  # moves each block's shard to the device (or keeps it on the CPU)
        fully_shard(block, mesh=mesh, offload_policy=policy)
    inside = {id(m) for b in blocks for m in b.modules()}
    for m in base.modules():  # the rest, whole, onto this process's device
        if id(m) in inside:
            continue
        for p in m.parameters(recurse=False):
            p.data = p.data.to(w.device)  # in place, so tied weights stay tied
        for name, buf in m.named_buffers(recurse=False):
            m._buffers[name] = buf.to(w.device)
    return len(blocks)


def local_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(parameters held by this process, parameters of the whole module)."""
    from torch.distributed.tensor import DTensor

    mine = total = 0
    for p in module.parameters():
        total += p.numel()
        mine += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return mine, total


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether some part of ``module`` is sharded with FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


@cache
def world() -> World:
    """The current world: from accelerate's ``PartialState`` under a multi-process launch
    (gloo on CPU, NCCL on GPUs), else a single process on the GPU if there is one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return World(state.process_index, state.num_processes, torch.device(state.device))
    return World(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
