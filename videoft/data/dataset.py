"""Map-style video dataset over a class folder or a list file, with group-aware splits.

Accepted inputs:
- `root/<class>/<video>`: one pool, split into train/val(/test) here, stratified by class,
  keeping UCF101-style groups (`_gNN_` in the name) on one side;
- `root/{train,val,test}/<class>/<video>`: the splits as given;
- a list file: CSV `path,label` (optional header) or mmaction2-style `path label` lines,
  the label being a class name or an integer index into `classes`. Optional `start,end`
  columns (`path,label,start,end`) make a row a segment of a long recording: seconds
  (`12.5`, `01:02.5`, `1:02:03`) or frame indices with an `f` suffix (`300f`), end exclusive.
  All segments of one recording stay on one side of a split.
"""
from __future__ import annotations

import csv
import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch
from torch.utils.data import Dataset, default_collate

from videoft.data.clip_indices import FrameRange, Span, eval_clip_indices, train_clip_indices, union_indices
from videoft.data.decode import VideoDecodeError, VideoReader
from videoft.data.heap import give_back_free_memory
from videoft.data.prepared import FRAMES_SUFFIX
from videoft.data.samplers import epoch_key
from videoft.data.segments import parse_span, recording_split, split_whitespace_line
from videoft.data.watchdog import GuardedReader, decode_process
from videoft.errors import DataError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
SPLIT_NAMES = ("train", "val", "test")
_GROUP = re.compile(r"_g(\d+)_", re.IGNORECASE)


@dataclass(frozen=True)
class VideoSample:
    """A labelled video file, or a segment of one (`span`) when it comes from a long recording."""

    path: str
    label: int
    span: Span | None = None

    def describe(self) -> str:
        """The path, with the span when it is a segment: 'match.mp4 [12.5-15 s]'."""
        return self.path if self.span is None else f"{self.path} [{self.span.describe()}]"

    def frame_range(self, reader: VideoReader) -> FrameRange | None:
        """The [first, stop) frames of the span in the open video (None: the whole file);
        a span outside the video is a VideoDecodeError naming the file and the span."""
        if self.span is None:
            return None
        try:
            return self.span.frame_range(reader.info.fps, reader.info.num_frames)
        except ValueError as err:
            raise VideoDecodeError(self.path, str(err)) from None


class Item(TypedDict):
    """One dataset item (VideoClipDataset, or cached features in engine.features)."""

    video: torch.Tensor | None    # train [C, T, H, W]; eval [V, C, T, H, W]; cached [V, D]; None: undecodable
    label: int
    index: int                    # dataset index of the video used (training may draw a replacement)
    valid: bool                   # False: an undecodable eval video (reason in `failures`)
    frame_indices: list | None    # eval: each clip's frame indices
    failures: list                # (path, reason) of the videos that failed to decode for this item


class Batch(TypedDict):
    """A collated batch of Items: what the training, evaluation and feature loops read."""

    video: torch.Tensor           # train [B, C, T, H, W]; eval [B, V, C, T, H, W]; cached [B, V, D]
    label: torch.Tensor           # [B] int64
    index: torch.Tensor           # [B] int64
    valid: torch.Tensor           # [B] bool
    frame_indices: list           # per item
    failures: list                # (path, reason) over the batch


def is_video(path: str | Path) -> bool:
    """A video file by its extension, or a prepared frame folder (`<name>.frames`, see data.prepared)."""
    return str(path).lower().endswith((*VIDEO_EXTENSIONS, FRAMES_SUFFIX))


def scan_class_folder(root: str | Path) -> list[tuple[str, str]]:
    """(path, class name) for every video under `root/<class>/` (sub-folders included)."""
    root = Path(root)
    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        found = []
        for dirpath, dirs, files in os.walk(class_dir):
            frame_folders = [d for d in dirs if d.endswith(FRAMES_SUFFIX)]
            dirs[:] = [d for d in dirs if not d.endswith(FRAMES_SUFFIX)]  # a frame folder is one video
            found.append((dirpath, sorted(f for f in [*files, *frame_folders] if is_video(f))))
        items += [(os.path.join(dirpath, f), class_dir.name) for dirpath, names in sorted(found) for f in names]
    if not items:
        raise DataError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {root}/<class>/",
                        remedy="data.root is a folder of class folders, split folders, or a list file")
    return items


