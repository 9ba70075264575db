#!/usr/bin/env python
"""Turn annotated events of long recordings into a videoft segment list (`path,label,start,end`).

    # an events table with spans (seconds or [hh:]mm:ss): video,label,start,end
    python datasets/events_to_list.py events.csv --out lists/events.csv

    # one timestamp per event (action spotting): video,label,time -> [time - 1, time + 2]
    python datasets/events_to_list.py spots.csv --window 1 2 --out lists/spots.csv

    # SoccerNet: one Labels-v2.json per game folder, halves 1_224p.mkv / 2_224p.mkv beside it
    python datasets/events_to_list.py --soccernet SoccerNet/*/*/*/Labels-v2.json --window 1 2 \\
        --labels Goal,Corner,Foul --background background --out lists/soccernet.csv

Then train and evaluate on the list like on any other (`data.root=lists/events.csv`): every row is
a segment, and all segments of one recording stay on one side of the split. `--background LABEL`
adds segments of `--background-length` seconds from the gaps between events (at least
`--background-margin` seconds away from any annotated event, also of classes left out by
`--labels`), so the model learns "nothing happening" and a
timeline can say so. Paths in the list are written relative to it.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from videoft.data.decode import VideoDecodeError, probe
from videoft.data.events import (
    Event,
    background_events,
    read_events_table,
    read_soccernet_labels,
    write_segment_list,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="*", type=Path, help="events tables (CSV with a header)")
    p.add_argument("--soccernet", nargs="+", type=Path, default=[], metavar="LABELS_JSON",
                   help="SoccerNet Labels-v2.json files (one per game folder)")
    p.add_argument("--video-pattern", default="{half}_224p.mkv",
                   help="SoccerNet: the half's video in the game folder (default: {half}_224p.mkv)")
    p.add_argument("--window", type=float, nargs=2, metavar=("BEFORE", "AFTER"), default=None,
                   help="events with a single time: the segment [time - BEFORE, time + AFTER] seconds")
    p.add_argument("--videos-root", type=Path, default=None,
                   help="relative video paths in the tables are under this folder (default: the table's folder)")
    p.add_argument("--labels", default=None, help="keep only these classes (comma-separated)")
    p.add_argument("--background", default=None, metavar="LABEL", help="add background segments with this label")
    p.add_argument("--background-length", type=float, default=2.0, help="seconds per background segment")
    p.add_argument("--background-margin", type=float, default=1.0, help="seconds kept clear around every event")
    p.add_argument("--background-per-video", type=int, default=None,
                   help="at most this many background segments per video (spread over it)")
    p.add_argument("--out", type=Path, required=True, help="the list file to write (CSV)")
    return p.parse_args(argv)


def read_all(args: argparse.Namespace) -> tuple[list[Event], list[Event]]:
    """(every annotated event, the events of the kept classes)."""
    events: list[Event] = []
    for table in args.tables:
        events += read_events_table(table, window=tuple(args.window) if args.window else None,
                                    videos_root=args.videos_root)
    if args.soccernet and not args.window:
        raise ValueError("--soccernet needs --window BEFORE AFTER (SoccerNet annotates one time per event)")
    for labels in args.soccernet:
        events += read_soccernet_labels(labels, window=tuple(args.window), video_pattern=args.video_pattern)
    if not args.labels:
        return events, events
    keep = {name.strip() for name in args.labels.split(",") if name.strip()}
    unknown = keep - {e.label for e in events}
    if unknown:
        print(f"warning: no events of {sorted(unknown)}", file=sys.stderr)
    return events, [e for e in events if e.label in keep]


def durations_of(videos: set[str]) -> dict[str, float]:
    """Each video's duration from its header; a missing or unreadable video is an error naming it."""
    out, problems = {}, []
    for video in sorted(videos):
        try:
            out[video] = probe(video).duration
        except VideoDecodeError as err:
            problems.append(f"{err.path}: {err.reason}")
    if problems:
        raise ValueError("background segments need each video's duration:\n  " + "\n  ".join(problems))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tables and not args.soccernet:
        print("error: give events tables and/or --soccernet Labels-v2.json files", file=sys.stderr)
        return 2
    try:
        annotated, events = read_all(args)
        if args.background:  # clear of every annotated event, also those of classes left out
            events += background_events(annotated, durations_of({e.video for e in annotated}), label=args.background,
                                        length=args.background_length, margin=args.background_margin,
                                        max_per_video=args.background_per_video)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not events:
        print("error: no events to write", file=sys.stderr)
        return 1
    n = write_segment_list(events, args.out)
    counts = Counter(e.label for e in events)
    print(f"{args.out}: {n} segments of {len({e.video for e in events})} recordings")
    for label, count in sorted(counts.items()):
        print(f"  {label:<24} {count:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
