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
from videoft.data.decode import VideoDecodeError, VideoReader
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

    def video_probs(self, path: str | Path) -> tuple[torch.Tensor, dict]:
        """A whole clip's class probabilities (`num_clips` clips over its full length, softmax averaged) and
        {duration, num_frames, frame_indices}."""
        reader = VideoReader(path, short_side=self.short_side, backend=self.backend)
        views, clips = decode_views(reader, clip_len=self.clip_len, stride=self.stride, num_clips=self.num_clips,
                                    transform=self.transform)
        return self._probs(views), {"duration": reader.info.duration, "num_frames": reader.info.num_frames,
                                    "frame_indices": clips}

    def predict(self, path: str | Path, topk: int = 5) -> dict:
        """Top-k labels of a whole clip: `num_clips` clips over its full length, softmax averaged."""
        probs, info = self.video_probs(path)
        return prediction(path, self.classes, probs, info, topk)

    def window_probs(self, path: str | Path, *, window: float, stride: float, clips_per_window: int = 1,
                     windows_per_batch: int = 16) -> tuple[list[tuple[float, float, torch.Tensor]], float]:
        """([(start s, end s, class probabilities)] of sliding windows covering the whole video, duration s)."""
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
        spans = []
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
                spans.append((s / fps, min(n, s + win_frames) / fps, probs))
        return spans, n / fps

    def timeline(self, path: str | Path, *, window: float, stride: float, topk: int = 1,
                 clips_per_window: int = 1, windows_per_batch: int = 16) -> dict:
        """Predictions over sliding windows covering the whole video, and merged segments."""
        spans, duration = self.window_probs(path, window=window, stride=stride, clips_per_window=clips_per_window,
                                            windows_per_batch=windows_per_batch)
        return timeline_result(path, self.classes, spans, duration, window=window, stride=stride, topk=topk,
                               min_span=clip_span(self.clip_len, self.stride))


class FusedPredictor:
    """Several checkpoints of the same classes as one predictor: each runs on the video with its own
    preprocessing and their probabilities are averaged (late fusion, as tools/evaluate.py scores several
    checkpoints). Same methods as Predictor."""

    def __init__(self, predictors: list[Predictor], names: list[str] | None = None):
        names = names or [f"model {k}" for k in range(len(predictors))]
        for other, name in zip(predictors[1:], names[1:]):
            if other.classes != predictors[0].classes:
                raise CheckpointError(f"{name}: its classes {other.classes} differ from {names[0]}'s "
                                      f"{predictors[0].classes}: only models of the same classes can be fused")
        self.predictors, self.classes = predictors, predictors[0].classes

    @classmethod
    def from_checkpoints(cls, paths: list[str | Path], **kwargs) -> FusedPredictor:
        return cls([Predictor.from_checkpoint(p, **kwargs) for p in paths], [str(p) for p in paths])

    def predict(self, path: str | Path, topk: int = 5) -> dict:
        parts = [p.video_probs(path) for p in self.predictors]
        return prediction(path, self.classes, torch.stack([probs for probs, _ in parts]).mean(0), parts[0][1], topk)

    def timeline(self, path: str | Path, *, window: float, stride: float, topk: int = 1, **kwargs) -> dict:
        each = [p.window_probs(path, window=window, stride=stride, **kwargs) for p in self.predictors]
        if len({len(spans) for spans, _ in each}) != 1:  # one file, one frame count: only a decoder could differ
            raise VideoDecodeError(str(path), "the fused models' decoders read different frame counts from it")
        spans = [(start, end, torch.stack([e[0][k][2] for e in each]).mean(0))
                 for k, (start, end, _) in enumerate(each[0][0])]  # same video and window: the same windows
        return timeline_result(path, self.classes, spans, each[0][1], window=window, stride=stride, topk=topk,
                               min_span=max(clip_span(p.clip_len, p.stride) for p in self.predictors))


def top_labels(classes: list[str], probs: torch.Tensor, k: int) -> list[tuple[str, float]]:
    values, idx = probs.topk(min(k, len(classes)))
    return [(classes[i], round(float(v), 6)) for v, i in zip(values.tolist(), idx.tolist())]


def prediction(path: str | Path, classes: list[str], probs: torch.Tensor, info: dict, topk: int) -> dict:
    return {"video": str(path), "duration": info["duration"], "num_frames": info["num_frames"],
            "top": top_labels(classes, probs, topk), "frame_indices": info["frame_indices"]}


def timeline_result(path: str | Path, classes: list[str], spans: list[tuple[float, float, torch.Tensor]],
                    duration: float, *, window: float, stride: float, topk: int, min_span: int) -> dict:
    """Predictor.timeline's result from the windows' probabilities: each window's top labels, merged segments."""
    windows = []
    for start, end, probs in spans:
        top = top_labels(classes, probs, topk)
        windows.append({"start": start, "end": end, "label": top[0][0], "probability": top[0][1], "top": top})
    return {"video": str(path), "duration": duration, "window": window, "stride": stride,
            "windows": windows, "segments": [s.__dict__ for s in merge_segments(windows)],
            "min_window_span_frames": min_span}
