"""Annotated events of long recordings -> segment list files (`path,label,start,end`).

Three inputs, as analysts hold them:
- an events table with spans: `video,label,start,end`;
- an events table with one timestamp per event, `video,label,time`, made into spans
  `[time - before, time + after]` (how action-spotting datasets annotate);
- SoccerNet-style `Labels-v2.json` files (`{"annotations": [{"gameTime": "1 - 05:32", "label": ...}]}`),
  one per game folder whose halves are `1_224p.mkv` and `2_224p.mkv`.

Optionally, background segments are cut from the gaps between events (a class for "nothing
happening", so that a timeline can say so). Only the standard library and videoft.data are used.
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from videoft.data.segments import parse_time

VIDEO_COLUMNS = ("video", "path", "file", "filename", "video_path")
LABEL_COLUMNS = ("label", "class", "class_name", "action", "event")
_GAME_TIME = re.compile(r"^\s*(\d+)\s*-\s*(\d+):(\d+(?:\.\d*)?)\s*$")


@dataclass(frozen=True)
class Event:
    """One annotated event: [start, end) seconds of `video`."""

    video: str
    label: str
    start: float
    end: float


def _column(header: list[str], names: Sequence[str]) -> int | None:
    """Index of the first of `names` in the header (case-insensitive), else None."""
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def read_events_table(path: str | Path, *, window: tuple[float, float] | None = None,
                      videos_root: str | Path | None = None) -> list[Event]:
    """Events from a CSV with a header: `video,label,start,end`, or `video,label,time` with `window`.

    Times are seconds or [hh:]mm:ss(.s); relative video paths are taken relative to `videos_root`
    (default: the table's folder). Every problem names the file and the line.
    """
    path = Path(path)
    base = Path(videos_root) if videos_root else path.parent
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty")
    header = rows[0]
    cols = {k: _column(header, names) for k, names in
            (("video", VIDEO_COLUMNS), ("label", LABEL_COLUMNS), ("start", ("start", "start_time", "t_start")),
             ("end", ("end", "end_time", "stop", "t_end")), ("time", ("time", "timestamp", "position", "t")))}
    if cols["video"] is None or cols["label"] is None:
        raise ValueError(f"{path}: the header needs a video column ({'/'.join(VIDEO_COLUMNS)}) and a label column "
                         f"({'/'.join(LABEL_COLUMNS)}); got {header}")
    spans = cols["start"] is not None and cols["end"] is not None
    if not spans and cols["time"] is None:
        raise ValueError(f"{path}: the header needs start,end columns or a time column; got {header}")
    if not spans and window is None:
        raise ValueError(f"{path}: events with a single time need a window (seconds before and after)")
    events = []
    for lineno, row in enumerate(rows[1:], 2):
        try:
            cells = {k: row[i].strip() for k, i in cols.items() if i is not None}
            if spans:
                start, end = _seconds(cells["start"]), _seconds(cells["end"])
            else:
                start, end = window_span(_seconds(cells["time"]), window)
            if not 0 <= start < end:
                raise ValueError(f"start {start:g} s must be >= 0 and before end {end:g} s")
        except (ValueError, IndexError) as err:
            raise ValueError(f"{path}:{lineno}: {err}") from None
        video = cells["video"] if os.path.isabs(cells["video"]) else str(base / cells["video"])
        events.append(Event(video, cells["label"], start, end))
    return events


def _seconds(text: str) -> float:
    value, in_frames = parse_time(text)
    if in_frames:
        raise ValueError(f"{text!r}: event tables take seconds or [hh:]mm:ss times, not frames")
    return value


def window_span(time: float, window: tuple[float, float]) -> tuple[float, float]:
    """[time - before, time + after] clipped at 0 (an event at the very start of a recording)."""
    before, after = window
    if before < 0 or after < 0 or before + after <= 0:
        raise ValueError(f"window {window}: seconds before and after the event, not negative, not both 0")
    return max(0.0, time - before), time + after


def parse_game_time(text: str) -> tuple[int, float]:
    """SoccerNet's 'HALF - MM:SS' -> (half, seconds into the half)."""
    m = _GAME_TIME.match(text)
    if not m:
        raise ValueError(f"gameTime {text!r} is not 'HALF - MM:SS'")
    return int(m.group(1)), int(m.group(2)) * 60 + float(m.group(3))


def read_soccernet_labels(path: str | Path, *, window: tuple[float, float],
                          video_pattern: str = "{half}_224p.mkv") -> list[Event]:
    """Events of one SoccerNet game (`Labels-v2.json` or `Labels.json`), windowed around each spot.

    The half's video is `video_pattern` in the game folder (the JSON's folder). The spot time is
    `position` (milliseconds) where present, else `gameTime`.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: no 'annotations' list (expected SoccerNet Labels-v2.json)")
    events = []
    for k, ann in enumerate(annotations):
        try:
            half, seconds = parse_game_time(str(ann["gameTime"]))
            if str(ann.get("position", "")).strip().lstrip("-").isdigit():
                seconds = int(ann["position"]) / 1000.0
            start, end = window_span(seconds, window)
            events.append(Event(str(path.parent / video_pattern.format(half=half)), str(ann["label"]), start, end))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: annotation {k}: {err}") from None
    return events


def background_events(events: Sequence[Event], durations: dict[str, float], *, label: str, length: float,
                      margin: float = 1.0, max_per_video: int | None = None) -> list[Event]:
    """Segments of `length` seconds from the gaps between events (at least `margin` away from any),
    labelled `label`: examples of "nothing happening" for the timeline. `durations`: video -> seconds."""
    if length <= 0:
        raise ValueError(f"background length must be positive seconds, got {length}")
    out = []
    by_video: dict[str, list[Event]] = {}
    for e in events:
        by_video.setdefault(e.video, []).append(e)
    for video in sorted(by_video):
        busy = sorted((e.start - margin, e.end + margin) for e in by_video[video])
        t, free = 0.0, []
        for start, end in busy + [(durations[video], durations[video])]:
            while t + length <= start:
                free.append(Event(video, label, round(t, 3), round(t + length, 3)))
                t += length
            t = max(t, end)
        if max_per_video is not None and len(free) > max_per_video:  # spread the kept ones over the video
            step = len(free) / max_per_video
            free = [free[int(i * step)] for i in range(max_per_video)]
        out += free
    return out


def write_segment_list(events: Iterable[Event], out: str | Path, *, relative: bool = True) -> int:
    """Write `path,label,start,end` rows (seconds); paths relative to the list's folder where possible,
    so the list and its videos can move together. Returns the number of rows."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(events, key=lambda e: (e.video, e.start, e.end, e.label))
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "start", "end"])
        for e in rows:
            video = e.video
            if relative:
                try:
                    video = os.path.relpath(e.video, out.parent.resolve())
                except ValueError:  # another drive (Windows)
                    pass
            writer.writerow([video, e.label, f"{e.start:.3f}", f"{e.end:.3f}"])
    return len(rows)
