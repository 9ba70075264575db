"""Where videoft keeps what it measured on this machine, across runs: `$VIDEOFT_CACHE`, default
`~/.cache/videoft` (the CPU step-format choices, which files decord seeks right in)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("VIDEOFT_CACHE", Path.home() / ".cache" / "videoft"))
