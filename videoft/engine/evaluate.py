"""Clip- and video-level evaluation, exact under DDP (each video counted once, no padding).

Every video gives `clips x crops` views, batched through the model together. The
clip-level prediction is the view nearest the video's centre (centre clip, centre
crop); the video-level prediction averages the softmax of all views.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from videoft.engine.distributed import merge_from_ranks
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


def centre_view_index(num_clips: int, num_crops: int) -> int:
    """Index of the centre clip's centre crop in the clip-major view order."""
    return (num_clips // 2) * num_crops + num_crops // 2


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
            show_progress: bool = True, desc: str = "eval", max_views_per_forward: int = 64) -> Predictions:
    """Run every view of every video in `loader` (sharded by rank) and gather on all ranks."""
    model.eval()
    local: dict[int, tuple] = {}
    failures = []
    for batch in progress(loader, desc=desc, enabled=show_progress, unit="batch"):
        failures += batch["failures"]
        valid = batch["valid"]
        if not valid.any():
            continue
        probs = forward_views(model, batch["video"][valid], device=device, amp_dtype=amp_dtype,
                              channels_last=channels_last, chunk=max_views_per_forward).softmax(-1).numpy()
        rows = [i for i, ok in enumerate(valid.tolist()) if ok]
        for k, row in enumerate(rows):
            local[int(batch["index"][row])] = (int(batch["label"][row]), probs[k], batch["frame_indices"][row])
    merged, all_failures = merge_from_ranks(local, failures)
    order = sorted(merged)
    num_classes = _num_classes(model)
    return Predictions(
        indices=order,
        labels=np.array([merged[i][0] for i in order], dtype=np.int64),
        view_probs=np.stack([merged[i][1] for i in order]) if order
        else np.zeros((0, num_clips * num_crops, num_classes), np.float32),
        frame_indices=[merged[i][2] for i in order],
        failures=all_failures,
        centre_view=centre_view_index(num_clips, num_crops),
    )


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
