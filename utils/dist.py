"""Distributed helpers in DeiT's style: read torchrun's RANK / WORLD_SIZE / LOCAL_RANK, fall
back to one plain process. NCCL on GPU, gloo on CPU."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from utils.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (a no-op otherwise)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            gpus = torch.cuda.device_count()
            if info.local_rank >= gpus:
                raise UserError(
                    f"torchrun started more processes on this machine than it has GPUs "
                    f"(local rank {info.local_rank}, {gpus} GPU(s) visible): use "
                    f"--nproc_per_node {gpus} or fewer, or --device cpu")
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def local_device(info: DistInfo, device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU of its local rank."""
    if device.type == "cuda" and info.distributed:
        return torch.device("cuda", info.local_rank)
    return device


def shard(items: Sequence[T], info: DistInfo) -> Sequence[T]:
    """This rank's share of ``items`` (every world_size-th item, starting at rank)."""
    return items[info.rank::info.world_size]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``t`` over ranks (returned; ``t`` itself unchanged on one process)."""
    if not info.distributed:
        return t
    out = t.clone()
    if dist.get_backend() == "nccl" and out.device.type != "cuda":
        out = out.cuda()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def launch(run: Callable, args, device_name: str = "auto"):
    """``run(args, device, info)`` on the device of ``device_name`` ("auto": CUDA when
    present), inside the torchrun process group when launched by torchrun (each process on
    its local GPU); the group is left however ``run`` ends. Returns what ``run`` returns."""
    from utils.runtime import resolve_device

    device = resolve_device(device_name)
    info = init_distributed(device.type)
    try:
        return run(args, local_device(info, device), info)
    finally:
        cleanup(info)
