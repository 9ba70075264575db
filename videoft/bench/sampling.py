"""Clip sampling speed and worker memory: videoft's loaders against pytorchvideo and the decode lower bound.

Every contender runs in a DataLoader with the same workers and batch size over the same videos:
- videoft: build_train_loader / build_eval_loader (what tools/train.py uses);
- pytorchvideo 0.1.5 `LabeledVideoDataset` with its decord decoder, the same clip span (clip_len x
  stride frames, as seconds), the same short-side jitter, crop, flip and normalisation (torchvision v2:
  `pytorchvideo.transforms` does not import with this torchvision);
- the decode lower bound: for the same random clips, PyAV seeks to the keyframe before the first
  needed frame and decodes sequentially exactly up to the last one, converting only the needed
  frames (resized on conversion); no transforms. No loader that decodes can do less work.
"""
from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import av
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision.transforms import v2

from videoft.data.clip_indices import train_clip_indices
from videoft.data.dataset import VideoSample
from videoft.data.decode import probe, resized_shape
from videoft.data.loaders import build_eval_loader, build_train_loader
from videoft.data.transforms import Preprocessing


@dataclass(frozen=True)
class Setup:
    """What every contender samples: clip geometry, loader workers and batch."""

    clip_len: int = 16
    stride: int = 2
    short_side: int = 128
    crop: int = 112
    workers: int = 2
    batch: int = 8
    eval_clips: int = 10

    @property
    def pre(self) -> Preprocessing:
        return Preprocessing(self.clip_len, self.stride, self.crop, self.short_side, (0.45,) * 3, (0.225,) * 3)


