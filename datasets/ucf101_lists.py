#!/usr/bin/env python
"""Write videoft list files (CSV path,label) from UCF101's official train/test split files.

    python datasets/ucf101_lists.py --videos UCF-101 --splits ucfTrainTestlist --split 1 --out ucf101_lists

UCF's trainlistNN.txt lines are `Class/v_Class_gXX_cYY.avi 1-based-index`, testlistNN.txt lines
have no label: the class is the folder name in both, which is what is written.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def convert(split_file: Path, videos: Path, out: Path) -> int:
    rows = []
    missing = []
    for line in split_file.read_text().splitlines():
        if not line.strip():
            continue
        rel = line.split()[0]
        path = videos / rel
        if not path.is_file():
            missing.append(rel)
        rows.append((str(path.resolve()), rel.split("/")[0]))
    if missing:
        print(f"warning: {len(missing)} videos listed in {split_file} are not under {videos} "
              f"(first: {missing[0]})", file=sys.stderr)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, required=True, help="the unpacked UCF-101 folder")
    p.add_argument("--splits", type=Path, required=True, help="the unpacked ucfTrainTestlist folder")
    p.add_argument("--split", type=int, choices=(1, 2, 3), default=1)
    p.add_argument("--out", type=Path, default=Path("ucf101_lists"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for kind in ("train", "test"):
        src = args.splits / f"{kind}list0{args.split}.txt"
        if not src.is_file():
            print(f"error: {src} does not exist", file=sys.stderr)
            return 2
        n = convert(src, args.videos, args.out / f"{kind}_split{args.split}.csv")
        print(f"{args.out / f'{kind}_split{args.split}.csv'}: {n} videos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
