"""Where videoft keeps what it measured on this machine, across runs: `$VIDEOFT_CACHE`, default
`~/.cache/videoft` (the CPU step-format choices, which files decord seeks right in)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("VIDEOFT_CACHE", Path.home() / ".cache" / "videoft"))


def write_text_atomically(path: Path, text: str) -> None:
    """`path` gets `text` whole or not at all (other processes may read or write it at the same time);
    OSError when it cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
