"""DataLoaders for training and evaluation: one place that sets samplers, workers and batching.

Training, validation inside a run, `tools/evaluate.py` and the linear-probe feature cache all
build their loaders here, so every path decodes, samples and shards videos the same way.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from videoft.data.dataset import VideoClipDataset, VideoSample, collate
from videoft.data.heap import release_large_buffers
from videoft.data.samplers import ShardSampler, TrainSampler
from videoft.data.transforms import Preprocessing


def worker_nice_for(nice: int | None, device: torch.device) -> int:
    """The workers' nice level: as given, or 19 on the CPU and 0 on CUDA.

    On the CPU the training step's threads and the workers share the cores; a worker that preempts
    one of the step's threads stalls the others at the next parallel barrier. At nice 19 the
    workers take the cycles the step leaves (between batches, single-threaded parts) and the step
    keeps its cores: on 2 cores, S3D 8x64x64, end to end 22.0 -> 23.0 clips/s on raw AVIs and
    26.6 -> 31.5 on a prepared H.264 copy (README, Performance). On CUDA the training process mostly
    waits for the GPU, and the workers are the bound: they keep the default priority.
    """
    if nice is not None:
        return nice
    return 19 if device.type == "cpu" else 0


def _init_worker(nice: int, release_memory: bool, worker_id: int) -> None:
    """DataLoader worker set-up: its nice level (Unix; the decode watchdog's child, forked from the worker,
    inherits it) and, with `release_memory`, a heap that gives memory back (videoft/data/heap.py)."""
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)
    if release_memory:
        release_large_buffers()


def loader_options(num_workers: int, device: torch.device, *, persistent: bool = False,
                   prefetch_factor: int | None = None, start_method: str | None = None,
                   nice: int | None = None, release_memory: bool = False) -> dict[str, Any]:
    """DataLoader keyword arguments shared by every loader.

    Each loader has its own generator (seeded per epoch where it matters) so that iterating it
    never draws from the global torch RNG. On CUDA, workers are spawned (forking a process that
    already holds a CUDA context is unsafe) and batches are pinned for asynchronous copies.
    `persistent` keeps the workers alive from one pass to the next: a spawned worker re-imports
    torch, decord and pytorchvideo, seconds per worker per epoch. They still see each epoch, which
    travels with every index (TrainSampler's `(index, epoch)` keys); evaluation is deterministic.
    `nice`: the workers' nice level (see worker_nice_for; None: its default for `device`);
    `release_memory`: workers return large freed buffers to the system (see _init_worker).
    """
    options: dict[str, Any] = {"num_workers": num_workers, "collate_fn": collate,
                               "pin_memory": device.type == "cuda", "generator": torch.Generator()}
    if num_workers:
        options["multiprocessing_context"] = start_method or ("spawn" if device.type == "cuda" else None)
        options["persistent_workers"] = persistent
        options["prefetch_factor"] = prefetch_factor
        options["worker_init_fn"] = partial(_init_worker, worker_nice_for(nice, device), release_memory)
    return options


def build_train_loader(samples: Sequence[VideoSample], pre: Preprocessing, *, batch_size: int,
                       num_workers: int, seed: int, rank: int = 0, world_size: int = 1,
                       device: torch.device = torch.device("cpu"), backend: str = "auto",
                       hflip: bool = True, scale_jitter: tuple[float, float] = (1.0, 1.25),
                       balanced: bool = False, fixed_views: tuple[int, int] | None = None,
                       persistent_workers: bool = True, prefetch_factor: int | None = None,
                       start_method: str | None = None, decode_timeout: float | None = None,
                       worker_nice: int | None = None, train_clips: int = 1) -> DataLoader:
    """One random clip per video and epoch (epoch-seeded TrainSampler, sharded over ranks), or `train_clips` of
    them from one decode (batches [B, train_clips, C, T, H, W]).

    batch_size: per rank. fixed_views=(clips, crops): the deterministic evaluation views
    instead (linear probe: a frozen backbone's output for them never changes).
    start_method: "fork", "spawn" or "forkserver" for the workers (default: spawn on CUDA).
    decode_timeout: seconds before a video's decode is abandoned (None: no limit; see VideoClipDataset).
    """
    common = {"clip_len": pre.clip_len, "stride": pre.frame_stride, "short_side": pre.short_side,
              "backend": backend, "seed": seed, "decode_timeout": decode_timeout}
    if fixed_views is not None:
        clips, crops = fixed_views
        dataset = VideoClipDataset(samples, train=False, transform=pre.eval_transform(crops), num_clips=clips,
                                   **common)
    else:
        dataset = VideoClipDataset(samples, train=True, transform=pre.train_transform(
            hflip=hflip, scale_jitter=scale_jitter), train_clips=train_clips, **common)
    sampler = TrainSampler([s.label for s in samples], seed=seed, balanced=balanced, rank=rank,
                           world_size=world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **loader_options(
        num_workers, device, persistent=persistent_workers, prefetch_factor=prefetch_factor, start_method=start_method,
        nice=worker_nice, release_memory=True))


def build_eval_loader(samples: Sequence[VideoSample] | VideoClipDataset, pre: Preprocessing | None = None, *,
                      num_clips: int = 1, num_crops: int = 1, batch_size: int, num_workers: int,
                      rank: int = 0, world_size: int = 1, device: torch.device = torch.device("cpu"),
                      backend: str = "auto", seed: int = 0, persistent_workers: bool = False,
                      prefetch_factor: int | None = None, start_method: str | None = None,
                      decode_timeout: float | None = None, worker_nice: int | None = None) -> DataLoader:
    """Every view of every video, each video on exactly one rank (ShardSampler, no padding).

    `samples` may be an existing evaluation-mode dataset (the linear probe reshards its training
    views this way); `pre` and the view counts are then taken from it. persistent_workers: for a
    loader iterated again and again (validation every epoch), not for one pass.
    """
    if isinstance(samples, VideoClipDataset):
        dataset = samples
    else:
        assert pre is not None, "build_eval_loader needs the preprocessing to build a dataset"
        dataset = VideoClipDataset(samples, clip_len=pre.clip_len, stride=pre.frame_stride, train=False,
                                   transform=pre.eval_transform(num_crops), short_side=pre.short_side,
                                   num_clips=num_clips, backend=backend, seed=seed, decode_timeout=decode_timeout)
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      **loader_options(num_workers, device, persistent=persistent_workers,
                                       prefetch_factor=prefetch_factor, start_method=start_method, nice=worker_nice,
                                       release_memory=True))
