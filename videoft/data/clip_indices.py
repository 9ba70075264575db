"""Clip sampling: frame counts in, frame indices out. Pure functions with an explicit RNG.

A clip is `clip_len` frames taken every `stride` frames, so it spans
`(clip_len - 1) * stride + 1` frames of the video.

Short videos (fewer frames than one clip spans): the clip starts at frame 0 and
indices past the last frame are clamped to it (the last frame repeats). This keeps
the clip's time scale (the stride) the same for every video, which is what the
backbone was pretrained on; looping would instead splice the end onto the start.
"""
from __future__ import annotations

import random
from typing import Sequence


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


def train_clip_indices(num_frames: int, clip_len: int, stride: int, rng: random.Random) -> list[int]:
    """One clip at a uniformly random start (training)."""
    max_start = max(0, num_frames - clip_span(clip_len, stride))
    return clip_indices(rng.randint(0, max_start), num_frames, clip_len, stride)


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


def eval_clip_indices(num_frames: int, clip_len: int, stride: int, num_clips: int) -> list[list[int]]:
    """`num_clips` clips covering the whole video (evaluation); first to last frame included."""
    return [clip_indices(s, num_frames, clip_len, stride)
            for s in eval_clip_starts(num_frames, clip_len, stride, num_clips)]


def union_indices(clips: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Sorted unique frames of several clips, and each clip's positions in that list.

    Decoding the union once, in order, costs one pass instead of one seek per clip.
    """
    frames = sorted({i for clip in clips for i in clip})
    pos = {f: k for k, f in enumerate(frames)}
    return frames, [[pos[i] for i in clip] for clip in clips]


def _check(clip_len: int, stride: int) -> None:
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
