"""A minimal writer of RAR 4.x archives with stored (uncompressed) entries, for tests.

No RAR writer can be installed here (RAR compression is proprietary; Debian's `rar` is non-free),
so the tests write real RAR 4.x archives themselves, following RARLAB's technote for the 4.x
format: marker block, archive header, one file header (+ data) per entry, end-of-archive block,
each header protected by the low 16 bits of its CRC-32. Entries are stored with method 0x30
("store"): the extractors' code for compressed RAR data is not exercised by these archives.
"""
from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

MARKER = b"Rar!\x1a\x07\x00"
_LONG_BLOCK, _DIRECTORY = 0x8000, 0x00E0
_HOST_UNIX, _STORE, _VERSION = 3, 0x30, 20


def _block(head_type: int, flags: int, body: bytes) -> bytes:
    """HEAD_CRC, HEAD_TYPE, HEAD_FLAGS, HEAD_SIZE, then the rest of the header."""
    rest = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(rest) & 0xFFFF) + rest


def _dos_time(t: float) -> int:
    tm = time.localtime(t)
    return ((tm.tm_year - 1980) << 25 | tm.tm_mon << 21 | tm.tm_mday << 16
            | tm.tm_hour << 11 | tm.tm_min << 5 | tm.tm_sec // 2)


def rar4_bytes(entries: dict[str, bytes | None]) -> bytes:
    """An archive of `entries`: {name with '/' separators: content, or None for a directory}."""
    out = bytearray(MARKER)
    out += _block(0x73, 0, b"\x00" * 6)  # archive header: RESERVED1 (2) + RESERVED2 (4)
    now = _dos_time(time.time())
    for name, data in entries.items():
        raw = name.replace("/", "\\").encode()  # RAR 4 stores the DOS separator
        is_dir = data is None
        data = b"" if is_dir else data
        attr = 0o40755 if is_dir else 0o100644
        body = struct.pack("<IIBIIBBHI", len(data), len(data), _HOST_UNIX, zlib.crc32(data), now, _VERSION,
                           _STORE, len(raw), attr) + raw
        out += _block(0x74, _LONG_BLOCK | (_DIRECTORY if is_dir else 0), body) + data
    out += _block(0x7B, 0x4000, b"")  # end of archive
    return bytes(out)


def write_rar4(path: str | Path, entries: dict[str, bytes | None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rar4_bytes(entries))
    return path
