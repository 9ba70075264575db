"""Clip sampling: pure functions from frame counts to frame indices."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from videoft.data.clip_indices import (
    clip_indices,
    clip_span,
    eval_clip_indices,
    eval_clip_starts,
    train_clip_indices,
    union_indices,
)


def test_clip_span():
    assert clip_span(16, 1) == 16
    assert clip_span(16, 4) == 61
    assert clip_span(1, 8) == 1


@pytest.mark.parametrize("clip_len,stride", [(0, 1), (4, 0), (-1, 2)])
def test_bad_geometry_is_value_error(clip_len, stride):
    with pytest.raises(ValueError):
        clip_span(clip_len, stride)
    with pytest.raises(ValueError):
        train_clip_indices(100, clip_len, stride, random.Random(0))


def test_clip_indices_need_frames():
    with pytest.raises(ValueError, match="num_frames"):
        clip_indices(0, 0, 4, 2)


@pytest.mark.parametrize("num_frames,clip_len,stride", [(100, 16, 2), (61, 16, 4), (16, 16, 1), (300, 8, 8)])
def test_train_clip_in_range_with_stride(num_frames, clip_len, stride):
    rng = random.Random(0)
    for _ in range(200):
        idx = train_clip_indices(num_frames, clip_len, stride, rng)
        assert len(idx) == clip_len
        assert 0 <= idx[0] and idx[-1] <= num_frames - 1
        assert all(b - a == stride for a, b in zip(idx, idx[1:]))  # no clamping: the clip fits


def test_train_clip_deterministic_for_seeded_rng():
    def draws(seed: int) -> list[list[int]]:
        rng = random.Random(seed)
        return [train_clip_indices(200, 8, 4, rng) for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert len({tuple(c) for c in draws(7)}) > 10  # successive draws move on


def test_train_clip_covers_every_start():
    num_frames, clip_len, stride = 40, 4, 3  # span 10: starts 0..30
    rng = random.Random(123)
    starts = Counter(train_clip_indices(num_frames, clip_len, stride, rng)[0] for _ in range(4000))
    assert set(starts) == set(range(num_frames - clip_span(clip_len, stride) + 1))
    assert min(starts.values()) > 4000 / 31 / 2  # roughly uniform, not just touched


def test_short_video_clamps_to_last_frame():
    # 10 frames, clip of 8 frames every 2 spans 15: start at 0, repeat the last frame
    rng = random.Random(0)
    for _ in range(20):
        assert train_clip_indices(10, 8, 2, rng) == [0, 2, 4, 6, 8, 9, 9, 9]
    assert train_clip_indices(1, 4, 1, rng) == [0, 0, 0, 0]
    assert eval_clip_indices(10, 8, 2, 3) == [[0, 2, 4, 6, 8, 9, 9, 9]] * 3


@pytest.mark.parametrize("num_frames,clip_len,stride,k", [(100, 8, 2, 5), (250, 16, 4, 10), (64, 16, 1, 2),
                                                           (37, 4, 3, 3)])
def test_eval_clips_cover_the_video_uniformly(num_frames, clip_len, stride, k):
    clips = eval_clip_indices(num_frames, clip_len, stride, k)
    assert len(clips) == k
    assert clips[0][0] == 0
    assert clips[-1][-1] == num_frames - 1
    for clip in clips:
        assert len(clip) == clip_len
        assert all(b - a == stride for a, b in zip(clip, clip[1:]))
    starts = eval_clip_starts(num_frames, clip_len, stride, k)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) - min(gaps) <= 1  # uniform up to rounding
    assert starts == sorted(starts)


@pytest.mark.parametrize("num_frames,expected_start", [(100, 42), (17, 1), (10, 0), (21, 3), (15, 0)])
def test_single_eval_clip_is_the_centre(num_frames, expected_start):
    # clip of 8 frames every 2 spans 15 frames
    (clip,) = eval_clip_indices(num_frames, 8, 2, 1)
    assert clip[0] == expected_start
    if num_frames >= 15:  # centred: as many frames before the clip as after (up to one)
        assert abs(clip[0] - (num_frames - 1 - clip[-1])) <= 1


def test_eval_needs_a_clip():
    with pytest.raises(ValueError, match="num_clips"):
        eval_clip_starts(100, 8, 2, 0)


def test_union_indices_reconstruct_each_clip():
    clips = eval_clip_indices(50, 8, 3, 4) + [[5, 5, 5, 49], [30, 2, 2, 17]]  # any order, repeats
    frames, positions = union_indices(clips)
    assert frames == sorted(set(frames)) == sorted({i for c in clips for i in c})
    for clip, pos in zip(clips, positions):
        assert [frames[p] for p in pos] == clip
    assert len(frames) < sum(len(c) for c in clips)  # overlapping clips share frames
