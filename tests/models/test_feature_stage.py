"""model.feature_stage: the head reads one stage's pooled output; the later stages are gone, the kept weights
are the whole model's, and freezing, loading and resuming name the same stages."""
from __future__ import annotations

import pytest
import torch

from videoft.errors import ConfigError
from videoft.models.backbones import BACKBONES, build_backbone, get_backbone_spec, through_stage
from videoft.models.classifier import StageFeatures, build_classifier
from videoft.models.freezing import freeze_stages


@pytest.mark.parametrize("name, stage", [("s3d", "features.8"), ("x3d_xs", "blocks.3"), ("r2plus1d_18", "layer2")])
def test_the_cut_model_gives_the_stage_output_averaged_and_keeps_only_the_weights_it_needs(name, stage):
    torch.manual_seed(0)
    whole, _ = build_backbone(get_backbone_spec(name), clip_len=8, crop_size=32)
    whole.eval()
    seen = {}
    whole.get_submodule(stage).register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        whole(x)
    model = build_classifier(name, 3, clip_len=8, crop_size=32)
    model.backbone.load_state_dict(whole.state_dict())
    model.cut_at(stage, clip_len=8, crop_size=32)
    model.eval()
    with torch.no_grad():
        features = model.backbone(x)
    assert torch.allclose(features, seen["out"].mean(dim=(2, 3, 4)), atol=1e-6)
    assert model.feature_dim == seen["out"].shape[1] == model.head[1].in_features
    kept, full = model.backbone.state_dict(), whole.state_dict()
    assert set(kept) < set(full) and all(torch.equal(v, full[k]) for k, v in kept.items())
    later = get_backbone_spec(name).stages[get_backbone_spec(name).stages.index(stage) + 1]
    assert not any(k.startswith(later + ".") for k in kept)  # the stages after the cut are gone


def test_freezing_a_cut_model_counts_its_own_stages():
    model = build_classifier("s3d", 2, clip_len=8, crop_size=32, feature_stage="features.5")
    spec = through_stage(get_backbone_spec("s3d"), "features.5")
    assert spec.stages == ("features.0", "features.2", "features.3", "features.5")
    freeze_stages(model, spec, len(spec.stages), bn="frozen")  # every kept stage: a linear probe
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.1.weight", "head.1.bias"]


def test_a_stage_that_is_not_there_or_a_backbone_that_cannot_be_cut_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'layer9' is not a stage of r3d_18 \(its stages: stem, layer1"):
        build_classifier("r3d_18", 2, clip_len=8, crop_size=32, feature_stage="layer9")
    with pytest.raises(ConfigError, match="swin3d_t cannot give a stage's features"):
        build_classifier("swin3d_t", 2, feature_stage="features.2")
    assert not BACKBONES["slowfast_r50"].stage_features and BACKBONES["slow_r50"].stage_features


def test_every_stage_side_by_side_equals_each_cut_model():
    """StageFeatures (model.feature_stage=auto caches these): stage s's columns are what the model cut at s
    gives, so the probe solved on them fits the cut model exactly."""
    torch.manual_seed(0)
    model = build_classifier("x3d_xs", 3, clip_len=4, crop_size=32).eval()
    spec = get_backbone_spec("x3d_xs")
    both = StageFeatures(model, spec.stages, clip_len=4, crop_size=32)
    x = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        side_by_side = both(x)
        assert side_by_side.shape == (2, sum(both.widths.values())) and len(both.widths) == len(spec.stages)
        for stage in ("blocks.1", "blocks.3", spec.stages[-1]):
            cut = build_classifier("x3d_xs", 3, clip_len=4, crop_size=32)
            cut.load_state_dict(model.state_dict())
            cut.cut_at(stage, clip_len=4, crop_size=32)
            assert torch.allclose(side_by_side[:, both.columns(stage)], cut.eval().features(x), atol=1e-5), stage
        assert torch.allclose(side_by_side[:, both.columns(spec.stages[-1])], model.features(x), atol=1e-5)
    assert not any(m._forward_hooks for m in model.modules())  # the hooks live only during a forward pass