ListRow = tuple[str, str, "Span | None"]  # (video path, label, span or None)


def read_list_file(path: str | Path, root: str | Path | None = None) -> list[ListRow]:
    """(path, label, span) rows from a CSV `path,label[,start,end]` or a whitespace `path label [start end]` list.

    Relative video paths are taken relative to `root`, or to the list file's folder. `span`
    is None for a whole file. In whitespace lists a line is a segment when it has at least four
    fields and the last two are times (paths may contain spaces).
    """
    path = Path(path)
    base = Path(root) if root else path.parent
    if is_video(path):
        raise DataError(f"{path} is a video, not a list file or a folder",
                        remedy="data.root is the folder that holds the class folders (or a CSV list of videos)")
    try:
        text = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as a list file ({exc})") from None
    rows: list[ListRow] = []
    is_csv = any("," in line for line in text[:5])
    lines = csv.reader(text) if is_csv else (split_whitespace_line(line) for line in text)
    for lineno, parts in enumerate(lines, 1):
        parts = [p.strip() for p in parts if p.strip()]
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) not in (2, 4):
            raise DataError(f"{path}:{lineno}: expected 'path,label[,start,end]' or 'path label [start end]', "
                            f"got {parts}")
        if lineno == 1 and is_csv and parts[1].lower() in ("label", "class", "class_name"):
            continue  # header
        video = parts[0] if os.path.isabs(parts[0]) else str(base / parts[0])
        try:
            span = parse_span(parts[2], parts[3]) if len(parts) == 4 else None
        except ValueError as err:
            raise DataError(f"{path}:{lineno}: {err}") from None
        rows.append((video, parts[1], span))
    if not rows:
        raise DataError(f"{path}: no entries")
    return rows


def group_of(path: str) -> str:
    """The group a clip belongs to: UCF101's `_gNN_`, else the file itself."""
    m = _GROUP.search(os.path.basename(path))
    return f"g{int(m.group(1))}" if m else os.path.basename(path)


def recording_of(sample: VideoSample) -> str:
    """The group of a segment: its recording (the file, or its UCF-style `_gNN_` group)."""
    return group_of(sample.path) if _GROUP.search(os.path.basename(sample.path)) else sample.path


def group_split(items: Sequence[VideoSample | tuple[str, int]], fractions: dict[str, float],
                seed: int) -> dict[str, list[VideoSample]]:
    """Stratified split by class that never puts one group on two sides.

    For each class, its groups are shuffled with a seed derived from (seed, class) and
    given to each held-out split until it holds its fraction of the class; the rest
    train. A class with a single group goes to train whole. Segments of long recordings
    (samples with a span) are split by recording instead, across classes: see recording_split.
    """
    samples = [s if isinstance(s, VideoSample) else VideoSample(*s) for s in items]
    if any(s.span is not None for s in samples):
        return recording_split(samples, fractions, seed, recording_of)
    out: dict[str, list[VideoSample]] = {"train": [], **{k: [] for k in fractions}}
    by_class: dict[int, dict[str, list[str]]] = {}
    for sample in samples:
        path, label = sample.path, sample.label
        by_class.setdefault(label, {}).setdefault(group_of(path), []).append(path)
    for label, groups in sorted(by_class.items()):
        names = sorted(groups)
        random.Random(f"{seed}:{label}").shuffle(names)
        total = sum(len(v) for v in groups.values())
        for split, frac in fractions.items():
            target = frac * total
            taken = 0
            # take whole groups while that brings the split closer to its target (at least one)
            while len(names) > 1 and (taken == 0 or taken + len(groups[names[0]]) / 2 <= target):
                g = names.pop(0)
                taken += len(groups[g])
                out[split] += [VideoSample(p, label) for p in sorted(groups[g])]
        for g in names:
            out["train"] += [VideoSample(p, label) for p in sorted(groups[g])]
    return out


