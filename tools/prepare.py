#!/usr/bin/env python
"""Prepare a video dataset once for fast training: resized to the training short side, re-encoded.

    python tools/prepare.py SRC DST [--short-side 128] [--format h264] [--gop 16] [--workers K]
    python tools/train.py CONFIG data.root=DST          # then train on the copy: nothing else changes

SRC is a dataset folder (class folders, split folders, list files); DST gets the same relative
layout, each video converted (`--format`: h264 = short-GOP H.264, the default; mjpeg = all-intra;
jpeg = JPEG frame folders; uint8 = raw frame shards), list files rewritten to the new names, and
`prepared.json`, the manifest: parameters, and per video the source, the output and both probes.
Every copy is verified (frame count, fps, size) as it is written. Running it again skips what is
done and redoes what changed (source size/mtime or parameters). A video that fails is reported and
listed in the manifest; the others go on. Exit code 1 when any video failed.

--short-side is the short side training resizes to (data.short_side, or the backbone's default:
see the training log's "clips ..." line); preparing smaller than that throws detail away.
Frame numbers and times are unchanged, so segments' spans in list files stay valid.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from videoft.data.prepare import FORMATS, PrepareParams
from videoft.data.prepare_dataset import prepare_dataset
from videoft.errors import report_user_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="the dataset folder to prepare")
    p.add_argument("dst", help="where the prepared copy goes (created; may hold an earlier run's output)")
    p.add_argument("--short-side", type=int, default=128, help="short side in pixels (default 128)")
    p.add_argument("--format", choices=FORMATS, default="h264", help="storage format (default h264)")
    p.add_argument("--gop", type=int, default=16, help="h264: frames between keyframes (default 16)")
    p.add_argument("--quality", type=int, default=90, help="JPEG-style quality 10-100 (default 90)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        params = PrepareParams(format=args.format, short_side=args.short_side, gop=args.gop, quality=args.quality)
        summary = prepare_dataset(args.src, args.dst, params, workers=args.workers, show_progress=not args.quiet)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = len(summary.converted) + len(summary.skipped)
    print(f"prepared {total} videos into {args.dst} ({len(summary.converted)} converted, "
          f"{len(summary.skipped)} already done) in {summary.seconds:.1f} s; "
          f"{_size(summary.source_bytes)} -> {_size(summary.output_bytes)}")
    if summary.lists:
        print(f"list files rewritten: {', '.join(summary.lists)}")
    if summary.failed:
        print(f"{len(summary.failed)} videos failed (listed in {args.dst}/prepared.json under 'failed'):")
        for rel, reason in sorted(summary.failed.items()):
            print(f"  {rel}: {reason}")
        return 1
    print(f"train on it with: data.root={args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
