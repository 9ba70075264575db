"""Clip sampling: frame counts in, frame indices out. Pure functions with an explicit RNG.

A clip is `clip_len` frames taken every `stride` frames, so it spans
`(clip_len - 1) * stride + 1` frames of the video.

Short videos (fewer frames than one clip spans): the clip starts at frame 0 and
indices past the last frame are clamped to it (the last frame repeats). This keeps
the clip's time scale (the stride) the same for every video, which is what the
backbone was pretrained on; looping would instead splice the end onto the start.

Segments of long recordings: a sample may be a span `[first, stop)` of a file's frames
(`Span.frame_range` turns seconds or frames into it). Training draws its clip inside the
span, evaluation spreads its clips over the span, and a span shorter than one clip repeats
its own last frame (never a frame after the span).
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

FrameRange = tuple[int, int]  # [first, stop) frame indices of a span


@dataclass(frozen=True)
class Span:
    """A segment of a video: [start, end) in seconds, or in frame indices when `in_frames`."""

    start: float
    end: float
    in_frames: bool = False

    def __post_init__(self):
        if not (self.start >= 0 and self.end > self.start):  # also rejects NaN
            raise ValueError(f"a span needs 0 <= start < end, got {self.describe()}")

    def describe(self) -> str:
        """'12.5-15 s' or '300-375 f' (for logs, reports and error messages)."""
        return f"{self.start:g}-{self.end:g} {'f' if self.in_frames else 's'}"

    def frame_range(self, fps: float, num_frames: int) -> FrameRange:
        """[first, stop) frame indices of the span in a video of `num_frames` frames at `fps`.

        Seconds map to the frames whose timestamps t / fps fall in [start, end); an end past the
        last frame is clipped to it (annotations often run to a nominal end), a start past it is
        a ValueError.
        """
        if self.in_frames:
            first, stop = int(self.start), int(math.ceil(self.end))
        else:
            if fps <= 0:
                raise ValueError(f"span {self.describe()}: the video's frame rate is unknown")
            # 1e-6 guards against 1.0 * 25 = 25.000000000000004 becoming frame 26
            first, stop = (int(math.ceil(t * fps - 1e-6)) for t in (self.start, self.end))
        if first >= num_frames:
            length = f"{num_frames} frames" if self.in_frames else f"{num_frames / fps:.2f} s"
            raise ValueError(f"span {self.describe()} starts after the end of the video ({length})")
        return first, max(first + 1, min(stop, num_frames))


def clip_span(clip_len: int, stride: int) -> int:
    """Number of video frames one clip covers."""
    _check(clip_len, stride)
    return (clip_len - 1) * stride + 1


def clip_indices(start: int, num_frames: int, clip_len: int, stride: int) -> list[int]:
    """The frame indices of the clip starting at `start`, clamped to the last frame."""
    _check(clip_len, stride)
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    return [min(start + i * stride, num_frames - 1) for i in range(clip_len)]


def train_clip_indices(num_frames: int, clip_len: int, stride: int, rng: random.Random,
                       span: FrameRange | None = None) -> list[int]:
    """One clip at a uniformly random start (training), inside `span` [first, stop) if given."""
    first, stop = _check_span(span, num_frames)
    max_start = max(0, stop - first - clip_span(clip_len, stride))
    return [first + i for i in clip_indices(rng.randint(0, max_start), stop - first, clip_len, stride)]


def eval_clip_starts(num_frames: int, clip_len: int, stride: int, num_clips: int) -> list[int]:
    """Start frames of `num_clips` clips spread uniformly over the whole video.

    The first clip starts at frame 0, the last one ends at the last frame, and the starts
    in between are evenly spaced (rounded to whole frames); a single clip is the centre clip.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    span = clip_span(clip_len, stride)
    max_start = max(0, num_frames - span)
    if num_clips == 1:
        return [max_start // 2]
    return [int(round(max_start * k / (num_clips - 1))) for k in range(num_clips)]


def eval_clip_indices(num_frames: int, clip_len: int, stride: int, num_clips: int,
                      span: FrameRange | None = None) -> list[list[int]]:
    """`num_clips` clips covering the whole video, or the whole `span` [first, stop) if given
    (evaluation); its first to last frame included."""
    first, stop = _check_span(span, num_frames)
    return [[first + i for i in clip_indices(s, stop - first, clip_len, stride)]
            for s in eval_clip_starts(stop - first, clip_len, stride, num_clips)]


def union_indices(clips: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Sorted unique frames of several clips, and each clip's positions in that list.

    Decoding the union once, in order, costs one pass instead of one seek per clip.
    """
    frames = sorted({i for clip in clips for i in clip})
    pos = {f: k for k, f in enumerate(frames)}
    return frames, [[pos[i] for i in clip] for clip in clips]


def _check_span(span: FrameRange | None, num_frames: int) -> FrameRange:
    if span is None:
        return 0, num_frames
    first, stop = span
    if not 0 <= first < stop <= num_frames:
        raise ValueError(f"frame span {span} is not inside the video's {num_frames} frames")
    return first, stop


def _check(clip_len: int, stride: int) -> None:
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
