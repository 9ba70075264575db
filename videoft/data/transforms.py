"""Train and eval presets on torchvision.transforms.v2 (one set of random parameters per clip).

Input: uint8 frames `[T, H, W, C]` as decoded. Output: uint8 `[C, T, H, W]` (three-crop eval gives
`[3, C, T, H, W]`). Normalisation with the backbone's mean/std is not done here but by the model
(`VideoClassifier.normalize`), on the device: a DataLoader worker then moves a quarter of the bytes
and spends no time on float arithmetic, and on a GPU the normalisation costs nothing.
pytorchvideo.transforms is never imported: it does not import with this torchvision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F


def _to_video(frames: torch.Tensor) -> tv_tensors.Video:  # [T, H, W, C] -> [T, C, H, W]
    return tv_tensors.Video(frames.permute(0, 3, 1, 2))


class TrainPreset:
    """Short-side scale jitter, random crop, optional horizontal flip.

    Args:
        crop_size: output height and width.
        scale_range: the short side is resized to a random size in this range (pixels),
            then a `crop_size` square is cropped at random.
        hflip: random horizontal flips (turn off when left/right carries the label).

    The crop is taken first, in source pixels (`crop_size / scale` square), and only it is resized:
    the same augmentation as resizing the whole frame and cropping after, with a fraction of the
    pixels to resize (the worker's largest cost once decoding is cheap: prepared datasets).
    """

    def __init__(self, *, crop_size: int, scale_range: tuple[int, int], hflip: bool = True):
        lo, hi = scale_range
        if lo < crop_size:
            raise ValueError(f"scale_range {scale_range} must not go below crop_size {crop_size}")
        self.crop_size, self.scale_range, self.hflip = crop_size, (lo, hi), hflip

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:  # [T, H, W, C] uint8 -> [C, T, h, w] uint8
        _, height, width, _ = frames.shape
        short = int(torch.randint(self.scale_range[0], self.scale_range[1] + 1, ()).item())
        window = min(height, width, max(1, round(self.crop_size * min(height, width) / short)))
        top = int(torch.randint(0, height - window + 1, ()).item())
        left = int(torch.randint(0, width - window + 1, ()).item())
        video = frames[:, top:top + window, left:left + window].permute(0, 3, 1, 2)  # [T, C, window, window]
        video = F.resize(video, [self.crop_size, self.crop_size], antialias=True)
        if self.hflip and torch.rand(()) < 0.5:
            video = video.flip(-1)
        return video.permute(1, 0, 2, 3).contiguous()


class EvalPreset:
    """Short-side resize, then a centre crop or three crops along the long side."""

    def __init__(self, *, crop_size: int, short_side: int, num_crops: int = 1):
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        if short_side < crop_size:
            raise ValueError(f"short_side {short_side} must be >= crop_size {crop_size}")
        self.crop_size, self.short_side, self.num_crops = crop_size, short_side, num_crops

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:  # [T, H, W, C] uint8 -> [crops, C, T, h, w] uint8
        video = _to_video(frames)
        video = F.resize(video, [self.short_side], antialias=True)
        crops = [F.center_crop(video, [self.crop_size, self.crop_size])] if self.num_crops == 1 \
            else self._three_crops(video)
        return torch.stack([crop.as_subclass(torch.Tensor).permute(1, 0, 2, 3) for crop in crops])

    def _three_crops(self, video: torch.Tensor) -> list[torch.Tensor]:
        """Start, centre and end crops along the long side (PySlowFast's 3-crop testing)."""
        h, w = video.shape[-2:]
        size = self.crop_size
        if w >= h:
            offsets = [(0, (h - size) // 2), ((w - size) // 2, (h - size) // 2), (w - size, (h - size) // 2)]
        else:
            offsets = [((w - size) // 2, 0), ((w - size) // 2, (h - size) // 2), ((w - size) // 2, h - size)]
        return [F.crop(video, top, left, size, size) for left, top in offsets]


def build_transform(train: bool, *, crop_size: int, short_side: int, hflip: bool = True, num_crops: int = 1,
                    scale_jitter: tuple[float, float] = (1.0, 1.25)):
    """The train or eval preset for a backbone's geometry.

    The training short side jitters between `scale_jitter` times `short_side`
    (never below the crop size).
    """
    if train:
        lo = max(crop_size, int(round(short_side * scale_jitter[0])))
        hi = max(lo, int(round(short_side * scale_jitter[1])))
        return TrainPreset(crop_size=crop_size, scale_range=(lo, hi), hflip=hflip)
    return EvalPreset(crop_size=crop_size, short_side=short_side, num_crops=num_crops)


@dataclass(frozen=True)
class Preprocessing:
    """How a model's clips are cut and normalised: fixed at training, stored in its checkpoints,
    and reused unchanged by evaluation and inference."""

    clip_len: int                       # frames per clip
    frame_stride: int                   # frames between sampled frames
    crop_size: int                      # square crop fed to the model (pixels)
    short_side: int                     # resize-on-decode short side (pixels)
    mean: tuple[float, float, float]    # normalisation on [0, 1] RGB (applied by the model: VideoClassifier)
    std: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {"clip_len": self.clip_len, "frame_stride": self.frame_stride, "crop_size": self.crop_size,
                "short_side": self.short_side, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(int(d["clip_len"]), int(d["frame_stride"]), int(d["crop_size"]), int(d["short_side"]),
                   tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))

    def train_transform(self, *, hflip: bool = True, scale_jitter: tuple[float, float] = (1.0, 1.25)) -> TrainPreset:
        return build_transform(True, crop_size=self.crop_size, short_side=self.short_side, hflip=hflip,
                               scale_jitter=scale_jitter)

    def eval_transform(self, num_crops: int = 1) -> EvalPreset:
        return build_transform(False, crop_size=self.crop_size, short_side=self.short_side, num_crops=num_crops)
