"""Shared fixtures: small real video files written with PyAV (no dependency on videoft).

Lossless videos (`libx264rgb`, `crf=0`, rgb24) fill frame t with the value
`frame_value(t) = (5 * t) % 256`, so a decoded pixel names the frame it came from.
Lossy videos are plain H.264 yuv420p mp4, like most real data.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

# OpenMP threads that spin while they wait make a 2-thread training run 5-40x slower when other
# processes share the cores (measured: 31 s passive, 150-430 s spinning, for the same transfer-test
# run): the tests and the tools they start (which inherit the environment) wait passively.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# the CPU step-format choice (engine.autotune) is cached per test session, never in the user's home
os.environ["VIDEOFT_CACHE"] = os.path.join(
    os.environ.get("PYTEST_TMPDIR", "/tmp"), f"videoft-test-cache-{os.getpid()}")


def frame_value(t: int) -> int:
    """The pixel value of frame `t` in the videos written here."""
    return (5 * t) % 256


def mux_frames(out: av.container.OutputContainer, stream: av.VideoStream, frames: np.ndarray) -> None:
    """Encode RGB frames ([T, H, W, 3] uint8) into `stream` of `out`, then flush the encoder."""
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def write_test_video(path: str | Path, frames: np.ndarray, *, fps: int = 25, lossless: bool = True,
                     faststart: bool = False) -> Path:
    """Encode `frames` ([T, H, W, 3] uint8 RGB) to an H.264 mp4 (lossless RGB or yuv420p).

    `faststart` moves the index (frame count included) to the front of the file, so a
    truncated copy still opens and over-reports its frames.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, h, w, _ = frames.shape
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"} if faststart else {}) as out:
        if lossless:
            stream = out.add_stream("libx264rgb", rate=Fraction(fps))
            stream.pix_fmt = "rgb24"
            stream.options = {"crf": "0", "preset": "ultrafast", "threads": "1"}
        else:
            stream = out.add_stream("libx264", rate=Fraction(fps))
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "23", "preset": "ultrafast", "threads": "1", "g": "8"}
        stream.width, stream.height = w, h
        mux_frames(out, stream, frames)
    return path


def constant_frames(num_frames: int, width: int, height: int, offset: int = 0) -> np.ndarray:  # [T, H, W, 3]
    """Frame t filled with `frame_value(t) + offset` (mod 256)."""
    values = (np.array([frame_value(t) for t in range(num_frames)]) + offset) % 256
    return np.broadcast_to(values.astype(np.uint8)[:, None, None, None], (num_frames, height, width, 3)).copy()


def textured_frames(num_frames: int, width: int, height: int, offset: int = 0) -> np.ndarray:  # [T, H, W, 3]
    """Moving gradients (red, green) over blue = `frame_value(t) + offset`: something for a
    lossy encoder, a scaler and a random crop to work on."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t, ..., 0] = (xx * 4 + t * 3) % 256
        frames[t, ..., 1] = (yy * 5) % 256
        frames[t, ..., 2] = (frame_value(t) + offset) % 256
    return frames


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def make_video(video_dir) -> Callable[..., Path]:
    """Factory: `make_video(path=None, num_frames=30, width=64, height=48, lossless=True, fps=25)`.

    Lossless videos hold `frame_value(t)` in frame t; lossy ones moving gradients.
    `path` None writes a fresh file in a session folder.
    """
    counter = itertools.count()

    def make(path: str | Path | None = None, *, num_frames: int = 30, width: int = 64, height: int = 48,
             lossless: bool = True, fps: int = 25, faststart: bool = False) -> Path:
        if path is None:
            path = video_dir / f"video_{next(counter)}.mp4"
        frames = constant_frames(num_frames, width, height) if lossless \
            else textured_frames(num_frames, width, height)
        return write_test_video(path, frames, fps=fps, lossless=lossless, faststart=faststart)

    return make


@pytest.fixture(scope="session")
def lossless_video(make_video) -> Path:
    """64x48 (landscape), 30 frames at 25 fps, frame t filled with frame_value(t)."""
    return make_video(num_frames=30, width=64, height=48)


@pytest.fixture(scope="session")
def lossy_video(make_video) -> Path:
    """64x48 H.264 yuv420p, 30 frames of moving gradients."""
    return make_video(num_frames=30, width=64, height=48, lossless=False)


@pytest.fixture(scope="session")
def make_class_folder() -> Callable[..., Path]:
    """Factory: `make_class_folder(root, {class: n_videos}, num_frames=20, ...)` -> root.

    Writes `root/<class>/v_<class>_gNN_cMM.mp4` (UCF101 names): `per_group` clips per
    group, groups numbered from 1. Frames are `textured_frames`, the blue channel of
    frame t of class k (in sorted order) being `frame_value(t) + 40 * k` (lossy: roughly).
    """

    def make(root: str | Path, counts: Mapping[str, int], *, num_frames: int = 20, width: int = 64,
             height: int = 48, per_group: int = 2, fps: int = 25) -> Path:
        root = Path(root)
        for k, (name, n) in enumerate(sorted(counts.items())):
            frames = textured_frames(num_frames, width, height, offset=40 * k)
            for i in range(n):
                group, clip = i // per_group + 1, i % per_group + 1
                write_test_video(root / name / f"v_{name}_g{group:02d}_c{clip:02d}.mp4", frames,
                                 fps=fps, lossless=False)
        return root

    return make


@pytest.fixture(scope="session")
def tiny_motion_dataset(tmp_path_factory) -> Path:
    """The demo generator at a tiny size: 4 motion classes, split folders, 64x48 H.264 mp4s."""
    from videoft.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny_motion") / "data"
    generate_dataset(root, per_split_counts={"train": 3, "val": 2, "test": 2}, width=64, height=48, seed=0)
    return root


TINY_TRAIN_OVERRIDES = [
    "model.backbone=x3d_xs", "data.clip_len=4", "data.frame_stride=2", "data.crop_size=32",
    "data.short_side=40", "data.batch_size=4", "data.num_workers=0", "data.eval_clips=2",
    "train.threads=1", "optim.lr=0.05", "optim.warmup_epochs=0", "train.amp=off", "train.channels_last=off",
]


@pytest.fixture
def restore_threads():
    """In-process runs set torch's thread count (train.threads): give the next test the count it had."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
