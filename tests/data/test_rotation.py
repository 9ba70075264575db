"""Upright phone footage: a rotation in the display matrix is applied whatever the decoder, in training,
evaluation and inference. The videos are written as a phone does: frames stored sideways, with a
display matrix saying how to turn them; the scene has a red block in its top-left corner, so a
decoded frame is upright exactly when its top-left corner is red."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.conftest import mux_frames
from videoft.data.dataset import VideoClipDataset, VideoSample, decode_views
from videoft.data.decode import VideoReader, probe

WIDTH, HEIGHT = 48, 64  # the scene as displayed (portrait, like a phone held upright)
FRAMES = 6


def upright_scene() -> np.ndarray:  # [T, H, W, 3]
    """Blue frames with a red 12x16 block in the top-left corner."""
    frames = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    frames[..., 2] = 200
    frames[:, :16, :12] = (255, 0, 0)
    return frames


def write_rotated(path: Path, degrees: int) -> Path:
    """Store the scene turned clockwise by `degrees` with a display matrix that turns it back
    (counterclockwise `degrees`, FFmpeg's convention), as a phone camera writes it."""
    stored = np.rot90(upright_scene(), k=-degrees // 90, axes=(1, 2))
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264rgb", rate=Fraction(25))
        stream.pix_fmt = "rgb24"
        stream.options = {"crf": "0", "preset": "ultrafast", "threads": "1"}
        stream.height, stream.width = stored.shape[1:3]
        stream.set_display_rotation(degrees)
        mux_frames(out, stream, stored)
    return path


@pytest.fixture(scope="module", params=[90, 180, 270])
def rotated(request, tmp_path_factory) -> tuple[Path, int]:
    return write_rotated(tmp_path_factory.mktemp("rotated") / f"rot{request.param}.mp4", request.param), request.param


def assert_upright(frames: torch.Tensor, width: int, height: int) -> None:  # [T, H, W, 3]
    assert tuple(frames.shape[1:]) == (height, width, 3)
    corner = frames[:, : height // 4, : width // 4].float().mean(dim=(0, 1, 2))  # top-left: red
    others = [frames[:, -height // 4:, : width // 4], frames[:, : height // 4, -width // 4:],
              frames[:, -height // 4:, -width // 4:]]
    assert corner[0] > 200 and corner[2] < 60, f"top-left is not red: {corner.tolist()}"
    for part in others:  # the other corners: blue
        mean = part.float().mean(dim=(0, 1, 2))
        assert mean[0] < 60 and mean[2] > 150, mean.tolist()


def test_probe_reports_rotation_and_the_displayed_size(rotated):
    path, degrees = rotated
    info = probe(path)
    assert info.rotation == degrees
    assert (info.width, info.height) == (WIDTH, HEIGHT)  # as displayed, not as stored


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
@pytest.mark.parametrize("short_side", [None, 24])
def test_frames_come_out_upright_whatever_the_decoder(rotated, backend, short_side):
    path, _ = rotated
    reader = VideoReader(path, short_side=short_side, backend=backend)
    width, height = (WIDTH, HEIGHT) if short_side is None else (24, 32)  # short side 24, portrait kept
    assert (reader.info.width, reader.info.height) == (WIDTH, HEIGHT)
    assert_upright(reader.get_frames([0, 3, 5]), width, height)


def identity(frames: torch.Tensor) -> torch.Tensor:
    return frames


@pytest.mark.parametrize("decode_timeout", [None, 30.0])
def test_training_and_evaluation_items_are_upright(rotated, decode_timeout):
    """The dataset (training and evaluation), in process and through the killable decode child."""
    path, _ = rotated
    common = {"clip_len": 2, "stride": 2, "transform": identity, "short_side": 24, "decode_timeout": decode_timeout}
    train = VideoClipDataset([VideoSample(str(path), 0)], train=True, **common)
    assert_upright(train[0]["video"], 24, 32)
    evaluation = VideoClipDataset([VideoSample(str(path), 0)], train=False, num_clips=2, **common)
    item = evaluation[0]
    assert item["valid"] and item["failures"] == []
    assert_upright(item["video"], 24, 32)  # both clips' frames, stacked


def test_inference_views_are_upright(rotated):
    """Predictor.predict and tools/infer.py decode their views with decode_views over a VideoReader."""
    path, _ = rotated
    views, clips = decode_views(VideoReader(path, short_side=32), clip_len=3, stride=1, num_clips=2,
                                transform=identity)
    assert clips == [[0, 1, 2], [3, 4, 5]]
    assert_upright(views, 32, 42)  # 48 x 64 displayed: short side 32, long side 64 * 32 / 48 rounded to even
