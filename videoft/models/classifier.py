"""VideoClassifier: a feature backbone (`.backbone`) plus a new linear head (`.head`) for our classes."""
from __future__ import annotations

import torch
import torch.nn as nn

from videoft.choices import INPUT_FRAMES
from videoft.models.backbones import build_backbone, cut_at_stage, get_backbone_spec


def frame_residuals(x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] -> [B, C, T, H, W]
    """Each frame minus the one before it (residual frames: Tao, Wang and Yamasaki, "Rethinking motion
    representation: residual frames with 3D ConvNets", IEEE TIP 2021): what moved, without the static appearance.
    T frames give T - 1 differences; the first is repeated in front so the clip keeps its length (and every
    backbone its geometry)."""
    if x.shape[2] < 2:
        raise ValueError(f"residual frames need clips of at least 2 frames, got {x.shape[2]}")
    diff = x[:, :, 1:] - x[:, :, :-1]
    return torch.cat([diff[:, :, :1], diff], dim=2)


class VideoClassifier(nn.Module):
    """Backbone features [B, D] -> dropout -> linear logits; frozen BatchNorm stays in eval mode.

    Clips come in as uint8 `[B, C, T, H, W]` straight from the data loader and are normalised here with
    the backbone's `mean`/`std` (on [0, 1] RGB), on the model's device; float clips are taken as already
    normalised (exported models, callers that normalise themselves).

    Stage names used by freezing and LR groups are "backbone.<stage>" (BackboneSpec.stages) and "head".
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, *,
                 dropout: float = 0.5, slowfast_alpha: int | None = None,
                 mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                 input_frames: str = "rgb") -> None:
        super().__init__()
        if input_frames not in INPUT_FRAMES:
            raise ValueError(f"input_frames={input_frames!r}; allowed: {', '.join(INPUT_FRAMES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}; must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}; allowed: 0 <= dropout < 1")
        if slowfast_alpha is not None and slowfast_alpha < 1:
            raise ValueError(f"slowfast_alpha={slowfast_alpha}; allowed: None or >= 1")
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.feature_dim = feature_dim
        self.feature_stage: str | None = None  # cut_at: the backbone stage whose features the head reads
        self.num_classes = num_classes
        self.input_frames = input_frames
        self.slowfast_alpha = slowfast_alpha
        # names (relative to this model) of the BatchNorm modules kept in eval mode (set_frozen_bn)
        self.frozen_bn_modules: frozenset[str] = frozenset()
        self.has_normalization = mean is not None and std is not None
        # uint8 -> normalised float in one multiply-add: (x / 255 - mean) / std == (x - 255 mean) / (255 std).
        # Not persistent: checkpoints keep only weights, and the values come from the backbone's spec.
        self.register_buffer("input_shift", torch.tensor(mean or (0.0,) * 3).mul(255).view(1, 3, 1, 1, 1),
                             persistent=False)
        self.register_buffer("input_scale", 1 / torch.tensor(std or (1 / 255,) * 3).mul(255).view(1, 3, 1, 1, 1),
                             persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] uint8 -> float (float: unchanged)
        """uint8 clips as the loader gives them -> normalised float32; float clips pass unchanged."""
        if x.dtype != torch.uint8:
            return x
        if not self.has_normalization:
            raise ValueError("this model was built without mean/std: give it normalised float clips")
        return (x.to(self.input_shift.dtype) - self.input_shift) * self.input_scale

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] -> [B, D]
        """Pooled backbone features of a clip batch (what the linear-probe cache stores)."""
        if x.ndim != 5:
            raise ValueError(f"expected a clip batch [B, C, T, H, W], got shape {tuple(x.shape)}")
        x = self.normalize(x)
        if self.input_frames == "residual":
            x = frame_residuals(x)
        # SlowFast takes [slow, fast]; building the pathways here keeps the data pipeline one-tensor.
        inputs = [x[:, :, :: self.slowfast_alpha], x] if self.slowfast_alpha else x
        features = self.backbone(inputs)  # [B, D]
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise RuntimeError(f"backbone returned {tuple(features.shape)}, expected [B, {self.feature_dim}]")
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] -> [B, num_classes]
        return self.head(self.features(x))

    def cut_at(self, stage: str, *, clip_len: int | None = None, crop_size: int | None = None) -> None:
        """Read the features of one backbone stage instead of the last (model.feature_stage): the stages after
        it are dropped and the head is made anew for the stage's width. Called after any weights are loaded."""
        self.backbone, self.feature_dim = cut_at_stage(self.backbone, get_backbone_spec(self.backbone_name), stage,
                                                       clip_len=clip_len, crop_size=crop_size)
        old = self.head[1]
        self.head[1] = nn.Linear(self.feature_dim, self.num_classes).to(old.weight.device, old.weight.dtype)
        self.feature_stage = stage

    def set_frozen_bn(self, names: set[str] | frozenset[str]) -> None:
        """Keep these BatchNorm modules in eval mode (running statistics fixed), whatever train() says;
        every other BatchNorm follows the model's mode again."""
        for name in names:
            if not isinstance(self.get_submodule(name), nn.modules.batchnorm._BatchNorm):
                raise ValueError(f"{name} is not a BatchNorm module")
        self.frozen_bn_modules = frozenset(names)
        self.train(self.training)

    def train(self, mode: bool = True) -> VideoClassifier:
        """Like nn.Module.train, then put frozen BatchNorm back in eval mode (mmaction2's norm_eval)."""
        super().train(mode)
        if mode:
            for name in self.frozen_bn_modules:
                self.get_submodule(name).eval()
        return self


