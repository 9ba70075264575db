"""PyAV decoding seeks: a span near the end of a long file costs about what one near the start does,
and seeking never changes which frame is frame t (checked against decoding from the start)."""
from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.conftest import frame_value
from videoft.data.clip_indices import Span, eval_clip_indices
from videoft.data.decode import VideoReader

LONG_FPS, LONG_FRAMES, GOP = 10, 6000, 50  # 10 minutes


def _write(path: Path, num_frames: int, *, fps: int, codec: str, fmt: str, options: dict,
           pix_fmt: str = "yuv420p", pts: list[int] | None = None) -> Path:
    """A 32x24 video whose frame t is uniformly frame_value(t) (exact where the codec is lossless),
    with a 4x4 noise patch so that lossy encoders still code motion; `pts` in ms for a variable rate."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.pix_fmt, stream.options, stream.width, stream.height = pix_fmt, options, 32, 24
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for t in range(num_frames):
            image = np.full((24, 32, 3), frame_value(t), np.uint8)
            image[:4, :4] = rng.integers(0, 256, (4, 4, 3))
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[t], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """Ten minutes at 10 fps (6000 frames), lossless, a keyframe every 50 frames (about 0.2 s to write)."""
    return _write(tmp_path_factory.mktemp("long") / "match.mp4", LONG_FRAMES, fps=LONG_FPS, codec="libx264rgb",
                  fmt="mp4", options={"crf": "0", "preset": "ultrafast", "g": str(GOP)}, pix_fmt="rgb24")


def _decode_counted(path: Path, indices: list[int]) -> tuple[torch.Tensor, int]:
    reader = VideoReader(path, backend="pyav")
    frames = reader.get_frames(indices)
    return frames, reader.frames_decoded


def _values(frames: torch.Tensor) -> list[int]:  # [T, H, W, C] -> the value of each frame (outside the patch)
    return frames[:, 12, 16, 0].tolist()


def test_a_span_near_the_end_decodes_about_as_many_frames_as_near_the_start(long_video):
    clips = {}
    for name, span in {"start": Span(10.0, 16.0), "end": Span(590.0, 596.0)}.items():
        first, stop = span.frame_range(LONG_FPS, LONG_FRAMES)
        indices = [i for c in eval_clip_indices(LONG_FRAMES, 8, 2, 3, span=(first, stop)) for i in c]
        frames, decoded = _decode_counted(long_video, indices)
        assert _values(frames) == [frame_value(t) for t in indices]  # exact: frame t is frame t
        clips[name] = decoded
    # each decodes its 60-frame span plus at most one GOP before it (and the first frame, read once)
    assert clips["start"] <= 60 + GOP + 1 and clips["end"] <= 60 + GOP + 1, clips
    assert clips["end"] <= 2 * clips["start"], clips
    # decoding from the start would have cost the whole file up to the span
    _, from_start = _decode_counted(long_video, [0, 5959])
    assert from_start == 5960 and clips["end"] < from_start / 40


@pytest.mark.parametrize("codec,fmt,options", [
    ("libx264", "mp4", {"crf": "23", "preset": "fast", "g": "24", "bf": "3"}),  # B-frames, reordered pts
    ("mpeg4", "avi", {"g": "12", "bf": "2"}),  # AVI with B-frames: first pts is 1, keyframes indexed late
    ("libvpx-vp9", "webm", {"g": "16"}),
])
def test_seeking_gives_the_frames_decoding_from_the_start_gives(tmp_path, codec, fmt, options):
    path = _write(tmp_path / f"v.{fmt}", 400, fps=25, codec=codec, fmt=fmt, options=options)
    rng = random.Random(0)
    for _ in range(8):
        first = rng.randrange(1, 380)
        indices = sorted(rng.sample(range(first, 400), 6))
        reader = VideoReader(path, backend="pyav")
        sought = reader.get_frames(indices)
        seek_cost = reader.frames_decoded
        counted = VideoReader(path, backend="pyav")._pyav_decode(indices, seek=False)  # the definition of frame t
        assert torch.equal(sought, counted), (codec, indices)
        assert seek_cost <= max(indices) - min(indices) + 2 * 24 + 8, (codec, indices, seek_cost)  # it did seek


def test_variable_frame_rate_falls_back_to_counting_from_the_start(tmp_path):
    """Timestamps with gaps cannot number frames: the reader decodes from the start and counts."""
    pts = list(np.cumsum([0] + [40 if t % 7 else 120 for t in range(1, 300)]))  # every 7th frame 3x longer
    path = _write(tmp_path / "vfr.mp4", 300, fps=25, codec="libx264rgb", fmt="mp4",
                  options={"crf": "0", "preset": "ultrafast", "g": "10"}, pix_fmt="rgb24", pts=[int(p) for p in pts])
    reader = VideoReader(path, backend="pyav")
    indices = [250, 251, 260]
    frames = reader.get_frames(indices)
    assert _values(frames) == [frame_value(t) for t in indices]  # still the 250th, 251st, 260th frames
    assert reader.frames_decoded >= 261  # counted from the start
