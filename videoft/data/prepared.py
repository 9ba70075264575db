"""Reading a dataset written by tools/prepare.py: frame folders, and the manifest that describes the preparation.

A frame folder `<video>.frames/` stands in for a video file: `meta.json` (frame count, fps, size,
format) and either one JPEG per frame (`000000.jpg`, mmaction2's raw-frame layout) or every frame as
uint8 in one file (`frames.u8`, [N, H, W, 3], read through a memory map). Re-encoded videos
(short-GOP H.264, MJPEG) need no reader of their own: they are ordinary files for VideoReader.
The manifest `prepared.json` at the root of a prepared dataset says how it was made; a checkpoint
trained on it records that (videoft.checkpoint.RunCheckpoint.preparation).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

FRAMES_SUFFIX = ".frames"
META_NAME = "meta.json"
MANIFEST_NAME = "prepared.json"
MANIFEST_FORMAT = "videoft.prepared/1"
FRAME_FORMATS = ("jpeg", "uint8")


def resized_shape(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side scaled to `short_side`, aspect ratio kept: the one rule for decoding
    (decode.py, which reads prepared folders through this module) and for the frames a preparation stores.

    decord needs both sizes (given one, it does not keep the aspect ratio); the long side is
    rounded to an even number because some scalers misbehave on odd sizes.
    """
    if not short_side:
        return width, height
    long_side = max(2, int(round(max(width, height) * short_side / min(width, height) / 2)) * 2)
    # never below the short side: rounding to even would turn a square 33x33 into 33x32
    long_side = max(long_side, short_side)
    return (short_side, long_side) if width <= height else (long_side, short_side)


def is_frame_folder(path: str | os.PathLike) -> bool:
    """A `<name>.frames` folder holding a meta.json: a prepared video in frame form."""
    path = str(path)
    return path.rstrip("/").endswith(FRAMES_SUFFIX) and os.path.isfile(os.path.join(path, META_NAME))


def jpeg_name(index: int) -> str:
    return f"{index:06d}.jpg"


class FrameFolder:
    """The frames of a frame folder by index, resized to `short_side` when it differs from the stored size.

    Raises ValueError (with the reason) for a folder that cannot be read; VideoReader turns that
    into a VideoDecodeError naming the folder.
    """

    def __init__(self, path: str | os.PathLike, short_side: int | None = None):
        self.path = Path(path)
        try:
            meta = json.loads((self.path / META_NAME).read_text())
            self.format = meta["format"]
            self.num_frames, self.fps = int(meta["num_frames"]), float(meta["fps"])
            self.width, self.height = int(meta["width"]), int(meta["height"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable {META_NAME} ({exc})") from None
        if self.format not in FRAME_FORMATS:
            raise ValueError(f"{META_NAME} format {self.format!r} is not one of {FRAME_FORMATS}")
        if self.num_frames <= 0:
            raise ValueError("the frame folder has no frames")

        self.out_width, self.out_height = resized_shape(self.width, self.height, short_side)
        self._frames = None
        if self.format == "uint8":
            shard = self.path / "frames.u8"
            expected = self.num_frames * self.height * self.width * 3
            if not shard.is_file() or shard.stat().st_size != expected:
                raise ValueError(f"frames.u8 is missing or not {expected} bytes "
                                 f"({self.num_frames} frames of {self.width}x{self.height})")
            self._frames = np.memmap(shard, dtype=np.uint8, mode="r",
                                     shape=(self.num_frames, self.height, self.width, 3))

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:  # [T, H, W, C] uint8
        if self._frames is not None:
            frames = torch.from_numpy(np.ascontiguousarray(self._frames[list(indices)]))
        else:
            frames = self._jpegs(indices)
        if (self.out_width, self.out_height) != (self.width, self.height):
            x = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=(self.out_height,
                                                self.out_width), mode="bilinear", antialias=True, align_corners=False)
            frames = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return frames

    def _jpegs(self, indices: Sequence[int]) -> torch.Tensor:  # [T, H, W, C] uint8
        # Pillow (libjpeg-turbo) rather than torchvision.io, whose image codecs are deprecated
        from PIL import Image, UnidentifiedImageError

        decoded = {}
        for i in sorted(set(indices)):
            try:
                with Image.open(self.path / jpeg_name(i)) as image:
                    decoded[i] = np.asarray(image.convert("RGB"))
            except OSError as exc:  # FileNotFoundError, UnidentifiedImageError, truncated data
                why = "is not a JPEG" if isinstance(exc, UnidentifiedImageError) else f"({exc.strerror or exc})"
                raise ValueError(f"frame {i} cannot be read {why}") from None
        return torch.from_numpy(np.stack([decoded[i] for i in indices]))


def find_manifest(root: str | os.PathLike) -> Path | None:
    """The prepared.json of the dataset at `root` (a folder, a split folder, or a list file in one)."""
    root = Path(root)
    start = root.parent if root.is_file() else root
    for folder in (start, start.parent):  # data.root may be DST or a split folder/list file inside it
        if (folder / MANIFEST_NAME).is_file():
            return folder / MANIFEST_NAME
    return None


def read_preparation(root: str | os.PathLike) -> dict[str, Any]:
    """How the dataset at `root` was prepared (format, short side, GOP, quality, source), {} for raw files."""
    path = find_manifest(root)
    if path is None:
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if manifest.get("format") != MANIFEST_FORMAT:
        return {}
    return {**manifest.get("params", {}), "source": manifest.get("source", ""), "manifest": str(path)}