def _index_labels(rows: Sequence[tuple], classes: list[str] | None, where: str) -> list[VideoSample]:
    """Samples from (path, label[, span]) rows, class-name or integer labels turned into indices of `classes`."""
    out = []
    for path, label, *span in rows:
        span = span[0] if span else None
        if label in (classes or []):
            out.append(VideoSample(path, classes.index(label), span))
        elif label.isdigit() and classes is not None and int(label) < len(classes):
            out.append(VideoSample(path, int(label), span))
        elif label.isdigit() and classes is None:
            out.append(VideoSample(path, int(label), span))
        else:
            raise DataError(f"{where}: label {label!r} of {path} is not a known class ({classes})")
    return out


def load_splits(root: str | Path, *, val_fraction: float = 0.2, test_fraction: float = 0.0,
                seed: int = 0, classes: list[str] | None = None) -> tuple[dict[str, list[VideoSample]], list[str]]:
    """Find the videos under `root` (folder or list file) and return ({split: samples}, classes).

    Class names are sorted; pass `classes` to reuse a checkpoint's order.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data root {root} does not exist")
    fractions = {k: v for k, v in (("val", val_fraction), ("test", test_fraction)) if v > 0}
    if root.is_file():
        rows = read_list_file(root)
        names = classes or sorted({row[1] for row in rows if not row[1].isdigit()}) or None
        items = _index_labels(rows, names, str(root))
        if names is None:
            names = [str(i) for i in range(max(s.label for s in items) + 1)]
        return group_split(items, fractions, seed), names
    present = [s for s in SPLIT_NAMES if (root / s).is_dir()]
    if "train" in present or ("val" in present or "test" in present):
        per_split = {s: scan_class_folder(root / s) for s in present}
        names = classes or sorted({c for rows in per_split.values() for _, c in rows})
        splits = {s: _index_labels(rows, names, str(root / s)) for s, rows in per_split.items()}
        if "train" in splits and "val" not in splits and val_fraction > 0:
            resplit = group_split(splits["train"], {"val": val_fraction}, seed)
            splits["train"], splits["val"] = resplit["train"], resplit["val"]
        return splits, names
    rows = scan_class_folder(root)
    names = classes or sorted({c for _, c in rows})
    return group_split(_index_labels(rows, names, str(root)), fractions, seed), names


def split_summary(splits: dict[str, list[VideoSample]], classes: Sequence[str]) -> str:
    """A per-class table of split sizes, for the run log."""
    cols = [s for s in SPLIT_NAMES if s in splits]
    segments = any(s.span is not None for part in splits.values() for s in part)
    width = max([len(c) for c in classes] + [10 if segments else 5])
    lines = [f"{'class':<{width}} " + " ".join(f"{c:>6}" for c in cols)]
    for i, name in enumerate(classes):
        lines.append(f"{name:<{width}} " + " ".join(f"{sum(s.label == i for s in splits[c]):>6}" for c in cols))
    lines.append(f"{'total':<{width}} " + " ".join(f"{len(splits[c]):>6}" for c in cols))
    if segments:
        lines.append(f"{'recordings':<{width}} "
                     + " ".join(f"{len({recording_of(s) for s in splits[c]}):>6}" for c in cols))
        lines.append("(segments of long recordings: all segments of one recording are on one side of the split)")
    return "\n".join(lines)


def views_from_frames(frames: torch.Tensor, positions: Sequence[Sequence[int]],
                      transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Each clip (its positions in `frames` [N, H, W, C]) transformed into 1 or 3 crops, clip-major:
    [clips * crops, C, T, H, W], written into one tensor as they are made."""
    return _gather_views((transform(frames[list(pos)]) for pos in positions), len(positions))


