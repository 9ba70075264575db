"""Every shipped config loads and passes the checks that need no data or weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from videoft.config import load_config
from videoft.engine.distributed import DistInfo
from videoft.models.backbones import get_backbone_spec
from videoft.preflight import geometry_problems, runtime_problems
from videoft.recipe import resolve_preprocessing

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
ONE_GPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cuda", 0))


@pytest.mark.parametrize("path", [p for p in CONFIGS if not p.name.startswith("sweep_space")], ids=lambda p: p.name)
def test_config_loads_and_passes_preflight(path):
    cfg = load_config(path, ["data.root=/data/x"])  # load_config runs every cross-field check
    spec = get_backbone_spec(cfg.model.backbone)
    pre = resolve_preprocessing(cfg, spec)
    assert geometry_problems(cfg, spec, pre) == []
    assert runtime_problems(cfg, ONE_GPU)[0] == []
