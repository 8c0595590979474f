"""torch.distributed helpers for ``torchrun`` runs: one process per device, gloo on CPU, nccl on CUDA.

Sharded inference keeps a single rule: rank ``r`` of ``w`` takes items ``r, r + w, r + 2w, ...`` of the ordered work
list, writes its own outputs, and rank 0 merges the per-rank records after a barrier. Every item's randomness is
seeded by the item itself, never by the rank, so a sharded run gives exactly the single-process result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

__all__ = ["local_device", "init_from_env", "rank_world", "is_main", "barrier", "shard", "all_gather_objects", "backend_for",
           "destroy"]

T = TypeVar("T")


def backend_for(device: str | torch.device | None = None) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    dev = torch.device(device) if device is not None else None
    return "nccl" if (dev is not None and dev.type == "cuda") or (dev is None and torch.cuda.is_available()) \
        else "gloo"


def local_device() -> torch.device:
    """This process's device under ``torchrun``: ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def init_from_env(device: str | torch.device | None = None) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1); a no-op otherwise.

    Returns ``(rank, world_size)``. On CUDA each process uses ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's items: every ``world``-th, starting at ``rank`` (all of them in a single process)."""
    rank, world = rank_world()
    return list(items[rank::world])


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    import torch.distributed as dist

    rank, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
