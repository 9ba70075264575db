"""Convert one video for fast training: resized to the training short side, stored so a random clip is cheap.

Formats (tools/prepare.py measures them against each other; see README "Performance"):
- `h264`: H.264 MP4, a keyframe every `gop` frames and no B-frames: a random clip decodes at most
  `gop - 1` frames it does not need;
- `mjpeg`: all-intra MJPEG AVI: every frame decodes on its own;
- `jpeg`: a frame folder of JPEGs (mmaction2's raw frames);
- `uint8`: a frame folder with every frame as raw uint8 (no decoding at all, the most disk).
Every frame of the source is kept, in decode order, at the source frame rate, so frame numbers and
times (and therefore segments' spans) mean the same in the prepared copy. The display rotation is
applied (the copy is upright). Writes go to a temporary name, are verified, then renamed.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from videoft.data.decode import VideoDecodeError, VideoReader, probe, resized_shape
from videoft.data.prepared import FRAMES_SUFFIX, META_NAME, jpeg_name

FORMATS = ("h264", "mjpeg", "jpeg", "uint8")
_SUFFIX = {"h264": ".mp4", "mjpeg": ".avi", "jpeg": FRAMES_SUFFIX, "uint8": FRAMES_SUFFIX}


@dataclass(frozen=True)
class PrepareParams:
    """How a dataset is prepared (stored in its manifest and in the checkpoints trained on it)."""

    format: str = "h264"
    short_side: int = 128     # the training short side (data.short_side): no resize left at training
    gop: int = 16             # h264: frames between keyframes
    quality: int = 90         # jpeg quality (mjpeg: mapped to its qscale); h264 uses crf 18 - (quality - 90) // 5

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {FORMATS}")
        if self.short_side < 16 or (self.format in ("h264", "mjpeg") and self.short_side % 2):
            raise ValueError(f"short_side {self.short_side} must be >= 16 (and even for {self.format}: 4:2:0 chroma)")
        if not 1 <= self.gop <= 300:
            raise ValueError(f"gop {self.gop} must be between 1 and 300 frames")
        if not 10 <= self.quality <= 100:
            raise ValueError(f"quality {self.quality} must be between 10 and 100")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_name(rel: str, fmt: str) -> str:
    """The prepared copy's relative name: same folder and stem, the format's suffix."""
    stem, _ = os.path.splitext(rel)
    return stem + _SUFFIX[fmt]


def _source_frames(path: str, short_side: int) -> tuple[Iterator[np.ndarray], Any]:
    """(frames as [H, W, 3] uint8 upright at `short_side`, in decode order; the source header)."""
    header = probe(path)
    rotation = header.rotation
    stored = (header.height, header.width) if rotation in (90, 270) else (header.width, header.height)
    width, height = resized_shape(*stored, short_side)

    def frames() -> Iterator[np.ndarray]:
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    array = frame.to_ndarray(format="rgb24", width=width, height=height)
                    yield np.ascontiguousarray(np.rot90(array, rotation // 90)) if rotation else array
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoDecodeError(path, f"decoding stopped ({str(exc).splitlines()[0][:120]})") from None
    return frames(), header


def _rate(fps: float) -> Fraction:
    """The frame rate as a fraction (29.97 -> 30000/1001), so frame times stay exact."""
    for den in (1, 1001, 100):
        num = round(fps * den)
        if abs(num / den - fps) < 1e-4:
            return Fraction(num, den)
    return Fraction(fps).limit_denominator(100000)


def _encode(frames: Iterator[np.ndarray], out: str, params: PrepareParams, fps: float) -> int:
    """Write the frames as a video file (h264 or mjpeg); returns the number of frames written."""
    count = 0
    with av.open(out, "w") as container:
        rate = _rate(fps)
        if params.format == "h264":
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            crf = max(0, 18 - (params.quality - 90) // 5)
            stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(params.gop),
                              "keyint_min": str(params.gop), "sc_threshold": "0", "bf": "0"}
        else:
            stream = container.add_stream("mjpeg", rate=rate)
            stream.pix_fmt = "yuvj420p"
            stream.codec_context.qmin = stream.codec_context.qmax = max(2, round((100 - params.quality) / 4))
        for array in frames:
            if count == 0:
                stream.height, stream.width = array.shape[:2]
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = count, 1 / rate
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode())
    return count


def _write_folder(frames: Iterator[np.ndarray], out: str, params: PrepareParams, fps: float) -> int:
    """Write the frames as a frame folder (JPEGs or one uint8 file) with its meta.json."""
    from PIL import Image

    os.makedirs(out)
    count, shape = 0, (0, 0)
    shard = open(os.path.join(out, "frames.u8"), "wb") if params.format == "uint8" else None
    try:
        for array in frames:
            shape = array.shape[:2]
            if shard is not None:
                shard.write(array.tobytes())
            else:
                Image.fromarray(array).save(os.path.join(out, jpeg_name(count)), quality=params.quality)
            count += 1
    finally:
        if shard is not None:
            shard.close()
    meta = {"format": params.format, "num_frames": count, "fps": fps, "width": shape[1], "height": shape[0]}
    Path(out, META_NAME).write_text(json.dumps(meta))
    return count


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def prepare_video(src: str, dst: str, params: PrepareParams) -> dict[str, Any]:
    """Convert `src` to `dst` (the format's suffix), verify it, and return its manifest entry's facts.

    Raises VideoDecodeError for a source that does not decode and ValueError when the copy does not
    verify (frame count, fps or size); nothing is left at `dst` then.
    """
    frames, header = _source_frames(src, params.short_side)
    tmp = f"{dst}.tmp{os.getpid()}{'' if dst.endswith(FRAMES_SUFFIX) else os.path.splitext(dst)[1]}"
    _remove(tmp)
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    try:
        writer = _write_folder if params.format in ("jpeg", "uint8") else _encode
        written = writer(frames, tmp, params, header.fps)
        if written == 0:
            raise VideoDecodeError(src, "no frame decodes")
        _remove(dst)
        os.replace(tmp, dst)
    finally:
        _remove(tmp)
    info = verify_output(dst, written, header.fps, params)
    return {"source_info": {"num_frames_header": header.num_frames, "num_frames": written, "fps": header.fps,
                            "width": header.width, "height": header.height, "rotation": header.rotation},
            "output_info": info, "bytes": disk_bytes(dst)}


def verify_output(path: str, frames: int, fps: float, params: PrepareParams) -> dict[str, Any]:
    """Open the prepared copy as training will and check its frame count, fps, size and last frame."""
    try:
        reader = VideoReader(path, backend="auto")
        info = reader.info
        reader.get_frames([0, info.num_frames - 1])
    except VideoDecodeError as err:
        _remove(path)
        raise ValueError(f"the prepared copy does not read back ({err.reason})") from None
    problems = []
    if info.num_frames != frames:
        problems.append(f"{info.num_frames} frames, {frames} written")
    if abs(info.fps - fps) > 1e-3 * fps:
        problems.append(f"{info.fps:.4f} fps, source {fps:.4f}")
    if min(info.width, info.height) != params.short_side:
        problems.append(f"size {info.width}x{info.height}, short side {params.short_side} wanted")
    if problems:
        _remove(path)
        raise ValueError("the prepared copy does not verify: " + "; ".join(problems))
    return {"num_frames": info.num_frames, "fps": info.fps, "width": info.width, "height": info.height,
            "decoder": reader.backend}


def disk_bytes(path: str) -> int:
    """Bytes on disk of a file, or of every file in a frame folder."""
    if os.path.isdir(path):
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    return os.path.getsize(path)
