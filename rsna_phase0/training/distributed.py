"""torch DDP plumbing: read torchrun's variables, pick the backend, wrap the model, reduce scalars.

Ranks consume the data plan's global batches in turn (rank r takes positions start+r, start+r+world, ...), so a
checkpoint's plan position resumes at any world size. Only rank 0 writes files and prints the progress bar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env(environ=os.environ) -> DistInfo:
    """torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them this is a single process."""
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise RuntimeError(f"cannot read torchrun's WORLD_SIZE/RANK/LOCAL_RANK ({exc})") from None
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return DistInfo(world_size=world, rank=rank, local_rank=local)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    # Every parameter takes part in every backward (the trainer calls the Pretrainer with touch_idle under DDP), so
    # DDP needs no unused-parameter search (a graph traversal per step) and its buckets overlap the all-reduce with
    # the backward; gradients are views into the buckets (no copy). No buffers to broadcast: every normalisation is
    # per sample. device_ids stays None: batches are moved to the device by the loop (MiMBatch is not a tensor).
    return DistributedDataParallel(
        model,
        device_ids=None,
        find_unused_parameters=False,
        broadcast_buffers=False,
        gradient_as_bucket_view=True,
    )


def all_reduce_mean(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return (tensor / info.world_size).tolist()


def all_reduce_max_each(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Element-wise maximum over ranks."""
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def all_reduce_max(value: float, device: torch.device, info: DistInfo) -> float:
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
