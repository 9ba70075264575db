"""Clip- and video-level evaluation, exact under DDP (each video counted once, no padding).

Every video gives `clips x crops` views, batched through the model together. The
clip-level prediction is the view nearest the video's centre (centre clip, centre
crop); the video-level prediction averages the softmax of all views. Under DDP each
rank predicts its shard and the predictions are gathered on rank 0 only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from videoft.engine.distributed import broadcast_from_main, gather_to_main
from videoft.engine.metrics import compute_metrics
from videoft.progress import progress


@dataclass
class Predictions:
    """Per-video softmax of every view, gathered from all ranks, ordered by dataset index."""

    indices: list[int]
    labels: np.ndarray                 # [N]
    view_probs: np.ndarray             # [N, V, C]
    frame_indices: list                # per video: the clips' frame indices
    failures: list = field(default_factory=list)  # (path, reason) of undecodable videos, sorted by path
    centre_view: int = 0

    @property
    def clip_probs(self) -> np.ndarray:   # [N, C]
        return self.view_probs[:, self.centre_view]

    @property
    def video_probs(self) -> np.ndarray:  # [N, C]
        return self.view_probs.mean(axis=1)


def fuse_predictions(parts: list[Predictions]) -> Predictions:
    """Late fusion of several models' predictions of the same videos: the mean of their view probabilities
    (two-stream networks and TSN average softmax scores the same way), over the videos every model decoded;
    a video any model could not decode is listed as failed once, with the first reason given."""
    if len(parts) == 1:
        return parts[0]
    if len({p.view_probs.shape[1:] for p in parts}) != 1:
        raise ValueError(f"fusion needs the same views and classes from every model, got "
                         f"{[p.view_probs.shape[1:] for p in parts]}")
    common = set.intersection(*(set(p.indices) for p in parts))
    rows = [[k for k, i in enumerate(p.indices) if i in common] for p in parts]  # each ordered by index
    first, keep = parts[0], rows[0]
    reasons: dict[str, str] = {}
    for part in parts:
        for path, reason in part.failures:
            reasons.setdefault(path, reason)
    return Predictions(indices=[first.indices[k] for k in keep], labels=first.labels[keep],
                       view_probs=np.mean([p.view_probs[r] for p, r in zip(parts, rows)], axis=0),
                       frame_indices=[first.frame_indices[k] for k in keep], failures=sorted(reasons.items()),
                       centre_view=first.centre_view)


def centre_view_index(num_clips: int, num_crops: int) -> int:
    """Index of the centre clip's centre crop in the clip-major view order."""
    return (num_clips // 2) * num_crops + num_crops // 2


@torch.no_grad()
def predict_from_features(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor, indices: list[int], *,
                          centre_view: int, device: torch.device) -> Predictions:
    """Predictions of `head` on cached per-view features [N, V, D] (a frozen backbone's, in the views' order):
    what `predict` gives for the whole model, without decoding the videos again."""
    head.eval()
    n, v = features.shape[:2]
    logits = head(features.flatten(0, 1).to(device)).float().cpu().view(n, v, -1)
    return Predictions(indices=list(indices), labels=labels.numpy(), view_probs=logits.softmax(-1).numpy(),
                       frame_indices=[None] * n, centre_view=centre_view)


@torch.no_grad()
def forward_views(model: torch.nn.Module, video: torch.Tensor, *, device: torch.device,
                  amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                  chunk: int = 64) -> torch.Tensor:  # [B, V, C, T, H, W] -> [B, V, out] float on CPU
    """Every view of every video through `model`, all views of a batch together (in chunks)."""
    b, v = video.shape[:2]
    flat = video.flatten(0, 1).to(device, non_blocking=True)  # [B * V, C, T, H, W]
    if channels_last:
        flat = flat.contiguous(memory_format=torch.channels_last_3d)
    outs = []
    for part in flat.split(chunk):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outs.append(model(part).float().cpu())
    return torch.cat(outs).view(b, v, -1)


@torch.no_grad()
def predict(model: torch.nn.Module, loader, *, device: torch.device, num_clips: int, num_crops: int,
            amp_dtype: torch.dtype | None = None, channels_last: bool = False,
            show_progress: bool = True, desc: str = "eval", max_views_per_forward: int = 64) -> Predictions | None:
    """Run every view of every video in `loader` (sharded by rank); the predictions of all ranks
    on rank 0, None on the other ranks."""
    model.eval()
    part = _Shard()
    for batch in progress(loader, desc=desc, enabled=show_progress, unit="batch"):
        part.failures += batch["failures"]
        valid = batch["valid"]
        if not valid.any():
            continue
        probs = forward_views(model, batch["video"][valid], device=device, amp_dtype=amp_dtype,
                              channels_last=channels_last, chunk=max_views_per_forward).softmax(-1).numpy()
        rows = [i for i, ok in enumerate(valid.tolist()) if ok]
        part.add([int(batch["index"][r]) for r in rows], [int(batch["label"][r]) for r in rows], probs,
                 [batch["frame_indices"][r] for r in rows])
    return _gather_on_main(part, num_views=num_clips * num_crops, num_classes=_num_classes(model),
                           centre_view=centre_view_index(num_clips, num_crops))


@dataclass
class _Shard:
    """One rank's predictions (numpy arrays and plain lists: compact to send, no tensors), kept per batch
    and sent in slices, never stacked whole."""

    indices: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)  # per batch [b, V, C]
    frame_indices: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    def add(self, indices: list[int], labels: list[int], probs: np.ndarray, frame_indices: list) -> None:
        self.indices += indices
        self.labels += labels
        self.probs.append(probs)
        self.frame_indices += frame_indices

    def probs_rows(self, start: int, stop: int) -> np.ndarray | None:  # [stop - start, V, C]
        """Rows start..stop of this rank's view probabilities, copied out of the per-batch arrays."""
        if not self.probs:
            return None
        pieces, offset = [], 0
        for p in self.probs:
            lo, hi = max(start - offset, 0), min(stop - offset, len(p))
            if lo < hi:
                pieces.append(p[lo:hi])
            offset += len(p)
        return np.concatenate(pieces) if pieces else self.probs[0][:0]


