#!/usr/bin/env python
"""Generate the synthetic demo dataset (bounce / roll / spin / throw) as H.264 mp4 files.

Thin CLI around ``videoft.data.synthetic.generate_dataset``; see that module for
what the classes look like and why. The output is deterministic for a given set
of parameters. If ``--out`` already holds a complete dataset (it has a
``.complete`` marker) with the requested parameters, nothing is rewritten unless
``--force`` is given; one made with other parameters (or an older generator) is replaced.

    python tools/make_demo_dataset.py [--out data/demo] [--train-per-class 150]
        [--val-per-class 12] [--test-per-class 12] [--seed 0]
        [--width 160] [--height 120] [--workers N] [--force]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Allow running from a source checkout without installing the package.
_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "videoft").is_dir() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from videoft.data.synthetic import (  # noqa: E402
    dataset_params,
    generate_dataset,
    read_marker,
)
from videoft.errors import report_user_errors  # noqa: E402


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Generate the synthetic sports-like demo video dataset (4 motion classes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="data/demo", help="output folder")
    # 150, not fewer: with ~40 videos a class a 3D CNN trained from scratch memorises
    # each video's random look (colours, background) instead of learning the motion.
    p.add_argument("--train-per-class", type=int, default=150, help="train videos per class")
    p.add_argument("--val-per-class", type=int, default=12, help="val videos per class")
    p.add_argument("--test-per-class", type=int, default=12, help="test videos per class")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--width", type=int, default=160, help="frame width (even)")
    p.add_argument("--height", type=int, default=120, help="frame height (even)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="parallel worker processes (output is identical for any value)",
    )
    p.add_argument("--force", action="store_true", help="regenerate even if a complete dataset exists")
    return p.parse_args(argv)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out = Path(args.out)
    counts = {"train": args.train_per_class, "val": args.val_per_class, "test": args.test_per_class}
    if any(c < 0 for c in counts.values()):
        print("error: per-class counts must be >= 0", file=sys.stderr)
        return 2
    if args.width % 2 or args.height % 2 or args.width < 16 or args.height < 16:
        print("error: --width and --height must be even and >= 16", file=sys.stderr)
        return 2
    wanted = dataset_params(counts, args.seed, args.width, args.height)

    existing = read_marker(out)
    regenerate = args.force
    if existing is not None and not args.force:
        if existing == wanted:
            print(f"Demo dataset already present at {out} (pass --force to regenerate).")
            return 0
        # Made by this generator with other parameters (or by an older version of it):
        # the files are derived data, so replace them with what was asked for.
        print(
            f"Demo dataset at {out} was generated with different parameters; regenerating.\n"
            f"  existing:  {existing}\n  requested: {wanted}"
        )
        regenerate = True
    if out.exists() and existing is None and not args.force:
        print(
            f"error: {out} exists but is not a complete demo dataset; pass --force to replace it",
            file=sys.stderr,
        )
        return 1

    total = 4 * sum(counts.values())
    print(f"Writing {total} videos to {out} ({args.width}x{args.height}, seed {args.seed}) ...")
    t0 = time.perf_counter()

    def progress(done: int, n: int) -> None:
        if done == n or done % 32 == 0:
            print(f"  {done}/{n} videos", flush=True)

    generate_dataset(
        out,
        per_split_counts=counts,
        seed=args.seed,
        width=args.width,
        height=args.height,
        overwrite=regenerate,
        workers=max(1, args.workers),
        progress=progress,
    )
    print(f"Done in {time.perf_counter() - t0:.1f} s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
