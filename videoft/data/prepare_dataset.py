"""Prepare a whole dataset (tools/prepare.py): every video converted in parallel, the layout kept, a manifest.

The copy keeps the relative layout (class folders, split folders), so training reads it with only
`data.root` changed. List files (`.txt`/`.csv`: UCF101's train/test lists, videoft's `path,label`
lists) are rewritten to name the prepared copies; other small files are copied. The manifest
(`prepared.json`) records the parameters and, per video, the source (size, mtime), the output and
both probes: a second run skips what is done and redoes what changed (source or parameters).
A video that fails is listed in the manifest and the summary; it never stops the others.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videoft.data.dataset import VIDEO_EXTENSIONS
from videoft.data.prepare import PrepareParams, output_name, prepare_video
from videoft.data.prepared import MANIFEST_FORMAT, MANIFEST_NAME
from videoft.data.segments import split_whitespace_line
from videoft.progress import progress

log = logging.getLogger("videoft")

LIST_EXTENSIONS = (".txt", ".csv")
COPY_MAX_BYTES = 16 << 20  # other files (class lists, READMEs) are copied when smaller than this


@dataclass
class PrepareSummary:
    """What one tools/prepare.py run did."""

    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # relative source path -> reason
    lists: list[str] = field(default_factory=list)          # list files rewritten
    source_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0


def scan(src: Path, dst: Path) -> tuple[list[str], list[str]]:
    """(videos, other files) under `src` as sorted relative paths; `dst` is skipped when inside `src`."""
    videos, others = [], []
    for dirpath, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if Path(dirpath, d).resolve() != dst.resolve())
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(dirpath, name), src)
            (videos if name.lower().endswith(VIDEO_EXTENSIONS) else others).append(rel)
    return videos, others


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _load_manifest(dst: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((dst / MANIFEST_NAME).read_text())
        return manifest if manifest.get("format") == MANIFEST_FORMAT else {}
    except (OSError, ValueError):
        return {}


def _save_manifest(dst: Path, manifest: dict[str, Any]) -> None:
    tmp = dst / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, dst / MANIFEST_NAME)


def _convert(src: str, dst: str, params: PrepareParams) -> dict[str, Any]:
    """One video, in a worker process (one thread: the parallelism is over processes)."""
    import torch

    torch.set_num_threads(1)
    return prepare_video(src, dst, params)


def prepare_dataset(src: str | os.PathLike, dst: str | os.PathLike, params: PrepareParams, *,
                    workers: int = 1, show_progress: bool = True) -> PrepareSummary:
    """Convert every video under `src` into `dst` (same relative names, the format's suffix)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ValueError(f"source {src} is not a folder (give the dataset's root folder)")
    dst.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    videos, others = scan(src, dst)
    old = _load_manifest(dst).get("videos", {})
    summary, entries, todo = PrepareSummary(), {}, []
    outputs: dict[str, str] = {}
    for rel in videos:
        out = output_name(rel, params.format)
        if out in outputs.values():
            summary.failed[rel] = f"its prepared name {out} is taken by another source in the same folder"
            continue
        outputs[rel] = out
        stamp, was = _stamp(src / rel), old.get(rel)
        if was and was.get("source") == stamp and was.get("params") == params.as_dict() and (dst / out).exists():
            entries[rel] = was
            summary.skipped.append(rel)
        else:
            todo.append(rel)
    manifest = {"format": MANIFEST_FORMAT, "source": str(src.resolve()), "params": params.as_dict(),
                "videos": entries, "failed": {}}
    _run(src, dst, todo, outputs, params, workers, show_progress, manifest, summary)
    manifest["failed"] = summary.failed
    _save_manifest(dst, manifest)
    summary.lists = _copy_others(src, dst, others, {k: v for k, v in outputs.items() if k in manifest["videos"]})
    summary.source_bytes = sum(e["source"]["size"] for e in manifest["videos"].values())
    summary.output_bytes = sum(e["bytes"] for e in manifest["videos"].values())
    summary.seconds = time.perf_counter() - start
    return summary


def _run(src: Path, dst: Path, todo: list[str], outputs: dict[str, str], params: PrepareParams, workers: int,
         show_progress: bool, manifest: dict[str, Any], summary: PrepareSummary) -> None:
    """Convert `todo` over `workers` processes, recording each result in the manifest as it lands."""
    if not todo:
        return
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_convert, str(src / rel), str(dst / outputs[rel]), params): rel for rel in todo}
        bar = progress(as_completed(futures), desc="prepare", total=len(futures), enabled=show_progress,
                       unit="video")
        last_save = time.monotonic()
        for future in bar:
            rel = futures[future]
            try:
                facts = future.result()
            except Exception as exc:  # a bad video (or a crashed worker) is listed, never fatal
                reason = getattr(exc, "reason", None) or str(exc).splitlines()[0] or type(exc).__name__
                summary.failed[rel] = reason
                log.warning("prepare: %s failed: %s", rel, reason)
                continue
            manifest["videos"][rel] = {"output": outputs[rel], "source": _stamp(src / rel),
                                       "params": params.as_dict(), **facts}
            summary.converted.append(rel)
            if time.monotonic() - last_save > 30:  # an interrupted run keeps what it finished
                _save_manifest(dst, manifest)
                last_save = time.monotonic()
        bar.close()


def _copy_others(src: Path, dst: Path, others: list[str], outputs: dict[str, str]) -> list[str]:
    """Rewrite list files to the prepared names; copy other small files. Returns the list files rewritten."""
    rewritten = []
    for rel in others:
        if rel == MANIFEST_NAME:
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.lower().endswith(LIST_EXTENSIONS):
            folder = os.path.dirname(rel)
            local = {os.path.relpath(k, folder or "."): os.path.relpath(v, folder or ".") for k, v in outputs.items()}
            try:
                text, changed = rewrite_list(Path(src, rel).read_text(), local, str(src.resolve()), str(dst.resolve()))
            except UnicodeDecodeError:
                text, changed = None, False
            if text is not None:
                target.write_text(text)
                rewritten += [rel] if changed else []
                continue
        if (src / rel).stat().st_size <= COPY_MAX_BYTES:
            shutil.copy2(src / rel, target)
    return rewritten


def rewrite_list(text: str, outputs: dict[str, str], src_root: str, dst_root: str) -> tuple[str, bool]:
    """A list file's text with each line's video path replaced by its prepared name; other lines unchanged.

    Paths are matched relative to the list file's folder (`outputs`) or absolute under `src_root`.
    """
    lines, changed = [], False
    is_csv = any("," in line for line in text.splitlines()[:5])
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        fields = next(csv.reader([body]), []) if is_csv else split_whitespace_line(body)
        first = fields[0].strip() if fields else ""
        new = outputs.get(first)
        if new is None and os.path.isabs(first) and first.startswith(src_root + os.sep):
            rel = os.path.relpath(first, src_root)
            new = next((os.path.join(dst_root, v) for k, v in outputs.items()
                        if os.path.normpath(k) == rel), None)
        if new is not None and body.lstrip().startswith(first):
            if is_csv:
                buf = io.StringIO()
                csv.writer(buf, lineterminator="").writerow([new, *fields[1:]])
                body = buf.getvalue()
            else:
                body = body.replace(first, new, 1)
            changed = True
        lines.append(body + line[len(line.rstrip("\r\n")):])
    return "".join(lines), changed
