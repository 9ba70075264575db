#!/usr/bin/env python
"""Generate long synthetic recordings with annotated events (the segment-list worked example).

    python tools/make_demo_recordings.py --out data/recordings [--train 16] [--test 4] [--events 30]

Writes `recordings/rec_NNN.mp4` (about 100 s each: events of the demo's motion classes separated by
1-3 s with no ball) and `events_train.csv` / `events_test.csv` (`video,label,start,end`, seconds).
Nothing is rewritten when the folder already holds recordings made with the same parameters.
"""
from __future__ import annotations

import argparse
import sys
import time

from videoft.data.synthetic_recordings import generate_recordings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/recordings")
    p.add_argument("--train", type=int, default=16, help="recordings annotated for training")
    p.add_argument("--test", type=int, default=4, help="recordings held out for testing")
    p.add_argument("--events", type=int, default=30, help="events per recording")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=80)
    p.add_argument("--height", type=int, default=60)
    args = p.parse_args(argv)
    start = time.time()
    out = generate_recordings(args.out, train=args.train, test=args.test, events_per_recording=args.events,
                              seed=args.seed, width=args.width, height=args.height)
    print(f"{out}: {args.train + args.test} recordings, events_train.csv and events_test.csv "
          f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
