"""NCCL's device rule, enforced on CPU/gloo in a torchrun worker (installed by sitecustomize.py).

Under NCCL every tensor handed to a collective must be on the process's GPU: a host tensor raises
"No backend type associated with device type cpu". On a CPU machine the process's device and the
host are both "cpu", so the device string cannot tell them apart. The guard tracks *placement*
instead, the way a CUDA device propagates (a TorchFunctionMode sees every torch call):

- on the process device: a tensor made by a factory called with `device=...`, moved with
  `.to(device)` (also through `Module.to`), or computed from a tensor that is on it;
- on the host: every other tensor (created without a device, read from disk, received from a
  DataLoader), and what `.cpu()` returns.

Every torch.distributed collective called from outside torch is wrapped. A tensor on the host is
refused with the error NCCL would give. Collectives must be called from
videoft/engine/distributed.py (the one home of collectives), and object collectives must not carry
tensors on the process device (a receiver would unpickle them onto the sender's GPU). Each guarded
process writes what it checked and refused to <report_dir>/rank<R>-<pid>.json.
"""
from __future__ import annotations

import atexit
import functools
import io
import json
import os
import pickle
import sys
from collections import Counter

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

TENSOR_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                      "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "broadcast", "reduce", "gather",
                      "scatter", "send", "recv", "isend", "irecv")
OBJECT_COLLECTIVES = ("all_gather_object", "gather_object", "broadcast_object_list", "scatter_object_list",
                      "send_object_list", "recv_object_list")
BARRIERS = ("barrier", "monitored_barrier")
HOME = os.path.join("videoft", "engine", "distributed.py")
MARK = "_nccl_guard_on_device"


class NCCLRuleError(RuntimeError):
    """What NCCL would have raised (or silently got wrong) on a GPU."""


def on_device(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, MARK, False)


def mark(out):
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor):
            setattr(t, MARK, True)
    return out


def target_device(args, kwargs):
    """The device `Tensor.to(...)` was asked for ("host" for a host tensor's device), or None (dtype only)."""
    for a in (*args[1:], kwargs.get("device"), kwargs.get("other")):
        if isinstance(a, (str, torch.device)):
            return torch.device(a)
        if isinstance(a, torch.Tensor):
            return torch.device("cpu") if on_device(a) else "host"
    return None


class Placement(TorchFunctionMode):
    """Marks the tensors that are on the process's device, propagating the mark as CUDA propagates devices."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "cpu":  # to the host: a copy on a GPU, the same object on the CPU
            return out.view_as(out) if out is args[0] and on_device(out) else out
        if name == "to":
            where = target_device(args, kwargs)
            if where is None:
                return mark(out) if on_device(args[0]) else out
            if isinstance(where, str) or where.type != "cpu":  # "host", or a device this run does not have
                return out
            if out is args[0] and not on_device(out) and not isinstance(out, torch.nn.Parameter):
                out = out.view_as(out)  # a move makes a new tensor on a GPU: the source stays on the host
            return mark(out)
        if kwargs.get("device") is not None:  # a factory told where to put its result
            return mark(out) if torch.device(kwargs["device"]).type == "cpu" else out
        if any(on_device(t) for t in tree_flatten((args, kwargs))[0]):
            mark(out)
        return out


def caller() -> tuple[str, int, bool]:
    """(file, line, inside torch) of the innermost frame outside this file."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None:
        return "?", 0, False
    filename = frame.f_code.co_filename
    return filename, frame.f_lineno, f"{os.sep}torch{os.sep}" in filename


def device_tensors_inside(obj) -> int:
    """How many tensors on the process's device pickling `obj` would carry."""
    found = []

    class Scanner(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, torch.Tensor) and on_device(o):
                found.append(o)
            return NotImplemented

    Scanner(io.BytesIO()).dump(obj)
    return len(found)


def problems_of(name: str, args, kwargs, filename: str) -> list[str]:
    """What NCCL (or the project's rule) would object to in this call."""
    problems = []
    if not filename.endswith(HOME):
        problems.append(f"collectives belong in {HOME}")
    if name in TENSOR_COLLECTIVES:
        problems += [f"a {t.dtype} tensor of shape {list(t.shape)} is on the host, not on the process's device; "
                     "under NCCL this raises 'No backend type associated with device type cpu'"
                     for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and not on_device(t)]
    if name in OBJECT_COLLECTIVES and device_tensors_inside((args, kwargs)):
        problems.append("the object holds tensors on the process's device; every receiver would unpickle them "
                        "onto the sender's GPU")
    return problems


class Guard:
    """Wraps torch.distributed's collectives; counts what it checked, keeps what it refused."""

    def __init__(self, report_dir: str):
        self.report_dir = report_dir
        self.checked: Counter = Counter()
        self.violations: list[str] = []

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            filename, line, in_torch = caller()
            self.checked[name] += 1
            # torch's own internals (DDP, SyncBatchNorm) follow NCCL's rule themselves
            problems = [] if in_torch else problems_of(name, args, kwargs, filename)
            if problems:
                message = f"{name} called from {filename}:{line}: " + "; ".join(problems)
                self.violations.append(message)
                raise NCCLRuleError(f"NCCL guard: {message}")
            return fn(*args, **kwargs)

        return guarded

    def write_report(self) -> None:
        if not self.checked and not self.violations:
            return  # a DataLoader worker, or a process that never joined a group
        os.makedirs(self.report_dir, exist_ok=True)
        rank = int(os.environ.get("RANK", "0"))
        with open(os.path.join(self.report_dir, f"rank{rank}-{os.getpid()}.json"), "w") as f:
            json.dump({"rank": rank, "pid": os.getpid(), "argv": sys.argv, "checked": dict(self.checked),
                       "violations": self.violations}, f)


def install(report_dir: str) -> Guard:
    """Wrap every collective of torch.distributed and track placement for the life of the process."""
    guard = Guard(report_dir)
    for name in TENSOR_COLLECTIVES + OBJECT_COLLECTIVES + BARRIERS:
        if hasattr(dist, name):
            setattr(dist, name, guard.wrap(name, getattr(dist, name)))
    Placement().__enter__()  # never exited (this thread: the one that runs the training loop)
    atexit.register(guard.write_report)
    return guard
