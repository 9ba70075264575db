"""Fixtures for the model tests: backbones built once per module, small geometries, checkpoint files."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from videoft.models.backbones import BACKBONES, build_backbone


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run the model tests on one intra-op thread, then restore the setting.

    On 2 shared cores, 2 threads competing with other processes ran a training step 6x slower
    than 1 thread (OpenMP threads wait on each other); these tiny inputs gain nothing from 2.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def built() -> Callable[[str], tuple[nn.Module, int]]:
    """built(name) -> (backbone, D), random init, built once per test module (do not mutate)."""
    cache: dict[str, tuple[nn.Module, int]] = {}

    def get(name: str) -> tuple[nn.Module, int]:
        if name not in cache:
            cache[name] = build_backbone(BACKBONES[name])
        return cache[name]

    return get


@pytest.fixture(scope="module")
def x3d_xs_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An X3D-XS checkpoint in pytorchvideo's format {"model_state": sd} and its state dict."""
    torch.manual_seed(0)
    state = BACKBONES["x3d_xs"].builder().state_dict()
    path = tmp_path_factory.mktemp("pv") / "X3D_XS.pyth"
    torch.save({"model_state": state}, path)
    return path, state


@pytest.fixture(scope="module")
def r3d_18_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An r3d_18 checkpoint in torchvision's format (a plain state dict) and that state dict."""
    torch.manual_seed(0)
    state = BACKBONES["r3d_18"].builder().state_dict()
    path = tmp_path_factory.mktemp("tv") / "r3d_18.pth"
    torch.save(state, path)
    return path, state
