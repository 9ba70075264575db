"""Run a trained checkpoint on new videos: whole-clip predictions and sliding-window timelines.

    from videoft.inference import Predictor
    predictor = Predictor.from_checkpoint("runs/demo/best.pt")
    predictor.predict("clip.mp4")            # {"top": [(label, prob), ...], ...}
    predictor.timeline("match.mp4", window=2.0, stride=1.0)

Everything comes from the checkpoint: backbone, clip geometry, normalisation, class names.
"""
from __future__ import annotations

from pathlib import Path

import torch

from videoft.checkpoint import RunCheckpoint, read_run_checkpoint
from videoft.data.clip_indices import clip_span, eval_clip_indices, union_indices
from videoft.data.dataset import decode_views, views_from_frames
from videoft.data.decode import VideoReader
from videoft.engine.timeline import Segment, merge_segments  # noqa: F401  (Segment: part of this API)
from videoft.errors import CheckpointError, UserError
from videoft.models.classifier import VideoClassifier, build_classifier


def resolve_device(name: str | torch.device | None) -> torch.device:
    """`name` as a torch.device (None or "auto": CUDA when there is one, else the CPU); a UserError for a
    name that is not a device or a device this machine does not have."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_model(path: str | Path, device: str | torch.device = "cpu", *, online: bool = False
               ) -> tuple[VideoClassifier, RunCheckpoint]:
    """The classifier of a videoft checkpoint (eval mode on `device`) and the checkpoint; CheckpointError in
    one line when `path` is not a videoft checkpoint or its weights do not fit. online: the trained weights
    of a train.ema_decay run (kept beside their average in its checkpoints) instead of the average."""
    ckpt = read_run_checkpoint(path)
    weights = ckpt.model
    if online:
        if ckpt.training is None or not ckpt.training.online_model:
            raise CheckpointError(f"{path}: holds no trained weights beside an average (only the checkpoints of a "
                                  "train.ema_decay run do)")
        weights = ckpt.training.online_model
    pre = ckpt.preprocessing
    model = build_classifier(ckpt.backbone, ckpt.num_classes, clip_len=pre.clip_len, crop_size=pre.crop_size,
                             pretrained=None, weights=None, dropout=ckpt.config.model.dropout,
                             feature_stage=ckpt.config.model.feature_stage, input_frames=ckpt.config.model.input)
    try:
        model.load_state_dict(weights)  # strict: a checkpoint that does not fit is an error
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit a {ckpt.backbone} classifier with "
                         f"{ckpt.num_classes} classes ({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), ckpt


class Predictor:
    """A checkpoint ready for inference with its own preprocessing.

    Args:
        num_clips: temporal clips averaged per prediction (spread over the whole clip or window).
        num_crops: 1 (centre) or 3 spatial crops per clip.
    """

    def __init__(self, model: VideoClassifier, ckpt: RunCheckpoint, *, device: str | torch.device = "cpu",
                 num_clips: int | None = None, num_crops: int = 1, backend: str = "auto"):
        self.model, self.device, self.backend = model, torch.device(device), backend
        self.classes: list[str] = list(ckpt.classes)
        pre = ckpt.preprocessing
        self.clip_len, self.stride, self.short_side = pre.clip_len, pre.frame_stride, pre.short_side
        self.num_clips = num_clips or ckpt.config.data.eval_clips
        self.num_crops = num_crops
        self.transform = pre.eval_transform(num_crops)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | torch.device | None = None, **kwargs) -> Predictor:
        device = resolve_device(device)
        model, ckpt = load_model(path, device)
        return cls(model, ckpt, device=device, **kwargs)

    @torch.no_grad()
    def _probs(self, views: torch.Tensor) -> torch.Tensor:  # [V, C, T, H, W] -> [num_classes]
        logits = torch.cat([self.model(chunk.to(self.device)) for chunk in views.split(32)])
        return logits.float().softmax(-1).mean(0).cpu()

    def predict(self, path: str | Path, topk: int = 5) -> dict:
        """Top-k labels of a whole clip: `num_clips` clips over its full length, softmax averaged."""
        reader = VideoReader(path, short_side=self.short_side, backend=self.backend)
        views, clips = decode_views(reader, clip_len=self.clip_len, stride=self.stride, num_clips=self.num_clips,
                                    transform=self.transform)
        probs = self._probs(views)
        return {"video": str(path), "duration": reader.info.duration, "num_frames": reader.info.num_frames,
                "top": self._top(probs, topk), "frame_indices": clips}

    def timeline(self, path: str | Path, *, window: float, stride: float, topk: int = 1,
                 clips_per_window: int = 1, windows_per_batch: int = 16) -> dict:
        """Predictions over sliding windows covering the whole video, and merged segments."""
        if window <= 0 or stride <= 0:
            raise ValueError(f"window and stride must be positive seconds, got {window}, {stride}")
        reader = VideoReader(path, short_side=self.short_side, backend=self.backend)
        n, fps = reader.info.num_frames, reader.info.fps
        win_frames = max(1, int(round(window * fps)))
        hop = max(1, int(round(stride * fps)))
        # every start from which a whole window fits (just 0 when the video is shorter than one)
        starts = list(range(0, max(0, n - win_frames) + 1, hop))
        if starts[-1] + win_frames < n:  # make the last window reach the end of the video
            starts.append(n - win_frames)
        windows = []
        for chunk in range(0, len(starts), windows_per_batch):
            group = starts[chunk:chunk + windows_per_batch]
            clip_sets = [[[s + i for i in c] for c in eval_clip_indices(
                min(win_frames, n - s), self.clip_len, self.stride, clips_per_window)] for s in group]
            needed, _ = union_indices([c for cs in clip_sets for c in cs])
            frames = reader.get_frames(needed)
            where = {f: k for k, f in enumerate(needed)}
            for s, clips in zip(group, clip_sets):
                probs = self._probs(views_from_frames(frames, [[where[i] for i in c] for c in clips],
                                                      self.transform))
                top = self._top(probs, topk)
                windows.append({"start": s / fps, "end": min(n, s + win_frames) / fps, "label": top[0][0],
                                "probability": top[0][1], "top": top})
        return {"video": str(path), "duration": n / fps, "window": window, "stride": stride,
                "windows": windows, "segments": [s.__dict__ for s in merge_segments(windows)],
                "min_window_span_frames": clip_span(self.clip_len, self.stride)}

    def _top(self, probs: torch.Tensor, k: int) -> list[tuple[str, float]]:
        values, idx = probs.topk(min(k, len(self.classes)))
        return [(self.classes[i], round(float(v), 6)) for v, i in zip(values.tolist(), idx.tolist())]