def _gather_views(views_per_clip: Iterable[torch.Tensor], num_clips: int) -> torch.Tensor:
    """Each clip's views [crops, C, T, h, w], as they come, written into one [clips * crops, ...] tensor."""
    views = None
    for k, view in enumerate(views_per_clip):
        if views is None:
            views = view.new_empty((num_clips * len(view), *view.shape[1:]))
        views[k * len(view):(k + 1) * len(view)] = view
    return views


def decode_views(reader: VideoReader, *, clip_len: int, stride: int, num_clips: int,
                 transform: Callable[[torch.Tensor], torch.Tensor],
                 span: FrameRange | None = None) -> tuple[torch.Tensor, list[list[int]]]:
    """The evaluation views of a video: `num_clips` clips spread over its whole length (or over
    `span`, [first, stop) frames), each transformed (1 or 3 crops). Returns the views [clips * crops, C,
    T, H, W] and each clip's frame indices (clamped to the frames that decode).

    One forward pass over the union of the clips' frames (`VideoReader.iter_frames`): a clip is transformed
    as soon as its last frame is read, and a frame is let go once no later clip needs it, so a worker holds
    the frames of the clips in progress, not the whole union. Under `data.decode_timeout` (a reader in the
    decode child) the views are made in the child and only they come back."""
    if isinstance(reader, GuardedReader):
        return reader.apply(decode_views, clip_len=clip_len, stride=stride, num_clips=num_clips,
                            transform=transform, span=span)
    clips = eval_clip_indices(reader.info.num_frames, clip_len, stride, num_clips, span=span)
    views = _gather_views((transform(clip) for clip in _clips_read_forward(reader, clips)), len(clips))
    give_back_free_memory()  # a video's worth of frames was freed (in a worker or its decode child: data/heap.py)
    clips = [[min(i, reader.info.num_frames - 1) for i in c] for c in clips]  # after any clamping
    return views, clips


def _clips_read_forward(reader: VideoReader, clips: list[list[int]]) -> Iterator[torch.Tensor]:
    """Each clip's frames [T, H, W, C] as soon as its last frame is read, in one forward read of their union;
    a frame is let go once no later clip needs it (clips start in order)."""
    last_use = {i: k for k, clip in enumerate(clips) for i in clip}  # the last clip reading frame i
    held: dict[int, torch.Tensor] = {}
    done = 0
    for index, frame in reader.iter_frames(list(last_use)):
        held[index] = frame
        while done < len(clips) and max(clips[done]) <= index:  # every frame of clip `done` is in
            yield torch.stack([held[i] for i in clips[done]])
            for i in set(clips[done]):
                if last_use[i] == done:
                    del held[i]
            done += 1


