#!/usr/bin/env python
"""Score a predicted timeline against annotated events: per-class precision and recall of merged
segments at a temporal IoU threshold.

    python tools/infer.py runs/x/best.pt match.mp4 --window 2 --stride 1 --csv timeline.csv
    python tools/evaluate_timeline.py timeline.csv --annotations events.csv --iou 0.5 [--ignore background]

The timeline CSV is what `tools/infer.py --window ... --csv` writes (one row per window; windows
with the same label are merged into segments here, as infer.py prints them). Annotations are an
events table `video,label,start,end` (seconds or [hh:]mm:ss), or `video,label,time` with
`--event-window BEFORE AFTER`. Videos are matched by path, else by unique file name; only videos
present on both sides are scored (the others are listed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from videoft.data.events import read_events_table
from videoft.engine.timeline import (
    align_videos,
    evaluate_timeline,
    format_timeline_scores,
    read_timeline_csv,
    segments_by_video,
)


def add_scoring_args(p: argparse.ArgumentParser) -> None:
    """The options shared with tools/infer.py --annotations."""
    p.add_argument("--iou", type=float, default=0.5, help="temporal IoU a match needs (default 0.5)")
    p.add_argument("--ignore", action="append", default=[], metavar="LABEL",
                   help="a class left out on both sides, e.g. a background class (repeatable)")
    p.add_argument("--min-probability", type=float, default=0.0, help="drop predicted segments below this")
    p.add_argument("--event-window", type=float, nargs=2, metavar=("BEFORE", "AFTER"), default=None,
                   help="annotations with a single time column: the span [time - BEFORE, time + AFTER]")


def score(predicted: dict, annotations: str | Path, args: argparse.Namespace) -> dict:
    """Read the annotations and score `predicted` ({video: [Segment]}) against them."""
    annotated = segments_by_video(read_events_table(annotations, window=args.event_window,
                                                    videos_root=getattr(args, "videos_root", None)))
    return evaluate_timeline(align_videos(predicted, annotated), annotated, iou_threshold=args.iou,
                             ignore_labels=args.ignore, min_probability=args.min_probability)


def print_scores(result: dict, out=None) -> None:
    out = out or sys.stdout  # looked up at call time: callers may have redirected it
    print(format_timeline_scores(result), file=out)
    for kind, videos in result["unmatched_videos"].items():
        if videos:
            print(f"not scored ({kind.replace('_', ' ')}): {', '.join(videos)}", file=out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("timeline", help="timeline CSV written by tools/infer.py --window ... --csv")
    p.add_argument("--annotations", required=True, help="events table: video,label,start,end (or time)")
    p.add_argument("--videos-root", default=None, help="relative video paths in the annotations are under this "
                   "folder (default: the annotation file's folder)")
    p.add_argument("--json", default=None, help="also write the scores to this JSON file")
    add_scoring_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = score(read_timeline_csv(args.timeline), args.annotations, args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_scores(result)
    if not result["videos"]:
        print("error: no video is both in the timeline and in the annotations", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
