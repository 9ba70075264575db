"""VideoClassifier: named backbone and head, shapes, argument checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from videoft.models.classifier import VideoClassifier, build_classifier


class Flat(nn.Module):
    """A stand-in backbone: [B, C, T, H, W] -> [B, C * T] (or a wrong shape on request)."""

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.wrong = wrong
        self.norm = nn.BatchNorm3d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).mean(dim=(3, 4))  # [B, C, T]
        return x if self.wrong else x.flatten(1)


def test_build_classifier_layout():
    model = build_classifier("x3d_xs", 7, dropout=0.3)
    assert isinstance(model, VideoClassifier) and model.backbone_name == "x3d_xs"
    assert isinstance(model.head[0], nn.Dropout) and model.head[0].p == 0.3
    assert isinstance(model.head[1], nn.Linear) and (model.head[1].in_features, model.head[1].out_features) == (2048, 7)
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", "head"}
    assert model.eval()(torch.randn(2, 3, 4, 32, 32)).shape == (2, 7)


def test_uint8_clips_are_normalised_with_the_backbones_mean_and_std():
    mean, std = (0.45, 0.40, 0.35), (0.225, 0.25, 0.30)
    model = VideoClassifier(Flat(), 6, 2, mean=mean, std=std)
    values = (30, 128, 250)
    clip = torch.tensor(values, dtype=torch.uint8).view(1, 3, 1, 1, 1).expand(2, 3, 2, 4, 4)
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip(values, mean, std)]).view(1, 3, 1, 1, 1)
    out = model.normalize(clip)
    assert out.dtype == torch.float32 and torch.allclose(out, expected.expand_as(out), atol=1e-5)
    floats = torch.randn(2, 3, 2, 4, 4)
    assert model.normalize(floats) is floats  # float clips are taken as normalised already
    # the forward pass normalises: uint8 clips and their normalised floats give the same logits
    model.eval()
    assert torch.allclose(model(clip), model(out), atol=1e-6)
    # a classifier without mean/std refuses uint8 rather than feeding 0..255 to the backbone
    with pytest.raises(ValueError, match="mean/std"):
        VideoClassifier(Flat(), 6, 2)(clip)


def test_build_classifier_normalises_with_its_backbones_spec():
    model = build_classifier("x3d_xs", 3).eval()
    clip = torch.randint(0, 256, (1, 3, 4, 32, 32), dtype=torch.uint8)
    mean = torch.tensor([0.45] * 3).view(1, 3, 1, 1, 1)  # pytorchvideo's Kinetics normalisation
    std = torch.tensor([0.225] * 3).view(1, 3, 1, 1, 1)
    assert torch.allclose(model(clip), model((clip / 255 - mean) / std), atol=1e-4)
    assert "input_shift" not in model.state_dict()  # checkpoints keep weights only


def test_feature_extractor_gives_the_heads_input():
    from videoft.models.classifier import FeatureExtractor
    model = build_classifier("x3d_xs", 3, dropout=0.0).eval()
    clip = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    features = FeatureExtractor(model).eval()(clip)
    assert features.shape == (2, 2048)
    assert torch.allclose(model.head(features), model(clip), atol=1e-5)


def test_train_returns_self_and_sets_modes():
    model = VideoClassifier(Flat(), 6, 2)
    assert model.train() is model and model.backbone.norm.training
    assert model.eval() is model and not model.backbone.norm.training


def test_rejects_non_clip_input():
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\].*\(3, 2, 8, 8\)"):
        VideoClassifier(Flat(), 6, 2)(torch.randn(3, 2, 8, 8))


def test_checks_feature_shape():
    with pytest.raises(RuntimeError, match=r"backbone returned \(1, 3, 2\), expected \[B, 6\]"):
        VideoClassifier(Flat(wrong=True), 6, 2)(torch.randn(1, 3, 2, 8, 8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=0), "num_classes=0"),
    (dict(num_classes=2, dropout=1.0), "dropout=1.0"),
    (dict(num_classes=2, slowfast_alpha=0), "slowfast_alpha=0"),
])
def test_bad_arguments(kwargs, match):
    num_classes = kwargs.pop("num_classes")
    with pytest.raises(ValueError, match=match):
        VideoClassifier(Flat(), 6, num_classes, **kwargs)


def test_residual_input_feeds_the_backbone_frame_differences():
    from videoft.models.classifier import frame_residuals

    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4, 1) ** 2  # [B, C, T, H, W], T = 3
    out = frame_residuals(x)
    assert out.shape == x.shape
    diff = x[:, :, 1:] - x[:, :, :-1]
    assert torch.equal(out[:, :, 1:], diff) and torch.equal(out[:, :, 0], diff[:, :, 0])
    with pytest.raises(ValueError, match="at least 2 frames"):
        frame_residuals(x[:, :, :1])
    # in the model: the same logits for a clip and the clip made brighter (the appearance is gone), and a
    # static clip gives the features of a zero clip; an rgb model sees both differences
    torch.manual_seed(0)
    residual = build_classifier("x3d_xs", 3, input_frames="residual").eval()
    rgb = build_classifier("x3d_xs", 3).eval()
    clip = torch.randint(0, 200, (2, 3, 4, 32, 32), dtype=torch.uint8)
    brighter, static = clip + 40, clip[:, :, :1].expand_as(clip)
    with torch.no_grad():
        assert torch.allclose(residual(clip), residual(brighter), atol=1e-5)
        assert not torch.allclose(rgb(clip), rgb(brighter), atol=1e-3)
        assert torch.allclose(residual.features(static), residual.features(static.flip(0)), atol=1e-6)
    with pytest.raises(ValueError, match="input_frames='flow'"):
        build_classifier("x3d_xs", 3, input_frames="flow")
