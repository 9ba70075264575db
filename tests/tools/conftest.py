"""Fixtures for the tool tests: checkpoints built without training, and the grey evaluation set.

The helpers and constants they use live in tool_helpers.py (importable from the test modules).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from videoft.models.classifier import build_classifier

from .tool_helpers import CLASSES, EVAL_VIDEOS, GEOMETRY, build_controlled_model, make_checkpoint, write_grey_video


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """These models are tiny: a second intra-op thread only adds OpenMP start-up and, on a busy
    machine, spin-waiting (a 40 ms forward became seconds). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def controlled_checkpoint(tmp_path_factory) -> Path:
    """Checkpoint of build_controlled_model (class names, geometry and config like a real run)."""
    path = tmp_path_factory.mktemp("ckpt") / "controlled.pt"
    make_checkpoint(build_controlled_model()).save(path)
    return path


@pytest.fixture(scope="package")
def plain_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised X3D-XS checkpoint (ordinary weights, for export)."""
    torch.manual_seed(3)
    model = build_classifier("x3d_xs", len(CLASSES), clip_len=GEOMETRY["clip_len"],
                             crop_size=GEOMETRY["crop_size"])
    path = tmp_path_factory.mktemp("ckpt") / "plain.pt"
    make_checkpoint(model).save(path)
    return path


@pytest.fixture(scope="package")
def eval_data(tmp_path_factory) -> Path:
    """root/test/<class>/<name>.mp4 for EVAL_VIDEOS (lossless grey videos, 48x40, 20 frames)."""
    root = tmp_path_factory.mktemp("greydata")
    for cls, name, values in EVAL_VIDEOS:
        write_grey_video(root / "test" / cls / f"{name}.mp4", values)
    return root


@pytest.fixture(scope="package")
def subprocess_env() -> dict[str, str]:
    """Environment for tool subprocesses: one OpenMP thread each (see one_torch_thread)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}
