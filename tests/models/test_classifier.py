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