class FeatureExtractor(nn.Module):
    """A classifier seen as its features: `forward` is `classifier.features` (normalisation and SlowFast
    pathways included), `eval()`/`train()` reach the classifier (frozen BatchNorm stays frozen)."""

    def __init__(self, classifier: VideoClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] -> [B, D]
        return self.classifier.features(x)


class StageFeatures(FeatureExtractor):
    """Every stage's features side by side: the pooled output of each of `stages` of the backbone, as `cut_at`
    would give it, concatenated [B, sum of widths] (model.feature_stage=auto: one pass caches them all).
    `widths` {stage: D} comes from one forward pass of a zero clip of the run's geometry."""

    def __init__(self, classifier: VideoClassifier, stages: tuple[str, ...], *, clip_len: int, crop_size: int):
        super().__init__(classifier)
        self.stages = stages
        was_training = classifier.training
        classifier.eval()
        with torch.no_grad():
            pooled = self._pooled(torch.zeros(1, 3, clip_len, crop_size, crop_size,
                                              device=next(classifier.parameters()).device))
        classifier.train(was_training)
        self.widths = {stage: p.shape[1] for stage, p in zip(stages, pooled)}

    def _pooled(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs: dict[str, torch.Tensor] = {}
        backbone = self.classifier.backbone
        hooks = [backbone.get_submodule(s).register_forward_hook(lambda m, i, o, s=s: outs.__setitem__(s, o))
                 for s in self.stages]
        try:
            self.classifier.features(x)
        finally:
            for hook in hooks:
                hook.remove()
        return [outs[s].mean(dim=(2, 3, 4)) for s in self.stages]  # [B, C, T, H, W] -> [B, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] -> [B, sum D]
        return torch.cat(self._pooled(x), dim=1)

    def columns(self, stage: str) -> slice:
        """Where `stage`'s features sit in the concatenation."""
        start = 0
        for name, width in self.widths.items():
            if name == stage:
                return slice(start, start + width)
            start += width
        raise KeyError(stage)


def build_classifier(name: str, num_classes: int, *, clip_len: int | None = None,
                     crop_size: int | None = None, pretrained: str | None = None,
                     weights: str | None = None, on_missing_weights: str = "error",
                     dropout: float = 0.5, model_dir: str | None = None,
                     drop_path: float | None = None, feature_stage: str | None = None,
                     input_frames: str = "rgb") -> VideoClassifier:
    """A zoo backbone (see build_backbone for the weight arguments) with a fresh num_classes head; with
    `feature_stage`, cut after that stage (cut_at)."""
    spec = get_backbone_spec(name)
    backbone, dim = build_backbone(spec, clip_len=clip_len, crop_size=crop_size, pretrained=pretrained,
                                   weights=weights, on_missing_weights=on_missing_weights,
                                   model_dir=model_dir, drop_path=drop_path)
    model = VideoClassifier(backbone, dim, num_classes, dropout=dropout, slowfast_alpha=spec.slowfast_alpha,
                            mean=spec.mean, std=spec.std, input_frames=input_frames)
    model.backbone_name = name
    if feature_stage is not None:
        model.cut_at(feature_stage, clip_len=clip_len, crop_size=crop_size)
    return model
