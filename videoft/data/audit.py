"""Audit a dataset before training on it: probe every video with the decoders training uses.

Per video: container, codec, displayed size, fps, rotation, the frame count the header claims
against the frames that decode, duration, the decoder training will use (decord, or PyAV where
decord fails or the video is rotated) and, for a file that cannot be used, why. Each probe runs in
a killable decode child (videoft.data.watchdog) under a time limit, so a file that hangs the
decoder is reported, not waited for; probes run in parallel processes. Results are cached by
file size and modification time, so a second audit (or a training run with `data.audit: true`)
probes only new or changed files. Unreadable files are quarantined: training leaves them out.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av

from videoft.data import decode
from videoft.data.decode import VideoDecodeError, VideoReader, probe
from videoft.data.prepared import FrameFolder, is_frame_folder
from videoft.data.watchdog import DecodeProcess
from videoft.progress import progress

CACHE_VERSION = 1
CSV_COLUMNS = ("path", "class", "split", "size_bytes", "container", "codec", "width", "height", "fps", "rotation",
               "frames_claimed", "frames_decodable", "duration_s", "too_short", "decoder", "needs_fallback",
               "quarantined", "error")


@dataclass
class VideoRecord:
    """What the audit found out about one video (sizes as displayed, i.e. after rotation)."""

    path: str
    label: str = ""                # class name
    split: str = ""
    size_bytes: int = 0
    container: str = ""
    codec: str = ""
    width: int = 0
    height: int = 0
    fps: float = 0.0
    rotation: int = 0
    frames_claimed: int = 0        # what the header says
    frames_decodable: int = 0      # what really decodes (training clamps to this)
    duration_s: float = 0.0
    decoder: str = ""              # the decoder training will use: decord or pyav ("" when unreadable)
    needs_fallback: bool = False   # decord fails on it, PyAV works (slower; logged during training)
    error: str = ""                # why it cannot be used ("" when it decodes)
    seconds: float = 0.0           # how long the probe took

    @property
    def quarantined(self) -> bool:
        return bool(self.error)

    def too_short(self, clip_span: int) -> bool:
        """Fewer frames than one clip spans (decodable, but its last frame is repeated to fill the clip)."""
        return not self.quarantined and self.frames_decodable < clip_span


@dataclass(frozen=True)
class AuditSettings:
    """What a probe depends on besides the file: a cached record is reused only for the same settings."""

    short_side: int | None = 128   # decoded at the training short side (decord's scaler fails at some sizes)
    full: bool = False             # decode every frame to count them (else the first, middle and last)
    timeout: float = 60.0          # seconds per video before the probe is abandoned
    backend: str = "auto"          # data.decoder: auto (decord, PyAV where it fails), decord or pyav


def inspect_video(path: str, short_side: int | None, full: bool, backend: str = "auto") -> dict:
    """Probe one file as training would read it; raises VideoDecodeError when it cannot be used."""
    info = probe(path)
    if is_frame_folder(path):  # tools/prepare.py's JPEG or uint8 frames: no container to ask
        fields = {"container": "frames", "codec": FrameFolder(path).format, "frames_claimed": info.num_frames,
                  "duration_s": info.duration}
    else:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fields = {"container": container.format.name, "codec": stream.codec_context.name,
                      "frames_claimed": int(stream.frames or info.num_frames)}
            fields["duration_s"] = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                                    else (container.duration or 0) / av.time_base or info.duration)
    reader = VideoReader(path, short_side=short_side, backend=backend)  # auto: decord, PyAV where it fails
    last = reader.info.num_frames - 1
    reader.get_frames(sorted({0, last // 2, last}))  # the last frame proves the count (clamped if over-reported)
    decodable = reader.info.num_frames
    if full and not is_frame_folder(path):
        decodable = _count_frames(path)
    fallback = reader.backend == "pyav" and backend == "auto" and not info.rotation and decode.decord is not None
    return {**fields, "width": info.width, "height": info.height, "fps": round(info.fps, 3),
            "rotation": info.rotation, "frames_decodable": decodable, "decoder": reader.backend,
            "needs_fallback": fallback}


def _count_frames(path: str) -> int:
    count = 0
    try:
        with av.open(path) as container:
            for _ in container.decode(video=0):
                count += 1
    except (av.FFmpegError, OSError, ValueError):
        pass  # the frames before the error are the ones that decode
    if count == 0:
        raise VideoDecodeError(path, "no frame decodes")
    return count


# ---------------------------------------------------------------------------------------------- cache

def default_cache_path(root: str | os.PathLike) -> Path:
    """$XDG_CACHE_HOME/videoft/audit/<hash of the data root>.json (one cache per dataset)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return base / "videoft" / "audit" / f"{digest}.json"


class AuditCache:
    """Records by absolute path, each valid while the file's size and mtime and the settings stay the same."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") == CACHE_VERSION:
                    self.entries = data["entries"]
            except (OSError, ValueError, KeyError, TypeError):
                self.entries = {}  # a damaged cache is only a slower audit

    def get(self, path: str, settings: AuditSettings) -> VideoRecord | None:
        entry = self.entries.get(os.path.abspath(path))
        if entry is None or entry["key"] != _file_key(path, settings):
            return None
        return VideoRecord(**entry["record"])

    def put(self, record: VideoRecord, settings: AuditSettings) -> None:
        key = _file_key(record.path, settings)
        if key is not None and "took longer" not in record.error:  # a timeout may be the machine's load
            self.entries[os.path.abspath(record.path)] = {"key": key, "record": dataclasses.asdict(record)}

    def save(self) -> None:
        """Atomic write (tmp file + rename): a concurrent reader sees the old cache or the new one."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": self.entries}))
        os.replace(tmp, self.path)


