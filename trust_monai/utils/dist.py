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
           "destroy", "all_reduce_gradients", "broadcast_state", "main_rank_handlers"]

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


def all_reduce_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over the ranks (one flat all-reduce); a no-op in a single process.

    What DistributedDataParallel does after ``backward``, for modules it cannot wrap (a method other than
    ``forward`` computes the loss). Parameters without a gradient are skipped; every rank runs the same code, so
    every rank skips the same ones.
    """
    import torch.distributed as dist

    _, world = rank_world()
    if world == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_state(module: torch.nn.Module, src: int = 0, buffers_only: bool = False) -> None:
    """Copy ``module``'s parameters and buffers (or buffers only) from rank ``src`` to every rank; a no-op in a single
    process. Ranks train on different data, so batch-norm statistics drift apart unless they are made one."""
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src)


_WRITERS = ("CheckpointSaver", "PoisonCheckpoint", "ModelSaver", "ProgressBar", "StatsHandler", "TensorBoardStatsHandler",
            "MLFlowHandler")


def main_rank_handlers(handlers: Sequence[Any], drop: Sequence[str] = _WRITERS) -> list[Any]:
    """``handlers`` on rank 0; on the other ranks the same list without the ones that save, log or draw progress
    (matched by class name), so checkpoints and logs come from rank 0 only, while handlers that change the training
    (learning-rate schedules, say) run on every rank."""
    if rank_world()[0] == 0:
        return list(handlers)
    return [h for h in handlers if type(h).__name__ not in drop]


def destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # a rank that tears the group down while another still finishes (rank 0 saving) can abort the gloo transport
        dist.barrier()
        dist.destroy_process_group()
