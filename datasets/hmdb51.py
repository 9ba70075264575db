#!/usr/bin/env python
"""HMDB51 in one command: the official archives -> videoft list files for the three splits.

    python datasets/hmdb51.py --out data/hmdb51                 # archives already in data/hmdb51/
    python datasets/hmdb51.py --out data/hmdb51 --download      # fetch them first (resumable, MD5-checked)

    python tools/train.py configs/x3d_s_sports.yaml data.root=data/hmdb51/lists/train_split1.csv
    python tools/evaluate.py runs/x3d_s_sports/best.pt --data data/hmdb51/lists/test_split1.csv

Inputs: `hmdb51_org.rar` (2 GB: one RAR per class inside, 6,766 clips) and `test_train_splits.rar`
(`testTrainMulti_7030_splits/<class>_test_split<k>.txt`, lines `<video>.avi <tag>`: 1 train, 2 test,
0 unused). Outputs under --out: `videos/<class>/*.avi`, `testTrainMulti_7030_splits/`, and
`lists/{train,test}_split{1,2,3}.csv` + `classes.txt`. Each split has 70 train and 30 test clips per
class; the clips tagged 0 are in neither list.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from fetch import FetchError, ensure_archive, extract, write_list
from tqdm import tqdm

VIDEOS_URL = "https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar"
SPLITS_URL = "https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"
# As published with torchvision's and TensorFlow's HMDB51 readers (not checked here: no network).
VIDEOS_MD5 = "517d6f1f19f215c45cdd4d25356be1fb"
SPLITS_MD5 = "15e67781e70dcfbdce2d7dbb9b3344b5"
TAGS = {"1": "train", "2": "test"}  # 0: unused in that split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="dataset folder (archives, extracted videos, lists)")
    p.add_argument("--archive", type=Path, default=None, help="hmdb51_org.rar (default: OUT/hmdb51_org.rar)")
    p.add_argument("--splits-archive", type=Path, default=None, help="test_train_splits.rar (default: in OUT)")
    p.add_argument("--download", action="store_true", help="download missing archives (resumable)")
    return p.parse_args(argv)


def extract_videos(archive: Path, out: Path) -> Path:
    """The outer RAR holds one RAR per class; each is extracted once into out/videos/."""
    inner = extract(archive, out / "class_archives", desc=archive.name)
    rars = sorted(inner.rglob("*.rar"))
    if not rars:
        raise FetchError(f"{archive}: no per-class .rar inside; is it hmdb51_org.rar?")
    videos = out / "videos"
    for rar in tqdm(rars, desc="classes", unit="class"):
        extract(rar, videos, desc=rar.stem)
    return videos


def read_splits(folder: Path) -> dict[int, dict[str, list[tuple[str, str]]]]:
    """{split: {"train"|"test": [(class, video file name)]}} from the per-class split files."""
    files = sorted(folder.glob("*_test_split[123].txt"))
    if not files:
        raise FetchError(f"no <class>_test_split<k>.txt files in {folder}")
    out: dict[int, dict[str, list[tuple[str, str]]]] = {k: {"train": [], "test": []} for k in (1, 2, 3)}
    for path in files:
        cls, k = path.stem.rsplit("_test_split", 1)
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise FetchError(f"{path}:{lineno}: expected '<video>.avi 0|1|2', got {line!r}")
            if parts[1] in TAGS:
                out[int(k)][TAGS[parts[1]]].append((cls, parts[0]))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        splits_rar = ensure_archive(args.splits_archive or args.out / "test_train_splits.rar", SPLITS_URL,
                                    md5=SPLITS_MD5, allow_download=args.download)
        videos_rar = ensure_archive(args.archive or args.out / "hmdb51_org.rar", VIDEOS_URL, md5=VIDEOS_MD5,
                                    allow_download=args.download)
        split_dir = extract(splits_rar, args.out)
        found = sorted(p.parent for p in split_dir.rglob("*_test_split1.txt"))
        if not found:
            raise FetchError(f"{splits_rar}: no split files inside")
        splits = read_splits(found[0])
        videos = extract_videos(videos_rar, args.out)
        lists = args.out / "lists"
        classes = sorted({cls for part in splits[1].values() for cls, _ in part})
        lists.mkdir(parents=True, exist_ok=True)
        (lists / "classes.txt").write_text("\n".join(classes) + "\n")
        for k, kinds in splits.items():
            for kind, rows in kinds.items():
                present = [(videos / cls / name, cls) for cls, name in rows if (videos / cls / name).is_file()]
                missing = len(rows) - len(present)
                n = write_list(present, lists / f"{kind}_split{k}.csv")
                per_class = Counter(cls for _, cls in present)
                print(f"{lists / f'{kind}_split{k}.csv'}: {n} videos, {len(per_class)} classes"
                      + (f"; {missing} listed but missing" if missing else ""))
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
