#!/usr/bin/env python
"""Run a checkpoint on video files: top-k labels per clip, or a timeline over a long video.

    python tools/infer.py runs/demo/best.pt clip.mp4 [more.mp4 ...] [--topk 5] [--json]
    python tools/infer.py runs/demo/best.pt match.mp4 --window 2 --stride 1 [--csv timeline.csv]
    python tools/infer.py runs/demo/best.pt match.mp4 --window 2 --annotations events.csv [--iou 0.5]
    python tools/infer.py runs/rgb/last.pt clip.mp4 --fuse runs/residual/last.pt   # two models, fused

With --annotations (an events table `video,label,start,end`), the timelines' merged segments are
scored against the annotated ones: per-class precision and recall at a temporal IoU threshold
(see tools/evaluate_timeline.py, which scores a saved timeline CSV the same way).

A file that is missing or cannot be decoded prints one line naming it and the reason; the
other files still run, and the exit code is 1.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from videoft.choices import DECODERS, EVAL_CROPS
from videoft.data.decode import VideoDecodeError
from videoft.errors import report_user_errors

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling tool, for --annotations
import evaluate_timeline  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--fuse", action="append", default=[], metavar="CHECKPOINT",
                   help="another checkpoint of the same classes (repeatable): every model runs on each video with "
                        "its own preprocessing and their probabilities are averaged (late fusion)")
    p.add_argument("videos", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--clips", type=int, default=None, help="clips averaged per prediction (default: the run's)")
    p.add_argument("--crops", type=int, choices=EVAL_CROPS, default=1)
    p.add_argument("--window", type=float, default=None, help="sliding window length in seconds (timeline mode)")
    p.add_argument("--stride", type=float, default=None, help="window hop in seconds (default: window / 2)")
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    p.add_argument("--csv", default=None, help="timeline mode: also write the windows to this CSV file")
    p.add_argument("--decoder", choices=DECODERS, default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--annotations", default=None, help="timeline mode: score the segments against this events "
                   "table (video,label,start,end)")
    evaluate_timeline.add_scoring_args(p)
    return p.parse_args(argv)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problems = [f"--{k} must be positive, got {v}" for k, v in
                (("window", args.window), ("stride", args.stride), ("topk", args.topk), ("clips", args.clips))
                if v is not None and v <= 0]
    if args.stride is not None and args.window is None:
        problems.append("--stride needs --window")
    if args.annotations is not None and args.window is None:
        problems.append("--annotations needs --window (it scores a timeline)")
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    from videoft.inference import FusedPredictor, Predictor, merge_segments

    options = {"device": args.device, "num_clips": args.clips, "num_crops": args.crops, "backend": args.decoder}
    predictor = (FusedPredictor.from_checkpoints([args.checkpoint, *args.fuse], **options) if args.fuse
                 else Predictor.from_checkpoint(args.checkpoint, **options))
    failed = 0
    csv_rows, timelines = [], {}
    for video in args.videos:
        try:
            if args.window:
                result = predictor.timeline(video, window=args.window, stride=args.stride or args.window / 2,
                                            topk=args.topk)
                csv_rows += [{"video": video, **{k: w[k] for k in ("start", "end", "label", "probability")}}
                             for w in result["windows"]]
                timelines[video] = merge_segments(result["windows"])
            else:
                result = predictor.predict(video, topk=args.topk)
        except VideoDecodeError as err:
            failed += 1
            msg = {"video": err.path, "error": err.reason}
            print(json.dumps(msg) if args.json else f"error: {err.path}: {err.reason}",
                  file=sys.stdout if args.json else sys.stderr)
            continue
        if args.json:
            print(json.dumps(result))
        elif args.window:
            print(f"{video} ({result['duration']:.1f} s): {len(result['windows'])} windows")
            for s in result["segments"]:
                print(f"  {s['start']:8.2f} - {s['end']:8.2f} s  {s['label']:<24} {s['probability']:.3f}")
        else:
            print(f"{video} ({result['duration']:.1f} s)")
            for label, prob in result["top"]:
                print(f"  {prob:6.3f}  {label}")
    if args.csv and csv_rows:
        write_windows_csv(args.csv, csv_rows)
    if args.annotations and timelines and score_timelines(args, timelines):
        return 2
    return 1 if failed else 0


def write_windows_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["video", "start", "end", "label", "probability"])
        writer.writeheader()
        writer.writerows(rows)


def score_timelines(args: argparse.Namespace, timelines: dict) -> int:
    """Print the timelines' per-class precision/recall against --annotations; 2 on a bad annotation file."""
    try:
        scores = evaluate_timeline.score(timelines, args.annotations, args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"timeline_scores": scores}))
    else:
        print()
        evaluate_timeline.print_scores(scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
