"""Thumbnail strips of the frames a model saw: one small JPEG per video for the report's gallery.

The strip shows the centre frame of each evaluated clip (at most `max_frames`, spread over the
clips), side by side at a fixed height, so the page can embed one image per video.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence

import torch
from PIL import Image  # Pillow: a matplotlib dependency; torchvision's image codecs are deprecated

from videoft.data.decode import VideoReader

STRIP_HEIGHT = 64       # pixels: enough to see the scene and the pose, small enough for hundreds of strips
STRIP_MAX_FRAMES = 6
JPEG_QUALITY = 70
_GAP = 2                # white pixels between frames


def strip_frames(frame_indices: Sequence[Sequence[int]], max_frames: int = STRIP_MAX_FRAMES) -> list[int]:
    """The frames a strip shows: the centre frame of each clip, at most `max_frames` clips spread evenly."""
    clips = [list(c) for c in frame_indices if len(c)]
    if not clips:
        raise ValueError("no clips: a strip needs the frame indices the model saw")
    if len(clips) > max_frames:
        step = (len(clips) - 1) / (max_frames - 1) if max_frames > 1 else 0
        clips = [clips[int(round(k * step))] for k in range(max_frames)]
    return [c[len(c) // 2] for c in clips]


def read_strip(path: str | os.PathLike, frame_indices: Sequence[Sequence[int]], *, height: int = STRIP_HEIGHT,
               max_frames: int = STRIP_MAX_FRAMES, quality: int = JPEG_QUALITY,
               backend: str = "auto") -> tuple[bytes, list[int]]:
    """A JPEG strip of the centre frame of each clip of `path`, and the frame indices it shows.

    Raises VideoDecodeError (path and reason) when the video cannot be decoded.
    """
    frames_shown = strip_frames(frame_indices, max_frames)
    reader = VideoReader(path, short_side=height, backend=backend)
    frames = reader.get_frames(frames_shown)  # [N, h, w, 3] uint8
    images = frames.permute(0, 3, 1, 2)  # [N, 3, h, w]
    if images.shape[2] != height:  # portrait: the short side is the width; scale to the strip's height
        width = max(1, int(round(images.shape[3] * height / images.shape[2])))
        images = torch.nn.functional.interpolate(images.float(), size=(height, width), mode="bilinear",
                                                 antialias=True, align_corners=False).round().clamp(0, 255)
        images = images.to(torch.uint8)
    gap = torch.full((3, height, _GAP), 255, dtype=torch.uint8)
    strip = torch.cat([p for image in images for p in (image, gap)][:-1], dim=2)  # [3, height, W]
    buffer = io.BytesIO()
    Image.fromarray(strip.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), frames_shown
