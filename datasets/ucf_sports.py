#!/usr/bin/env python
"""UCF Sports in one command: the official zip -> one video per sequence and videoft list files.

    python datasets/ucf_sports.py --out data/ucf_sports                 # ucf_sports_actions.zip in data/ucf_sports/
    python datasets/ucf_sports.py --out data/ucf_sports --download      # fetch it first (resumable)
    python datasets/ucf_sports.py --out data/ucf_sports --test-list lan_test.txt   # a published split

The archive holds 150 sequences, `ucf action/<View folder>/<NNN>/` with an .avi and/or its JPEG frames
(some sequences have only the frames). Each sequence becomes one video: its .avi when that decodes,
else its JPEGs encoded to `videos/<Folder>_<NNN>.mp4` at 10 fps (the dataset's rate). Labels are the
10 actions (Golf-Swing-Back/Front/Side -> Golf-Swing, Kicking-Front/Side -> Kicking, ...), or with
`--labels views` the 13 folders. UCF ships no train/test split: `lists/all.csv` holds everything,
and `lists/{train,test}.csv` a seeded split with `--test-fraction` of each class in test, or the
sequences named in `--test-list` (lines `Diving-Side/001`) for a published protocol.
"""
from __future__ import annotations

import argparse
import random
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from fetch import FetchError, ensure_archive, extract, write_list
from PIL import Image
from tqdm import tqdm

from videoft.data.decode import VideoDecodeError, probe

URL = "https://www.crcv.ucf.edu/data/ucf_sports_actions.zip"
FPS = 10
ACTIONS = {"Diving-Side": "Diving", "Golf-Swing-Back": "Golf-Swing", "Golf-Swing-Front": "Golf-Swing",
           "Golf-Swing-Side": "Golf-Swing", "Kicking-Front": "Kicking", "Kicking-Side": "Kicking",
           "Lifting": "Lifting", "Riding-Horse": "Riding-Horse", "Run-Side": "Running",
           "SkateBoarding-Front": "SkateBoarding", "Swing-Bench": "Swing-Bench", "Swing-SideAngle": "Swing-Side",
           "Walk-Front": "Walking"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="dataset folder (archive, videos, lists)")
    p.add_argument("--archive", type=Path, default=None, help="ucf_sports_actions.zip (default: in OUT)")
    p.add_argument("--download", action="store_true", help="download the archive if missing (resumable)")
    p.add_argument("--labels", choices=("actions", "views"), default="actions",
                   help="actions: the 10 actions (default); views: the 13 folders")
    p.add_argument("--test-fraction", type=float, default=1 / 3, help="share of each class in test (seeded)")
    p.add_argument("--test-list", type=Path, default=None, help="sequences for test, one 'Folder/NNN' per line")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def find_root(folder: Path) -> Path:
    """The folder that holds the view folders (Diving-Side, ...), wherever the zip put it."""
    for candidate in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        if (candidate / "Diving-Side").is_dir() or (candidate / "Walk-Front").is_dir():
            return candidate
    raise FetchError(f"no UCF Sports view folders (Diving-Side, ...) under {folder}")


def sequence_video(seq: Path, out: Path) -> Path:
    """The sequence's video: its .avi if it decodes, else its JPEG frames encoded once to `out`."""
    for avi in sorted(seq.glob("*.avi")):
        try:
            if probe(avi).num_frames > 0:
                return avi
        except VideoDecodeError:
            pass
    if out.is_file():
        return out
    frames = sorted(p for p in seq.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not frames:
        raise FetchError(f"{seq}: neither a readable .avi nor JPEG frames")
    encode_frames(frames, out)
    return out


def encode_frames(frames: list[Path], out: Path) -> None:
    """JPEG frames -> an H.264 mp4 at FPS (written to a temporary name, then renamed: never half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".part.mp4")
    first = np.asarray(Image.open(frames[0]).convert("RGB"))
    h, w = first.shape[0] // 2 * 2, first.shape[1] // 2 * 2  # yuv420p needs even sizes
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        for path in frames:
            image = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))[:h, :w])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(out)


def split(rows: list[tuple[Path, str, str]], args: argparse.Namespace) -> tuple[list, list]:
    """(train, test) rows: the --test-list sequences, else a seeded share of each class."""
    if args.test_list:
        wanted = {line.strip().strip("/") for line in args.test_list.read_text().splitlines() if line.strip()}
        unknown = wanted - {seq for _, _, seq in rows}
        if unknown:
            raise FetchError(f"{args.test_list}: not sequences of this archive: {sorted(unknown)[:5]}")
        return [r for r in rows if r[2] not in wanted], [r for r in rows if r[2] in wanted]
    test = set()
    for label in sorted({r[1] for r in rows}):
        members = sorted(r[2] for r in rows if r[1] == label)
        random.Random(f"{args.seed}:{label}").shuffle(members)
        test |= set(members[: int(round(args.test_fraction * len(members)))])
    return [r for r in rows if r[2] not in test], [r for r in rows if r[2] in test]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        archive = ensure_archive(args.archive or args.out / "ucf_sports_actions.zip", URL, md5=None,
                                 allow_download=args.download)
        root = find_root(extract(archive, args.out))
        sequences = sorted(p for p in root.glob("*/*") if p.is_dir() and p.parent.name in ACTIONS)
        rows = []
        for seq in tqdm(sequences, desc="sequences", unit="seq"):
            folder = seq.parent.name
            video = sequence_video(seq, args.out / "videos" / f"{folder}_{seq.name}.mp4")
            rows.append((video, ACTIONS[folder] if args.labels == "actions" else folder, f"{folder}/{seq.name}"))
        train, test = split(rows, args)
        lists = args.out / "lists"
        for name, part in (("all", rows), ("train", train), ("test", test)):
            n = write_list(((v, label) for v, label, _ in part), lists / f"{name}.csv")
            print(f"{lists / f'{name}.csv'}: {n} videos, {len({r[1] for r in part})} classes")
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