def videoft_train(samples: Sequence[VideoSample], s: Setup, train_clips: int = 1) -> DataLoader:
    """As tools/train.py builds it (persistent workers: what a worker learns about a file, e.g. its header,
    serves the next epochs). train_clips > 1: that many clips per video from one decode, batch_size /
    train_clips videos a batch."""
    return build_train_loader(samples, s.pre, batch_size=max(1, s.batch // train_clips), num_workers=s.workers,
                              seed=0, persistent_workers=True, train_clips=train_clips)


def videoft_eval(samples: Sequence[VideoSample], s: Setup) -> DataLoader:
    return build_eval_loader(samples, s.pre, num_clips=s.eval_clips, batch_size=1, num_workers=s.workers)


class _PtvTransform:
    """pytorchvideo's clip dict -> the same preprocessing as videoft's (T frames kept uniformly, as
    pytorchvideo's UniformTemporalSubsample does)."""

    def __init__(self, s: Setup, train: bool):
        self.clip_len = s.clip_len
        steps = ([v2.RandomResize(s.short_side, int(s.short_side * 1.25) + 1, antialias=True), v2.RandomCrop(s.crop),
                  v2.RandomHorizontalFlip()] if train else
                 [v2.Resize(s.short_side, antialias=True), v2.CenterCrop(s.crop)])
        self.transform = v2.Compose([*steps, v2.Normalize([0.45] * 3, [0.225] * 3)])

    def __call__(self, item: dict) -> dict:
        video = item["video"]  # [C, T, H, W] float 0..255
        keep = torch.linspace(0, video.shape[1] - 1, self.clip_len).round().long()
        frames = video[:, keep].permute(1, 0, 2, 3) / 255.0  # [T, C, H, W]
        return {"video": self.transform(frames).permute(1, 0, 2, 3).contiguous(), "label": item["label"]}


def pytorchvideo_loader(samples: Sequence[VideoSample], s: Setup, *, train: bool) -> DataLoader:
    from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler

    fps = statistics.median(probe(x.path).fps for x in samples[:16])
    duration = s.clip_len * s.stride / fps
    sampler = make_clip_sampler("random", duration) if train else \
        make_clip_sampler("constant_clips_per_video", duration, s.eval_clips)
    dataset = LabeledVideoDataset([(x.path, {"label": x.label}) for x in samples], sampler,
                                  video_sampler=RandomSampler if train else SequentialSampler,
                                  transform=_PtvTransform(s, train), decode_audio=False, decoder="decord")
    return DataLoader(dataset, batch_size=s.batch if train else s.eval_clips, num_workers=s.workers)


class LowerBoundDataset(Dataset):
    """The same random clips as videoft's training loader, decoded with the least work (see module doc)."""

    def __init__(self, samples: Sequence[VideoSample], s: Setup):
        self.samples, self.s = list(samples), s
        self.headers = [probe(x.path) for x in self.samples]  # known beforehand: not part of the bound

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:  # [T, H, W, C] uint8
        header = self.headers[index]
        indices = train_clip_indices(header.num_frames, self.s.clip_len, self.s.stride,
                                     random.Random(f"0:0:{index}"))
        width, height = resized_shape(header.width, header.height, self.s.short_side)
        with av.open(self.samples[index].path) as container:
            stream = container.streams.video[0]
            got = _decode_from_keyframe(container, stream, indices, width, height)
        return torch.stack([torch.from_numpy(got[min(i, max(got))]) for i in indices])


def _decode_from_keyframe(container, stream, indices: list[int], width: int, height: int) -> dict:
    """Seek to the keyframe at or before min(indices), decode up to max(indices); from the start when the
    seek lands too late (AVI keyframe indexes by decode time)."""
    rate, base = stream.average_rate, stream.time_base
    start = stream.start_time or 0
    wanted, first, last = set(indices), min(indices), max(indices)
    for seek in (True, False):
        got, index = {}, -1
        if seek:
            container.seek(start + int(first / (rate * base)), stream=stream, backward=True, any_frame=False)
        else:
            container.seek(start, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            index = round((frame.pts - start) * base * rate) if seek and frame.pts is not None else index + 1
            if seek and not got and index > first:
                break  # landed after the first wanted frame: decode from the start instead
            if index in wanted:
                got[index] = frame.to_ndarray(format="rgb24", width=width, height=height)
            if index >= last:
                return got
        if got and index >= 0 and not seek:
            return got
    return got


def lower_bound_loader(samples: Sequence[VideoSample], s: Setup) -> DataLoader:
    return DataLoader(LowerBoundDataset(samples, s), batch_size=s.batch, shuffle=True, num_workers=s.workers,
                      collate_fn=torch.stack)


def clips_per_second(make_loader: Callable[[], DataLoader], repeats: int, *, clips_per_item: int = 1
                     ) -> dict[str, float]:
    """Median/min/max clips/s over `repeats` full passes (epochs) of one loader, each timed from its first
    batch (worker start-up, the same for every contender, left out); an untimed first pass warms the file
    cache (and a persistent worker's own caches, as a training run's first epoch does)."""
    rates = []
    loader = make_loader()
    for r in range(repeats + 1):
        _set_epoch(loader, r)
        start, clips = None, 0
        for batch in loader:
            if start is None:  # the first batch: workers are up
                start = time.perf_counter()
                continue
            clips += _batch_clips(batch) * clips_per_item
        if r and start is not None and clips:
            rates.append(clips / (time.perf_counter() - start))
    if not rates:
        raise ValueError("too few videos to time a pass: give at least two batches' worth")
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    """A new epoch's random clips, as the training loop asks for them (videoft's samplers only)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def _batch_clips(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    return len(batch["label"])


def worker_rss(make_loader: Callable[[], DataLoader], min_clips: int, *, clips_per_item: int = 1) -> dict[str, float]:
    """Peak memory (GB) of the loader's worker processes over at least `min_clips` clips, in passes of one
    loader (its workers live through them where the loader keeps them, as a training run's do): the peak
    RSS and the peak USS (private memory: what a worker adds; RSS also counts the pages it shares with the
    process that forked it), and the peak USS over the first and the last tenth of the clips (flat: last /
    first close to 1)."""
    samples: list[tuple[int, float, float]] = []
    clips, epoch = 0, 0
    loader = make_loader()
    while clips < min_clips:
        _set_epoch(loader, epoch)
        for batch in loader:
            clips += _batch_clips(batch) * clips_per_item
            samples.append((clips, *_children_memory_gb()))
        epoch += 1
    del loader
    tenth = max(1, len(samples) // 10)
    first = max(u for _, _, u in samples[:tenth])
    last = max(u for _, _, u in samples[-tenth:])
    return {"peak_gb": max(r for _, r, _ in samples), "peak_uss_gb": max(u for _, _, u in samples),
            "first_tenth_gb": first, "last_tenth_gb": last, "growth": last / first if first else float("nan"),
            "clips": clips}


def _children_memory_gb() -> tuple[float, float]:
    """The largest RSS and the largest USS among this process's child processes (the DataLoader workers), GB."""
    pid = os.getpid()
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return 0.0, 0.0
    rss = uss = 0
    for child in children:
        try:
            fields = dict(line.split(":", 1) for line in open(f"/proc/{child}/smaps_rollup") if ":" in line)
        except OSError:
            continue
        kb = {k: int(v.split()[0]) for k, v in fields.items() if v.strip().endswith("kB")}
        rss = max(rss, kb.get("Rss", 0))
        uss = max(uss, kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0))
    return rss / 1e6, uss / 1e6
