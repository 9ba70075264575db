"""torchrun environment -> DistInfo, and every collective the package makes.

One code path for 1 process or many: under torchrun (WORLD_SIZE set, even to 1) a process group
is created, gloo on CPU, NCCL on CUDA (device cuda:LOCAL_RANK); a plain `python tools/...` run
has no group and every helper below is the identity.

The rule for collectives (NCCL's rule, applied on every backend):

  Every tensor handed to torch.distributed lives on the process's collective device
  (`collective_device()`: cuda:LOCAL_RANK under NCCL, the CPU under gloo; the same as
  `DistInfo.device`). Nothing outside this module calls torch.distributed. The tensor helpers
  (`all_reduce_sum`, `average_buffers_`) move what they are given there themselves and hand the
  result back on the caller's device, so a caller may pass a CPU tensor on any backend. Python
  objects (predictions, failures, metrics) travel only through `gather_to_main` and
  `broadcast_from_main`: torch pickles them into bytes on the group's device, which
  `torch.cuda.set_device` and `init_process_group(device_id=...)` make this process's own GPU.
  Objects carry numpy arrays and plain Python, never CUDA tensors (a receiver would unpickle
  them onto the sender's GPU).

Why not a mixed backend ("cpu:gloo,cuda:nccl", which lets CPU tensors through): it opens a
second, TCP communicator beside NCCL that must also work on the cluster's network (a common
failure on multi-node jobs), and it would let a CPU-only code path pass tests that the GPU run
never takes. tests/engine/test_nccl_guard.py runs the real 2-process paths under a harness that
enforces this rule on CPU.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None = None      # the process group's backend; None: no group (plain python)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """A process group exists (torchrun, even with one process): DDP and collectives are used."""
        return self.backend is not None


def setup_distributed(device: str | None = None) -> DistInfo:
    """Read torchrun's RANK/LOCAL_RANK/WORLD_SIZE, pick the device, create the process group under torchrun."""
    under_torchrun = "WORLD_SIZE" in os.environ
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device in (None, "auto") else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)  # object collectives and NCCL use the current device
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = None
    if under_torchrun:
        if "MASTER_ADDR" not in os.environ:
            raise ValueError("WORLD_SIZE is set but MASTER_ADDR is not: launch several processes with torchrun "
                             "(or unset WORLD_SIZE for one process)")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30),
                                    **({"device_id": dev} if dev.type == "cuda" else {}))
        backend = dist.get_backend()
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, backend=backend)


def cleanup_distributed() -> None:
    if _group_exists():
        dist.destroy_process_group()


def _group_exists() -> bool:
    return dist.is_available() and dist.is_initialized()


def collective_device() -> torch.device:
    """Where tensors must be for a collective: this process's GPU under NCCL, else the CPU."""
    if _group_exists() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (on the device bound at init under NCCL)."""
    if _group_exists():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, returned on `tensor`'s device (the input is left untouched); a copy on one process."""
    if not _group_exists():
        return tensor.clone()
    work = tensor.to(collective_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def average_buffers_(buffers: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over ranks, in place, in one collective (float64 sums)."""
    if not _group_exists() or not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in buffers])
    mean = all_reduce_sum(flat) / dist.get_world_size()
    offset = 0
    for b in buffers:
        b.copy_(mean[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def gather_to_main(obj: T) -> list[T] | None:
    """`obj` of every rank, in rank order, on rank 0 only (None on the others); [obj] without a group.

    Results reach one rank, never every rank: at Kinetics scale an all-gather would put a full
    copy of every rank's predictions in the memory of each process.
    """
    if not _group_exists():
        return [obj]
    out: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: T) -> T:
    """Rank 0's `obj` on every rank (decisions taken on rank 0: metrics, early stopping)."""
    if not _group_exists():
        return obj
    box: list[Any] = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_bn_stats(model: torch.nn.Module) -> None:
    """Average BatchNorm running statistics over ranks (after precise BN on per-rank shards)."""
    buffers = [buf for m in model.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               for buf in (m.running_mean, m.running_var)]
    average_buffers_(buffers)
