"""model.drop_path: the stochastic depth rate reaches the backbones that have it; elsewhere it is a config error."""
from __future__ import annotations

import pytest

from videoft.config import ConfigError, load_config
from videoft.models.backbones import get_backbone_spec
from videoft.models.classifier import build_classifier
from videoft.preflight import geometry_problems
from videoft.recipe import resolve_preprocessing


def _rates(model) -> list[float]:
    """Every stochastic-depth module's rate (torchvision: StochasticDepth.p; pytorchvideo: DropPath.drop_prob)."""
    return sorted(float(getattr(m, "p", getattr(m, "drop_prob", 0.0))) for m in model.modules()
                  if type(m).__name__ in ("StochasticDepth", "DropPath"))


def test_the_rate_reaches_mvit_in_both_libraries():
    # torchvision's MViT-v2-S: the rate rises linearly over the blocks to the one given (its own default 0.2)
    assert max(_rates(build_classifier("mvit_v2_s", 3))) == pytest.approx(0.2)
    assert max(_rates(build_classifier("mvit_v2_s", 3, drop_path=0.3))) == pytest.approx(0.3)
    # pytorchvideo's MViT-B has none by default
    assert _rates(build_classifier("mvit_base_16x4", 3)) == []
    assert max(_rates(build_classifier("mvit_base_16x4", 3, drop_path=0.1))) == pytest.approx(0.1)


def test_a_backbone_without_stochastic_depth_refuses_a_rate():
    with pytest.raises(ConfigError, match="x3d_xs has no stochastic depth .*mvit_base_16x4, mvit_v2_s"):
        build_classifier("x3d_xs", 3, clip_len=4, crop_size=32, drop_path=0.1)
    cfg = load_config(None, ["data.root=x", "model.backbone=x3d_xs", "model.drop_path=0.1"])
    spec = get_backbone_spec("x3d_xs")
    assert any("model.drop_path: x3d_xs has no stochastic depth" in p
               for p in geometry_problems(cfg, spec, resolve_preprocessing(cfg, spec)))
    with pytest.raises(ConfigError, match=r"model.drop_path: 1.0 is out of range"):
        load_config(None, ["data.root=x", "model.backbone=mvit_v2_s", "model.drop_path=1.0"])
