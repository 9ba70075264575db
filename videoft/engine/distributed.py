"""torchrun environment -> DistInfo; one code path for 1 process or many.

gloo on CPU, NCCL on CUDA (device from LOCAL_RANK). Without torchrun the world size is 1
and no process group is created.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> DistInfo:
    """Read torchrun's RANK/LOCAL_RANK/WORLD_SIZE, pick the device, init the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device in (None, "auto") else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place on a copy); identity on one process."""
    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj):
    """List of `obj` from every rank, in rank order; [obj] on one process."""
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def merge_from_ranks(local: dict, failures: list) -> tuple[dict, list]:
    """Each rank's {dataset index: result} and (path, reason) failures, merged over all ranks.

    Failures come back sorted by path: the same list whatever the number of ranks.
    """
    merged: dict = {}
    all_failures: list = []
    for part, fails in all_gather_objects((local, failures)):
        merged.update(part)
        all_failures += fails
    return merged, sorted(all_failures)


def sync_bn_stats(model: torch.nn.Module) -> None:
    """Average BatchNorm running statistics over ranks (after precise BN on per-rank shards)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(world)