def _file_key(path: str, settings: AuditSettings) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing, dangling, looping: probed every time (it is quick), never cached
    return [st.st_size, st.st_mtime_ns, settings.short_side, settings.full, settings.backend]


# ---------------------------------------------------------------------------------------------- probing

_decoder: DecodeProcess | None = None  # one per audit worker process


def _init_worker(timeout: float) -> None:
    global _decoder
    _decoder = DecodeProcess(timeout)


def _audit_one(item: tuple[str, str, str, AuditSettings]) -> VideoRecord:
    path, label, split, settings = item
    record = VideoRecord(path=path, label=label, split=split)
    try:
        record.size_bytes = os.stat(path).st_size
    except OSError:
        pass
    t0 = time.perf_counter()
    try:
        fields = _decoder.call(path, inspect_video, path, settings.short_side, settings.full, settings.backend)
        record = dataclasses.replace(record, **fields)
    except VideoDecodeError as err:
        record.error = err.reason
    record.seconds = round(time.perf_counter() - t0, 3)
    return record


def audit_videos(items: Sequence[tuple[str, str, str]], settings: AuditSettings, *, workers: int = 2,
                 cache: AuditCache | None = None, show_progress: bool = True) -> list[VideoRecord]:
    """A record for each (path, class, split) in `items`, in that order; cached records are reused
    (and new ones added to `cache`, which the caller saves)."""
    cache = cache or AuditCache(None)
    records: dict[str, VideoRecord] = {}
    todo = []
    for path, label, split in items:
        hit = cache.get(path, settings)
        if hit is not None:
            records[path] = dataclasses.replace(hit, label=label, split=split)
        else:
            todo.append((path, label, split, settings))
    for record in _probe_all(todo, settings, workers, show_progress):
        records[record.path] = record
        cache.put(record, settings)
    return [records[path] for path, _, _ in items]


def _probe_all(todo: list, settings: AuditSettings, workers: int, show_progress: bool) -> Iterable[VideoRecord]:
    desc = f"audit ({len(todo)} videos to probe)"
    if workers <= 1 or len(todo) <= 1:
        _init_worker(settings.timeout)
        yield from progress(map(_audit_one, todo), desc=desc, total=len(todo), enabled=show_progress,
                            unit="video")
        return
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(settings.timeout,)) as pool:
        yield from progress(pool.imap_unordered(_audit_one, todo), desc=desc, total=len(todo),
                            enabled=show_progress, unit="video")


# ---------------------------------------------------------------------------------------------- reports

def class_table(records: Sequence[VideoRecord], clip_span: int) -> list[dict]:
    """Per class: videos, hours, too short, unreadable, needs fallback, rotated (then a total row)."""
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.setdefault(r.label, {"class": r.label, "videos": 0, "hours": 0.0, "too_short": 0,
                                        "unreadable": 0, "needs_fallback": 0, "rotated": 0})
        row["videos"] += 1
        row["hours"] += r.duration_s / 3600 if not r.quarantined else 0.0
        row["too_short"] += r.too_short(clip_span)
        row["unreadable"] += r.quarantined
        row["needs_fallback"] += r.needs_fallback
        row["rotated"] += bool(r.rotation)
    table = [rows[k] for k in sorted(rows)]
    total = {"class": "total", **{k: sum(row[k] for row in table) for k in table[0] if k != "class"}} if table \
        else {"class": "total", "videos": 0, "hours": 0.0, "too_short": 0, "unreadable": 0, "needs_fallback": 0,
              "rotated": 0}
    return table + [total]


def format_class_table(rows: list[dict]) -> str:
    width = max(len(r["class"]) for r in rows)
    head = f"{'class':<{width}}  videos   hours  too short  unreadable  needs fallback  rotated"
    lines = [head]
    for r in rows:
        lines.append(f"{r['class']:<{width}}  {r['videos']:>6}  {r['hours']:>6.2f}  {r['too_short']:>9}  "
                     f"{r['unreadable']:>10}  {r['needs_fallback']:>14}  {r['rotated']:>7}")
    return "\n".join(lines)


def quarantine(records: Sequence[VideoRecord]) -> list[VideoRecord]:
    """The records of files training must leave out (unreadable, no frames, decode hangs...)."""
    return sorted((r for r in records if r.quarantined), key=lambda r: r.path)


def write_audit(out_dir: str | os.PathLike, records: Sequence[VideoRecord], *, clip_span: int,
                settings: AuditSettings, root: str) -> dict[str, Path]:
    """audit.json (settings, per-class table, quarantine, every record), audit.csv and quarantine.txt."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bad = quarantine(records)
    report = {"data": root, "settings": dataclasses.asdict(settings), "clip_span_frames": clip_span,
              "classes": class_table(records, clip_span),
              "quarantine": [{"path": r.path, "reason": r.error} for r in bad],
              "videos": [_row(r, clip_span) for r in records]}
    paths = {"audit.json": out / "audit.json", "audit.csv": out / "audit.csv", "quarantine.txt": out / "quarantine.txt"}
    paths["audit.json"].write_text(json.dumps(report, indent=1))
    with open(paths["audit.csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(_row(r, clip_span) for r in records)
    paths["quarantine.txt"].write_text("".join(f"{r.path}\t{r.error}\n" for r in bad))
    return paths


def _row(r: VideoRecord, clip_span: int) -> dict:
    row = {k: v for k, v in dataclasses.asdict(r).items() if k not in ("label", "seconds")}
    return {"class": r.label, **row, "duration_s": round(r.duration_s, 3), "too_short": r.too_short(clip_span),
            "quarantined": r.quarantined}


__all__ = ["AuditCache", "AuditSettings", "VideoRecord", "audit_videos", "class_table", "default_cache_path",
           "format_class_table", "inspect_video", "quarantine", "write_audit"]
