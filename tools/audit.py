#!/usr/bin/env python
"""Audit a video dataset: probe every file with the decoders training uses, before training on it.

    python tools/audit.py DATA [--clip-len 16 --stride 2] [--out DIR] [--workers K] [--full]

DATA is what `data.root` takes (class folder, split folders or a list file). Prints a per-class
table (videos, hours, too short for one clip, unreadable, needing the PyAV fallback, rotated) and
the quarantine list (files training cannot use, with the reason); writes audit.json, audit.csv
and quarantine.txt to --out. Probes run in parallel processes, each under a time limit (a file
that hangs the decoder is quarantined, not waited for), and are cached by file size and mtime:
a second audit only probes new or changed files. Exit code 1 when any file is quarantined.
`data.audit: true` in a training config runs the same audit first and leaves quarantined files out.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from videoft.choices import DECODERS
from videoft.data.audit import (
    AuditCache,
    AuditSettings,
    audit_videos,
    class_table,
    default_cache_path,
    format_class_table,
    quarantine,
    write_audit,
)
from videoft.data.clip_indices import clip_span
from videoft.data.dataset import load_splits
from videoft.errors import report_user_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="class folder, split folders, or a list file (what data.root takes)")
    p.add_argument("--clip-len", type=int, default=16, help="frames per clip (for 'too short'; default 16)")
    p.add_argument("--stride", type=int, default=2, help="frame stride of a clip (default 2)")
    p.add_argument("--short-side", type=int, default=128, help="decode at this short side, as training does")
    p.add_argument("--out", default=None, help="folder for audit.json/audit.csv/quarantine.txt "
                   "(default: runs/audit-<data folder name>)")
    p.add_argument("--workers", type=int, default=2, help="parallel probe processes (default 2)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per video before it is abandoned")
    p.add_argument("--full", action="store_true", help="decode every frame to count them (slower)")
    p.add_argument("--decoder", choices=DECODERS, default="auto", help="as data.decoder (default auto)")
    p.add_argument("--cache", default=None, help="cache file (default: under $XDG_CACHE_HOME or ~/.cache)")
    p.add_argument("--no-cache", action="store_true", help="probe every file again")
    p.add_argument("--show", type=int, default=30, help="quarantined files listed on screen (all in the files)")
    args = p.parse_args(argv)
    bad = [f"--{k.replace('_', '-')} must be >= 1, got {v}" for k, v in
           (("clip_len", args.clip_len), ("stride", args.stride), ("short_side", args.short_side),
            ("workers", args.workers)) if v < 1]
    if args.timeout <= 0:
        bad.append(f"--timeout must be > 0 seconds, got {args.timeout}")
    if bad:
        p.error("; ".join(bad))
    return args


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("videoft.data.decode").setLevel(logging.ERROR)  # the audit reports each file itself
    t0 = time.perf_counter()
    splits, classes = load_splits(args.data, val_fraction=0.0, test_fraction=0.0)
    items = [(s.path, classes[s.label], split) for split, samples in splits.items() for s in samples]
    settings = AuditSettings(short_side=args.short_side, full=args.full, timeout=args.timeout,
                             backend=args.decoder)
    cache = AuditCache(None if args.no_cache else (args.cache or default_cache_path(args.data)))
    cached = sum(cache.get(p, settings) is not None for p, _, _ in items)
    records = audit_videos(items, settings, workers=args.workers, cache=cache)
    cache.save()
    span = clip_span(args.clip_len, args.stride)
    out = Path(args.out) if args.out else Path("runs") / f"audit-{Path(args.data).resolve().name}"
    paths = write_audit(out, records, clip_span=span, settings=settings, root=str(args.data))
    print(f"\n{len(records)} videos in {args.data} ({len(records) - cached} probed, {cached} from the cache), "
          f"clip {args.clip_len}x{args.stride} = {span} frames, {time.perf_counter() - t0:.1f} s\n")
    print(format_class_table(class_table(records, span)))
    mismatched = [r for r in records if not r.quarantined and r.frames_claimed != r.frames_decodable]
    if mismatched:
        print(f"\n{len(mismatched)} video(s) whose header claims another frame count than decodes "
              f"(training uses the frames that decode), e.g. {mismatched[0].path}: "
              f"{mismatched[0].frames_claimed} claimed, {mismatched[0].frames_decodable} decode")
    bad = quarantine(records)
    print(f"\nquarantine: {len(bad)} file(s)" + (" (left out of training with data.audit=true)" if bad else ""))
    for r in bad[:args.show]:
        print(f"  {r.path}: {r.error}")
    if len(bad) > args.show:
        print(f"  ... {len(bad) - args.show} more in {paths['quarantine.txt']}")
    print(f"\nwrote {paths['audit.json']}, {paths['audit.csv']}, {paths['quarantine.txt']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
