#!/usr/bin/env python
"""UCF101 in one command: the official archive and split files -> videoft list files for the three splits.

    python datasets/ucf101.py --out data/ucf101 --subset sports            # archives already in data/ucf101/
    python datasets/ucf101.py --out data/ucf101 --subset all --download    # fetch them first (resumable)
    python datasets/ucf101.py --out data/ucf101 --videos /data/UCF-101 --splits-dir /data/ucfTrainTestlist

    python tools/train.py configs/x3d_s_sports.yaml data.root=data/ucf101/lists/sports/train_split1.csv
    python tools/evaluate.py runs/x3d_s_sports/best.pt --data data/ucf101/lists/sports/test_split1.csv

Inputs: `UCF101.rar` (6.5 GB, 13,320 clips) and `UCF101TrainTestSplits-RecognitionTask.zip` from the UCF
CRCV site, looked for in --out unless given. Outputs under --out: `UCF-101/<Class>/*.avi` (extracted once),
`ucfTrainTestlist/`, and `lists/<subset>/{train,test}_split{1,2,3}.csv` + `classes.txt`.
The subset is `all` (101 classes), `sports` (datasets/ucf101_sports.txt: 50 classes, chosen by the rule
written at its top) or a file with one class name per line. The official splits keep each group
(`_gNN_`: same actor and place) on one side; videoft's validation split of a train list does too.
UCF publishes no checksums: the RAR's own per-file CRCs are checked while extracting (unar, unrar).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from fetch import FetchError, ensure_archive, extract, read_class_list, write_list

HERE = Path(__file__).resolve().parent
VIDEOS_URL = "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar"
SPLITS_URL = "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip"
SUBSETS = {"all": HERE / "ucf101_classes.txt", "sports": HERE / "ucf101_sports.txt"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="dataset folder (archives, extracted videos, lists)")
    p.add_argument("--archive", type=Path, default=None, help="UCF101.rar (default: OUT/UCF101.rar)")
    p.add_argument("--splits-archive", type=Path, default=None,
                   help="UCF101TrainTestSplits-RecognitionTask.zip (default: in OUT)")
    p.add_argument("--videos", type=Path, default=None, help="an already extracted UCF-101 folder (skips the RAR)")
    p.add_argument("--splits-dir", type=Path, default=None,
                   help="an already extracted ucfTrainTestlist folder (skips the zip)")
    p.add_argument("--subset", default="sports", help="all | sports | a file of class names (default: sports)")
    p.add_argument("--download", action="store_true", help="download missing archives (resumable)")
    return p.parse_args(argv)


def find_dir(root: Path, name: str) -> Path:
    """`root/name`, or the one folder called `name` below it (archives nest differently)."""
    if (root / name).is_dir():
        return root / name
    found = sorted(p for p in root.rglob(name) if p.is_dir())
    if not found:
        raise FetchError(f"no {name}/ folder under {root}")
    return found[0]


def read_split(path: Path) -> list[str]:
    """Relative paths `Class/v_Class_gXX_cYY.avi` of a trainlist/testlist file (labels, if any, ignored)."""
    if not path.is_file():
        raise FetchError(f"{path} does not exist: is this the RecognitionTask splits folder?")
    return [line.split()[0].replace("\\", "/") for line in path.read_text().splitlines() if line.strip()]


def resolve_videos(names: list[str], videos: Path) -> tuple[list[Path], list[str]]:
    """The files of `names` under `videos` (exact, else case-insensitive: the lists spell
    `HandStandPushups` where some copies have `HandstandPushups`), and the names not found."""
    by_lower = {p.relative_to(videos).as_posix().lower(): p for p in videos.rglob("*") if p.is_file()}
    found, missing = [], []
    for name in names:
        path = videos / name
        if not path.is_file():
            path = by_lower.get(name.lower())
        (found.append(path) if path else missing.append(name))
    return found, missing


def subset_classes(subset: str, splits: Path) -> list[str]:
    path = SUBSETS.get(subset, Path(subset))
    classes = read_class_list(path)
    known = {line.split()[1] for line in (splits / "classInd.txt").read_text().splitlines() if line.strip()} \
        if (splits / "classInd.txt").is_file() else set(read_class_list(SUBSETS["all"]))
    unknown = sorted(set(classes) - known)
    if unknown:
        raise FetchError(f"{path}: not UCF101 classes: {unknown}")
    return classes


def write_lists(videos: Path, splits: Path, classes: list[str], out: Path) -> None:
    """train/test lists of the three official splits, restricted to `classes`."""
    keep, present = set(classes), set()
    for k in (1, 2, 3):
        for kind in ("train", "test"):
            names = [n for n in read_split(splits / f"{kind}list0{k}.txt") if n.split("/")[0] in keep]
            found, missing = resolve_videos(names, videos)
            n = write_list(((p, p.parent.name) for p in found), out / f"{kind}_split{k}.csv")
            counts = Counter(p.parent.name for p in found)
            present |= set(counts)
            print(f"{out / f'{kind}_split{k}.csv'}: {n} videos, {len(counts)} classes"
                  + (f"; {len(missing)} listed but missing (first: {missing[0]})" if missing else ""))
    (out / "classes.txt").write_text("\n".join(sorted(present)) + "\n")
    if keep - present:
        print(f"warning: no videos of {len(keep - present)} class(es) of the subset: {sorted(keep - present)[:5]}",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        videos = args.videos
        if videos is None:
            archive = ensure_archive(args.archive or args.out / "UCF101.rar", VIDEOS_URL, md5=None,
                                     allow_download=args.download)
            videos = find_dir(extract(archive, args.out), "UCF-101")
        splits = args.splits_dir
        if splits is None:
            archive = ensure_archive(args.splits_archive or args.out / "UCF101TrainTestSplits-RecognitionTask.zip",
                                     SPLITS_URL, md5=None, allow_download=args.download)
            splits = find_dir(extract(archive, args.out), "ucfTrainTestlist")
        classes = subset_classes(args.subset, splits)
        name = args.subset if args.subset in SUBSETS else Path(args.subset).stem
        write_lists(videos, splits, classes, args.out / "lists" / name)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
