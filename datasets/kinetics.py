#!/usr/bin/env python
"""Kinetics-style annotation CSVs + the clips you already downloaded -> videoft list files per split.

    python datasets/kinetics.py --csv kinetics400/train.csv --csv kinetics400/validate.csv \\
        --videos /data/kinetics400 --out data/k400/lists [--classes my_sports_classes.txt]

The CSVs are the official `label,youtube_id,time_start,time_end,split` files (Kinetics-400/600/700);
downloading from YouTube is out of scope. A row's clip is found anywhere under --videos by the usual
file names: `<youtube_id>_<start:06d>_<end:06d>.<ext>` (the official downloader's), or
`<youtube_id>.<ext>`. Outputs: `<split>.csv` per split (train, val from `validate`, test), and
`missing_<split>.txt` listing rows without a clip (YouTube removals make a few percent usual).
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

from fetch import FetchError, read_class_list, write_list
from tqdm import tqdm

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}
SPLIT_NAMES = {"train": "train", "training": "train", "validate": "val", "val": "val", "validation": "val",
               "test": "test", "testing": "test"}
REQUIRED = ("label", "youtube_id", "time_start", "time_end", "split")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", type=Path, action="append", required=True, help="annotation CSV (repeatable)")
    p.add_argument("--videos", type=Path, required=True, help="folder holding the downloaded clips (any layout)")
    p.add_argument("--out", type=Path, required=True, help="folder for the list files")
    p.add_argument("--classes", type=Path, default=None, help="keep only the classes in this file (one per line)")
    return p.parse_args(argv)


def clip_names(youtube_id: str, start: str, end: str) -> list[str]:
    """File stems a downloaded clip is usually saved under."""
    return [f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}", youtube_id]


def index_videos(folder: Path) -> dict[str, Path]:
    """Stem -> file for every video under `folder`."""
    if not folder.is_dir():
        raise FetchError(f"{folder} is not a folder")
    out = {}
    for path in tqdm(folder.rglob("*"), desc="indexing clips", unit="file"):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            out.setdefault(path.stem, path)
    return out


def read_annotations(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise FetchError(f"{path}: missing columns {missing} (expected {','.join(REQUIRED)})")
        rows = list(reader)
    for lineno, row in enumerate(rows, 2):
        if row["split"] not in SPLIT_NAMES:
            raise FetchError(f"{path}:{lineno}: split {row['split']!r} is not one of {sorted(SPLIT_NAMES)}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows = [row for path in args.csv for row in read_annotations(path)]
        if args.classes:
            keep = set(read_class_list(args.classes))
            unknown = keep - {r["label"] for r in rows}
            if unknown:
                raise FetchError(f"{args.classes}: classes not in the CSVs: {sorted(unknown)[:5]}")
            rows = [r for r in rows if r["label"] in keep]
        index = index_videos(args.videos)
    except (FetchError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    by_split: dict[str, list[tuple[Path, str]]] = {}
    missing: dict[str, list[str]] = {}
    for row in rows:
        split = SPLIT_NAMES[row["split"]]
        names = clip_names(row["youtube_id"], row["time_start"], row["time_end"])
        path = next((index[n] for n in names if n in index), None)
        if path is None:
            missing.setdefault(split, []).append(names[0])
        else:
            by_split.setdefault(split, []).append((path, row["label"]))
    args.out.mkdir(parents=True, exist_ok=True)
    for split in sorted(set(by_split) | set(missing)):
        found = by_split.get(split, [])
        n = write_list(found, args.out / f"{split}.csv")
        gone = missing.get(split, [])
        (args.out / f"missing_{split}.txt").write_text("".join(f"{m}\n" for m in gone))
        classes = Counter(label for _, label in found)
        print(f"{args.out / f'{split}.csv'}: {n} clips, {len(classes)} classes; {len(gone)} of {n + len(gone)} "
              f"rows have no clip ({args.out / f'missing_{split}.txt'})")
    return 0 if by_split else 1


if __name__ == "__main__":
    sys.exit(main())