class VideoClipDataset(Dataset):
    """Clips of labelled videos, decoded on demand.

    Training (`train=True`): one random clip per video, or `train_clips` random clips decoded in one pass
    over their union, each transformed on its own ([train_clips, C, T, H, W]); a video that fails to decode
    is reported in the sample's `failures` and another video is drawn in its place.
    Evaluation: `num_clips` clips spread over the whole video, decoded in one pass, each
    transformed into 1 or 3 crops; a failure gives `valid=False` and the reason.

    Randomness comes from (seed, epoch, index), not from worker state, so a sample is
    the same whatever the number of workers or processes. A key may be an index (the epoch
    set with `set_epoch`) or an `(index, epoch)` pair (TrainSampler: persistent workers).

    `decode_timeout` (seconds): decode in a child process that is killed when opening or decoding
    a video takes longer (see videoft.data.watchdog); the video is then reported like an
    undecodable one. None decodes in process, with no limit.
    """

    def __init__(self, samples: Sequence[VideoSample], *, clip_len: int, stride: int, train: bool,
                 transform: Callable[[torch.Tensor], torch.Tensor], short_side: int | None,
                 num_clips: int = 1, backend: str = "auto", seed: int = 0, max_retries: int = 20,
                 decode_timeout: float | None = None, train_clips: int = 1):
        self.samples = list(samples)
        self.train_clips = train_clips
        self.clip_len, self.stride, self.train = clip_len, stride, train
        self.transform, self.short_side, self.num_clips = transform, short_side, num_clips
        self.backend, self.seed, self.max_retries = backend, seed, max_retries
        self.decode_timeout = decode_timeout
        self.epoch = 0

    def open(self, path: str) -> VideoReader:
        """A reader of `path` (in this process's decode child when there is a time limit)."""
        if self.decode_timeout:
            return decode_process(self.decode_timeout).open(path, short_side=self.short_side, backend=self.backend)
        return VideoReader(path, short_side=self.short_side, backend=self.backend)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        index, epoch = epoch_key(key, self.epoch)
        return self._train_item(index, epoch) if self.train else self._eval_item(index)

    def _train_item(self, index: int, epoch: int) -> Item:
        failures = []
        rng = random.Random(f"{self.seed}:{epoch}:{index}")
        current = index
        for _ in range(self.max_retries + 1):
            sample = self.samples[current]
            try:
                reader = self.open(sample.path)
                span = sample.frame_range(reader)
                clips = [train_clip_indices(reader.info.num_frames, self.clip_len, self.stride, rng, span=span)
                         for _ in range(self.train_clips)]
                needed, positions = union_indices(clips) if self.train_clips > 1 else (clips[0], None)
                frames = reader.get_frames(needed)
                with torch.random.fork_rng(devices=[]):
                    # the generator's own seeding: torch.manual_seed also records a stack trace (59 us a call
                    # against 1 us)
                    torch.default_generator.manual_seed(rng.getrandbits(63))
                    video = self.transform(frames) if positions is None else torch.stack(
                        [self.transform(frames[list(pos)]) for pos in positions])  # [K, C, T, H, W]
                return Item(video=video, label=sample.label, index=current, valid=True, frame_indices=None,
                            failures=failures)
            except VideoDecodeError as err:
                failures.append((err.path, err.reason))
                current = rng.randrange(len(self.samples))
        # raised in a DataLoader worker: DataError rebuilds this one line from the worker's traceback
        raise DataError(f"{len(failures)} videos in a row failed to decode (last: {failures[-1][0]}: "
                        f"{failures[-1][1]})", remedy="Most files seem unreadable: run tools/audit.py "
                        "on the data, or set data.audit=true to leave unreadable files out")

    def _eval_item(self, index: int) -> Item:
        sample = self.samples[index]
        try:
            reader = self.open(sample.path)
            views, clips = decode_views(reader, clip_len=self.clip_len, stride=self.stride,
                                        num_clips=self.num_clips, transform=self.transform,
                                        span=sample.frame_range(reader))
            return Item(video=views, label=sample.label, index=index, valid=True, frame_indices=clips,
                        failures=[])
        except VideoDecodeError as err:
            return Item(video=None, label=sample.label, index=index, valid=False, frame_indices=[],
                        failures=[(err.path, err.reason)])


def collate(batch: list[Item]) -> Batch:
    """Stack clips and labels; keep failures and frame indices as lists.

    Invalid eval items (undecodable videos) get a zero tensor shaped like the valid
    ones so a batch always stacks; `valid` says which rows count.
    """
    like = next((b["video"] for b in batch if b["video"] is not None), None)
    videos = [] if like is None else [b["video"] if b["video"] is not None else torch.zeros_like(like) for b in batch]
    return Batch(
        video=default_collate(videos) if videos else torch.empty(0),  # in a worker: straight into shared memory
        label=torch.tensor([b["label"] for b in batch]),
        index=torch.tensor([b["index"] for b in batch]),
        valid=torch.tensor([b["valid"] for b in batch]),
        frame_indices=[b["frame_indices"] for b in batch],
        failures=[f for b in batch for f in b["failures"]],
    )
