"""Distributed training on torch.distributed: a process group when torchrun started us.

``torchrun --nproc_per_node=N -m archdsl train ...`` (or several nodes through torchrun's
rendezvous) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; every rank then builds the same
module from the spec, wraps it in ``DistributedDataParallel`` and reads its own shard of each
global batch through a ``DistributedSampler``. Without those variables the run is one process.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where the collectives' tensors live (NCCL needs them on the GPU)

    @property
    def main(self) -> bool:
        """The rank that writes logs and checkpoints and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device: str) -> World:
    """Join the process group torchrun describes (gloo on the CPU, NCCL on CUDA); a no-op in a
    single process or when the group already exists (a sweep trains several variants)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), device)


_left_group = False


def shutdown() -> None:
    """Leave the process group before the interpreter exits. The command that joined the group
    calls this once, after every variant it trains (a sweep shares one)."""
    global _left_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _left_group = True


def left_group() -> bool:
    """Whether this process joined a process group and has left it (see :func:`exit_now`)."""
    return _left_group


def exit_now(code: int) -> NoReturn:
    """End a process that has left its gloo group without the interpreter's teardown.

    ``destroy_process_group`` does not stop gloo's threads once ``torch._dynamo`` has been
    imported (``DistributedDataParallel`` imports it): something in C++ keeps the group alive,
    and its threads are still running when the process exits. Under load, the teardown of the
    C++ runtime then sometimes meets one of them and aborts ("terminate called without an active
    exception", SIGABRT), after a run that finished well, so torchrun reports a failed rank
    (measured on torch 2.13, CPU: 2 of 60 two-rank runs beside a busy machine). The run's files
    are closed by now (every write is atomic); this flushes the streams and leaves with ``code``
    at once. Only the command-line entry point calls it, never a library function."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def all_sum(values: list[float], world: World) -> list[float]:
    """The sums over the ranks of a few numbers (loss and error tallies)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when it is true on one (a signal reached one rank: all stop together)."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def identical(tensors: dict[str, torch.Tensor], world: World) -> bool:
    """Whether every rank holds exactly the same tensors (DDP keeps the replicas in step; this
    checks it): the elementwise maximum over the ranks equals the minimum."""
    same = True
    for t in tensors.values():
        if not t.is_floating_point():
            t = t.double()
        high, low = t.detach().clone(), t.detach().clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        same &= torch.equal(high, low)
    return same
