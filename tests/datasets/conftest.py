"""Helpers for the dataset recipe tests: the scripts in datasets/ imported as modules, tiny real
videos under the datasets' real file names, archives (zip with zipfile, RAR 4 with rar4.py)."""
from __future__ import annotations

import importlib.util
import io
import shutil
import sys
import zipfile
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / "datasets"


def load_recipe(name: str) -> ModuleType:
    """datasets/<name>.py as a module (its sibling `fetch` importable, as when run as a script)."""
    if str(DATASETS) not in sys.path:
        sys.path.insert(0, str(DATASETS))
    spec = importlib.util.spec_from_file_location(f"videoft_datasets_{name}", DATASETS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def avi_bytes(num_frames: int = 6, value: int = 100, size: tuple[int, int] = (32, 24)) -> bytes:
    """A tiny MPEG-4 AVI (the UCF/HMDB container) of uniform grey frames."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for t in range(num_frames):
            frame = np.full((size[1], size[0], 3), (value + 7 * t) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            if data is None:
                z.writestr(name.rstrip("/") + "/", b"")
            else:
                z.writestr(name, data)
    return buffer.getvalue()


RAR_TOOLS = [t for t in ("unar", "bsdtar") if shutil.which(t)]
needs_rar_tool = pytest.mark.skipif(not RAR_TOOLS, reason="no RAR extractor here (apt-get install unar)")
