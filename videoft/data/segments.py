"""Segments of long recordings: span bounds in list files, the recording-level split, span checks.

A list-file row `path,label,start,end` is a segment of the recording `path`. Bounds are seconds
(`12.5`, `mm:ss.s`, `hh:mm:ss`) or frame indices with an `f` suffix (`300f`); the end is exclusive.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from videoft.data.clip_indices import Span
from videoft.data.decode import VideoDecodeError, probe

if TYPE_CHECKING:
    from videoft.data.dataset import VideoSample

_TIME = re.compile(r"^(?:(\d+):)?(?:(\d+):)?(\d+(?:\.\d*)?|\.\d+)$")
_FRAME = re.compile(r"^(\d+)f$", re.IGNORECASE)


def is_time(text: str) -> bool:
    """True when `text` reads as a span bound (seconds, timecode or `Nf` frames)."""
    return bool(_TIME.match(text) or _FRAME.match(text))


def split_whitespace_line(line: str) -> list[str]:
    """`path label` or `path label start end`; the path may contain spaces."""
    four = line.rsplit(None, 3)
    if len(four) == 4 and all(is_time(t) for t in four[2:]):
        return four
    return line.rsplit(None, 1)


def parse_time(text: str) -> tuple[float, bool]:
    """(value, in_frames) of a span bound: seconds `12.5`, `mm:ss.s`, `hh:mm:ss`, or frames `300f`."""
    text = text.strip()
    if m := _FRAME.match(text):
        return float(m.group(1)), True
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a time: use seconds (12.5), [hh:]mm:ss(.s) or frames with an 'f' (300f)")
    hours, minutes = (m.group(1), m.group(2)) if m.group(2) is not None else (None, m.group(1))
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(m.group(3)), False


def parse_span(start: str, end: str) -> Span:
    """A Span from two bounds given the same way (both seconds or both frames)."""
    (a, a_frames), (b, b_frames) = parse_time(start), parse_time(end)
    if a_frames != b_frames:
        raise ValueError(f"span {start}-{end}: give start and end both in seconds or both in frames ('f')")
    return Span(a, b, in_frames=a_frames)


def recording_split(samples: Sequence[VideoSample], fractions: dict[str, float], seed: int,
                    recording_of: Callable[[VideoSample], str]) -> dict[str, list[VideoSample]]:
    """Split segments so that every recording is on exactly one side, each split near its fraction per class.

    A recording holds segments of several classes, so groups cannot be dealt out class by class:
    recordings are shuffled (seeded) and each goes to the held-out split whose per-class targets
    it brings closer (squared error), else to train. Each held-out split gets at least one
    recording while more than one is left.
    """
    recordings: dict[str, list[VideoSample]] = {}
    for sample in samples:
        recordings.setdefault(recording_of(sample), []).append(sample)
    names = sorted(recordings)
    random.Random(f"{seed}:recordings").shuffle(names)
    totals = Counter(s.label for s in samples)
    have = {split: Counter() for split in fractions}
    out: dict[str, list[VideoSample]] = {"train": [], **{k: [] for k in fractions}}
    for k, name in enumerate(names):
        counts = Counter(s.label for s in recordings[name])
        empty = [split for split in fractions if not out[split]]
        if empty and len(names) - k > 1:
            side = empty[0]
        else:
            gains = {split: sum(n * (2 * (frac * totals[c] - have[split][c]) - n) for c, n in counts.items())
                     for split, frac in fractions.items()}
            side = max(gains, key=gains.get) if gains and max(gains.values()) > 0 else "train"
        out[side] += recordings[name]
        if side != "train":
            have[side].update(counts)
    key = lambda s: (s.path, s.span.start if s.span else 0.0)  # noqa: E731
    return {split: sorted(part, key=key) for split, part in out.items()}


def audit_spans(samples: Sequence[VideoSample]) -> list[str]:
    """Problems of segment spans against their recordings' durations (one header read per recording).

    A span that starts after the end of its video cannot be used (training skips it and
    reports it); one that ends after the end is clipped to the last frame.
    """
    problems, infos = [], {}
    for sample in samples:
        if sample.span is None:
            continue
        if sample.path not in infos:
            try:
                infos[sample.path] = probe(sample.path)
            except VideoDecodeError as err:
                infos[sample.path] = err
        info = infos[sample.path]
        if isinstance(info, VideoDecodeError):
            problems.append(f"{sample.describe()}: {info.reason}")
            continue
        span = sample.span
        end = span.end if span.in_frames else span.end * info.fps
        try:
            span.frame_range(info.fps, info.num_frames)
        except ValueError as err:
            problems.append(f"{sample.path}: {err}")
            continue
        if end > info.num_frames + 1e-6:
            length = f"{info.num_frames} frames" if span.in_frames else f"{info.duration:.2f} s"
            problems.append(f"{sample.describe()}: ends after the end of the video ({length}); clipped")
    return problems


