"""Helpers for the tool tests: grey videos whose class is their brightness, and checkpoints
built directly (no training) whose predictions are known in advance.

The "controlled" checkpoint is a real X3D-XS classifier (clip 4 x stride 1, crop 32, short
side 40) whose head is solved so that a clip of uniform grey value `BRIGHTNESS[c]` gives
logits `LOGIT_SCALE * onehot(PREDICTED[c])`: every class is predicted as itself except
"charlie", predicted as "alpha". The backbone's BatchNorm biases are randomised first: a
bias-free random network is positively homogeneous, so uniform clips would fall on two
rays in feature space and four brightness levels could not be told apart by a linear head.
"""
from __future__ import annotations

import importlib.util
import socket
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import torch

from videoft.checkpoint import RunCheckpoint
from videoft.config import Config, DataConfig, ModelConfig
from videoft.data.transforms import Preprocessing
from videoft.models.classifier import build_classifier

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["alpha", "bravo", "charlie", "delta"]  # sorted, as load_splits orders them
BRIGHTNESS = {"alpha": 30, "bravo": 90, "charlie": 150, "delta": 210}
PREDICTED = {"alpha": "alpha", "bravo": "bravo", "charlie": "alpha", "delta": "delta"}
LOGIT_SCALE = 10.0
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
GEOMETRY = {"clip_len": 4, "frame_stride": 1, "crop_size": 32, "short_side": 40,
            "mean": list(MEAN), "std": list(STD)}
EVAL_CLIPS = 3
WIDTH, HEIGHT, FPS = 48, 40, 25
NUM_FRAMES = 20  # eval clips (4 frames, stride 1, 3 clips): frames 0-3, 8-11, 16-19
CLIP_FRAMES = [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]


def load_tool(name: str) -> ModuleType:
    """Import tools/<name>.py (a script folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"videoft_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_grey_video(path: str | Path, values: Sequence[int], *, width: int = WIDTH, height: int = HEIGHT,
                     fps: int = FPS) -> Path:
    """A lossless (libx264rgb, crf 0) mp4 whose frame t is uniformly grey `values[t]`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264rgb", rate=Fraction(fps))
        stream.pix_fmt = "rgb24"
        stream.options = {"crf": "0", "preset": "ultrafast", "threads": "1"}
        stream.width, stream.height = width, height
        for v in values:
            frame = np.full((height, width, 3), v, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def grey_clip(value: int) -> torch.Tensor:  # [3, T, crop, crop]
    """The normalised model input of a clip that is uniformly `value` (what eval preprocessing gives)."""
    size, t = GEOMETRY["crop_size"], GEOMETRY["clip_len"]
    mean = torch.tensor(MEAN).view(3, 1, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1, 1)
    return (torch.full((3, t, size, size), value / 255.0) - mean) / std


def make_checkpoint(model: torch.nn.Module) -> RunCheckpoint:
    """A weights-only videoft checkpoint (what inference needs, no training state)."""
    cfg = Config(out_dir="unused", data=DataConfig(root="unused", clip_len=GEOMETRY["clip_len"],
                                                   frame_stride=GEOMETRY["frame_stride"],
                                                   crop_size=GEOMETRY["crop_size"],
                                                   short_side=GEOMETRY["short_side"], eval_clips=EVAL_CLIPS),
                 model=ModelConfig(backbone="x3d_xs", dropout=0.5))
    return RunCheckpoint(model=model.state_dict(), classes=list(CLASSES), backbone="x3d_xs",
                         preprocessing=Preprocessing.from_dict(GEOMETRY), config=cfg)


def build_controlled_model(predicted: dict[str, str] = PREDICTED, scale: float = LOGIT_SCALE) -> torch.nn.Module:
    """X3D-XS whose logits on a uniform clip of BRIGHTNESS[c] are scale * onehot(predicted[c])."""
    torch.manual_seed(0)
    model = build_classifier("x3d_xs", len(CLASSES), clip_len=GEOMETRY["clip_len"],
                             crop_size=GEOMETRY["crop_size"]).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.5)
        feats = model.backbone(torch.stack([grey_clip(BRIGHTNESS[c]) for c in CLASSES])).double()  # [K, D]
        a = torch.cat([feats, torch.ones(len(CLASSES), 1, dtype=feats.dtype)], 1)  # [K, D + 1]
        target = scale * torch.eye(len(CLASSES), dtype=feats.dtype)[
            [CLASSES.index(predicted[c]) for c in CLASSES]]  # [K, C]
        wb = torch.linalg.pinv(a) @ target  # [D + 1, C]: exact, the K features are independent
        linear = model.head[-1]
        linear.weight.copy_(wb[:-1].T.float())
        linear.bias.copy_(wb[-1].float())
        got = model(torch.stack([grey_clip(BRIGHTNESS[c]) for c in CLASSES]))
    assert torch.allclose(got, target.float(), atol=1e-2), got  # the construction itself worked
    return model


# The evaluation set: (class, frame values). The "bravo" video `mixed` is delta-grey except
# for its centre clip (frames 8-11), which is bravo-grey: its centre clip says bravo
# (right at clip level), two of its three clips say delta (wrong at video level).
_B, _D = BRIGHTNESS["bravo"], BRIGHTNESS["delta"]
MIXED = [_D] * 6 + [_B] * 8 + [_D] * 6
EVAL_VIDEOS = [
    ("alpha", "a1", [BRIGHTNESS["alpha"]] * NUM_FRAMES),
    ("alpha", "a2", [BRIGHTNESS["alpha"]] * NUM_FRAMES),
    ("bravo", "b1", [_B] * NUM_FRAMES),
    ("bravo", "mixed", MIXED),
    ("charlie", "c1", [BRIGHTNESS["charlie"]] * NUM_FRAMES),
    ("charlie", "c2", [BRIGHTNESS["charlie"]] * NUM_FRAMES),
    ("delta", "d1", [_D] * NUM_FRAMES),
]  # 7 videos: an odd number, so two ranks get unequal shares
