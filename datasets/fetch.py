"""Shared steps of the dataset recipes: getting an archive (resumable, checksum-verified download, or a
clear message saying what to fetch and where to put it), extracting it once, writing list files.

Every step is idempotent: a finished download is kept (and re-verified only when it changes), an
extraction leaves a marker naming the archive's size and date, and list files are rewritten
identically. Progress bars on stderr (tqdm).

RAR archives are extracted with an external tool, the first found of:
- `unrar` (RARLAB, non-free; `apt-get install unrar` where non-free is enabled): checks CRCs;
- `unar` (The Unarchiver; `apt-get install unar`, `brew install unar`): checks CRCs;
- `bsdtar` (libarchive; `apt-get install libarchive-tools`): extracts, but libarchive 3.6 does not
  check the CRC of stored entries, so a warning is printed.
Debian's `7zip` package is built without RAR support and is not used.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A step that cannot be done here; the message says what the user should do."""


# ---------------------------------------------------------------------------------------------- checksums

def file_digest(path: Path, algorithm: str = "md5", *, desc: str | None = None) -> str:
    """Hex digest of a file, read in 1 MiB chunks (with a progress bar when `desc` is given)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc,
                                     disable=desc is None, leave=False) as bar:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime": int(st.st_mtime)}


def verify(path: Path, md5: str | None) -> None:
    """Check `path` against its MD5 (once per file version: the result is remembered beside it)."""
    if not md5:
        return
    memo = path.with_name(path.name + ".verified")
    if memo.is_file() and json.loads(memo.read_text()) == {**_stamp(path), "md5": md5}:
        return
    got = file_digest(path, "md5", desc=f"checking {path.name}")
    if got != md5.lower():
        raise FetchError(f"{path}: MD5 {got} is not the published {md5}: the file is damaged or another "
                         f"version. Delete it and fetch it again.")
    memo.write_text(json.dumps({**_stamp(path), "md5": md5}))


# ---------------------------------------------------------------------------------------------- download

def download(url: str, dest: Path, *, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download `url` to `dest`, resuming a partial `dest.part` with an HTTP Range request, then verify.

    Offline or refused: a FetchError saying which URL to fetch and where to put the file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    total = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = bool(have) and response.status == 206
            if have and not resumed:  # the server ignored the range: start again
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        if not (err.code == 416 and have):  # 416 on a resume: nothing left to fetch
            raise FetchError(_offline_message(url, dest, f"HTTP {err.code} {err.reason}")) from None
    except (urllib.error.URLError, OSError) as err:
        raise FetchError(_offline_message(url, dest, str(getattr(err, "reason", err)))) from None
    if total is not None and part.stat().st_size != total:
        raise FetchError(f"{url}: the download stopped at {part.stat().st_size} of {total} bytes; run the same "
                         f"command again to resume it")
    try:
        verify(part, md5)
    except FetchError:
        part.replace(dest.with_name(dest.name + ".bad"))  # kept for inspection, never as the real file
        raise
    part.replace(dest)
    if md5:
        part.with_name(part.name + ".verified").replace(dest.with_name(dest.name + ".verified"))
    return dest


def _offline_message(url: str, dest: Path, reason: str) -> str:
    return (f"cannot download {url} ({reason}).\nDownload it yourself (a browser or `wget -c {url}`) and put "
            f"it at {dest.resolve()}, then run the same command again.")


def ensure_archive(path: Path, url: str | None, *, md5: str | None, allow_download: bool) -> Path:
    """`path` verified, downloading it from `url` first when it is missing and downloads are allowed."""
    if path.is_file():
        verify(path, md5)
        return path
    if url and allow_download:
        return download(url, path, md5=md5)
    where = f"Download {url}" if url else "Fetch it"
    raise FetchError(f"{path} does not exist. {where} and put it at {path.resolve()} "
                     f"(or pass --download to let this command fetch it), then run the same command again.")


# ---------------------------------------------------------------------------------------------- extraction

def extract(archive: Path, out: Path, *, desc: str | None = None) -> Path:
    """Extract `archive` (zip or rar) into `out` once; a marker in `out` makes the next run skip it."""
    marker = out / f".extracted-{archive.name}.json"
    stamp = {**_stamp(archive), "archive": archive.name}
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        print(f"{archive.name}: already extracted in {out}", file=sys.stderr)
        return out
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".extracting-{archive.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    kind = archive_kind(archive)
    if kind == "zip":
        _extract_zip(archive, tmp, desc or archive.name)
    else:
        _extract_rar(archive, tmp, desc or archive.name)
    for item in sorted(tmp.iterdir()):  # move into place: one rename per top-level entry
        target = out / item.name
        if target.exists():
            _merge_into(item, target)
        else:
            item.replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text(json.dumps(stamp))
    return out


def archive_kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    raise FetchError(f"{path}: neither a zip nor a RAR archive (first bytes {head!r}); is the download complete?")


def _merge_into(src: Path, dst: Path) -> None:
    """Move `src` over `dst` (a re-extraction after the archive changed): files replace files."""
    if src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _merge_into(child, dst / child.name)
    else:
        if dst.is_dir():
            shutil.rmtree(dst)
        src.replace(dst)


def _extract_zip(archive: Path, dest: Path, desc: str) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            for info in tqdm(members, desc=desc, unit="file"):
                z.extract(info, dest)  # CRC-32 of each member checked on read
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as err:
        raise FetchError(f"{archive}: extraction failed ({err}); delete it and fetch it again") from None


RAR_TOOLS = {  # name: (extract command, list command, checks CRCs, prefix of an output line per entry)
    "unrar": (["unrar", "x", "-o+", "-y", "{archive}", "{dest}/"], ["unrar", "lb", "{archive}"], True, "Extracting"),
    "unar": (["unar", "-D", "-f", "-o", "{dest}", "{archive}"], ["lsar", "{archive}"], True, "  "),
    "bsdtar": (["bsdtar", "-xvf", "{archive}", "-C", "{dest}"], ["bsdtar", "-tf", "{archive}"], False, "x "),
}


def find_rar_tool(preferred: Sequence[str] = tuple(RAR_TOOLS)) -> str:
    for name in preferred:
        if shutil.which(RAR_TOOLS[name][0][0]):
            return name
    raise FetchError("no RAR extractor found: install one of unar (`apt-get install unar`, `brew install unar`), "
                     "unrar, or bsdtar (`apt-get install libarchive-tools`), or extract the archive yourself and "
                     "pass the extracted folder instead")


def _extract_rar(archive: Path, dest: Path, desc: str, tool: str | None = None) -> None:
    tool = tool or find_rar_tool()
    extract_cmd, list_cmd, checks_crc, entry_prefix = RAR_TOOLS[tool]
    if not checks_crc:
        print(f"warning: {tool} does not check the CRCs of stored RAR entries; unar or unrar would",
              file=sys.stderr)
    fill = {"archive": str(archive), "dest": str(dest)}
    listing = subprocess.run([c.format(**fill) for c in list_cmd], capture_output=True, text=True)
    lines = [line for line in listing.stdout.splitlines() if line.strip()]
    total = len(lines) - (tool == "unar") if listing.returncode == 0 else None  # lsar's first line: the archive
    with subprocess.Popen([c.format(**fill) for c in extract_cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc, \
            tqdm(total=total, desc=f"{desc} ({tool})", unit="file") as bar:
        tail: list[str] = []
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-5:]
            bar.update(line.startswith(entry_prefix))
    if proc.returncode != 0:
        raise FetchError(f"{archive}: {tool} failed (exit code {proc.returncode}):\n  " + "\n  ".join(tail))


# ---------------------------------------------------------------------------------------------- lists

def write_list(rows: Iterable[tuple[str, str]], out: Path) -> int:
    """A CSV `path,label` list with paths relative to the list's folder; returns the number of rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for path, label in rows:
            writer.writerow([os.path.relpath(path, out.parent), label])
    return len(rows)


def read_class_list(path: Path) -> list[str]:
    """Class names, one per line; blank lines and `#` comments skipped."""
    if not Path(path).is_file():
        raise FetchError(f"class list {path} does not exist")
    names = [line.split("#")[0].strip() for line in Path(path).read_text().splitlines()]
    names = [n for n in names if n]
    if not names:
        raise FetchError(f"class list {path} names no class")
    return names