def _gather_on_main(part: _Shard, *, num_views: int, num_classes: int, centre_view: int) -> Predictions | None:
    """Every rank's shard on rank 0, in dataset-index order; None on the other ranks.

    First the indices, labels and failures of every rank (small); rank 0 then allocates the
    [N, V, C] result once and receives the view probabilities in rounds of at most
    GATHER_ROUND_BYTES from all ranks together, so its peak is about the result plus one round.
    """
    meta = gather_to_main((np.asarray(part.indices, np.int64), np.asarray(part.labels, np.int64),
                           part.probs[0].shape[1:] if part.probs else None, part.failures))
    merged = None if meta is None else _Merged(meta, (num_views, num_classes), centre_view)
    per_round, rounds = broadcast_from_main(merged.plan(GATHER_ROUND_BYTES) if merged else None)
    for r in range(rounds):
        start, stop = r * per_round, (r + 1) * per_round
        parts = gather_to_main((part.probs_rows(start, stop), part.frame_indices[start:stop]))
        if merged is not None:
            merged.fill(parts, start=r * per_round)
    return merged.predictions() if merged is not None else None


GATHER_ROUND_BYTES = 64 * 2**20  # per round, all ranks together


class _Merged:
    """Rank 0's result being filled: positions of each rank's rows in dataset-index order."""

    def __init__(self, meta: list[tuple], default_shape: tuple[int, int], centre_view: int):
        self.rank_indices = [m[0] for m in meta]
        self.order = np.sort(np.concatenate(self.rank_indices))
        shape = next((tuple(m[2]) for m in meta if m[2] is not None), default_shape)
        self.view_probs = np.zeros((len(self.order), *shape), np.float32)  # [N, V, C]
        self.labels = np.empty(len(self.order), np.int64)
        for indices, labels, _, _ in meta:
            self.labels[np.searchsorted(self.order, indices)] = labels
        self.frame_indices: list = [None] * len(self.order)
        self.failures = sorted(f for m in meta for f in m[3])
        self.centre_view = centre_view

    def plan(self, round_bytes: int) -> tuple[int, int]:
        """(videos per rank per round, rounds) so that one round from all ranks stays under `round_bytes`."""
        row_bytes = self.view_probs[0].nbytes if len(self.order) else 1
        per_round = max(1, round_bytes // (len(self.rank_indices) * max(row_bytes, 1)))
        return per_round, max(-(-len(i) // per_round) for i in self.rank_indices)

    def fill(self, parts: list[tuple], *, start: int) -> None:
        for rank, (probs, frames) in enumerate(parts):
            pos = np.searchsorted(self.order, self.rank_indices[rank][start:start + len(frames)])
            if probs is not None and len(probs):
                self.view_probs[pos] = probs
            for p, f in zip(pos.tolist(), frames):
                self.frame_indices[p] = f

    def predictions(self) -> Predictions:
        return Predictions(indices=self.order.tolist(), labels=self.labels, view_probs=self.view_probs,
                           frame_indices=self.frame_indices, failures=self.failures, centre_view=self.centre_view)


def summarize(pred: Predictions, class_names: list[str], *, n_boot: int = 0) -> dict:
    """Clip- and video-level metrics of `pred` (bootstrap CIs when `n_boot` > 0)."""
    if len(pred.indices) == 0:
        nan = math.nan
        return {"num_videos": 0, "top1": nan, "mean_class_accuracy": nan, "video_top1": nan,
                "video_mean_class_accuracy": nan, "clip_level": None, "video_level": None}
    clip = compute_metrics(pred.clip_probs, pred.labels, class_names, n_boot=n_boot)
    video = compute_metrics(pred.video_probs, pred.labels, class_names, n_boot=n_boot)
    return {"num_videos": len(pred.indices), "top1": clip["top1"],
            "mean_class_accuracy": clip["mean_class_accuracy"], "video_top1": video["top1"],
            "video_mean_class_accuracy": video["mean_class_accuracy"],
            "clip_level": clip, "video_level": video}


def _num_classes(model: torch.nn.Module) -> int:
    raw = getattr(model, "module", model)
    head = getattr(raw, "head", None)
    last = head[-1] if isinstance(head, torch.nn.Sequential) else head
    return int(getattr(last, "out_features", 0))
