"""Backbone zoo: one small spec per Kinetics-400 backbone, and `build_backbone` (weights, geometry, head removal).

Library quirks handled here (checked against pytorchvideo 0.1.5 / torchvision 0.29):
- pytorchvideo ResNet/X3D/SlowFast heads average with an AvgPool3d whose kernel equals the last
  feature map at the native clip length and crop (checked for every model below); any other geometry
  either fails or silently averages overlapping windows. We replace it with AdaptiveAvgPool3d(1),
  identical at the native geometry and equal to a model built for the new geometry elsewhere.
- torchvision s3d pools with AvgPool3d((2, 7, 7), stride 1) and then takes a mean: global at 16x224,
  but at its 64-frame training clip the edge frames get half weight. Replaced by the plain global mean.
- X3D and R(2+1)D-50 heads apply a Softmax in train AND eval mode, after the projection: with the
  projection removed it would softmax the features, so it is removed along with the library's
  pre-head dropout (VideoClassifier.head has its own dropout).
- MViT (both libraries) has positional embeddings for one clip length and crop: fixed geometry.
- X3D-XS, -S and -M have the same parameter shapes (they differ only in input geometry), so strict
  loading cannot tell their checkpoints apart: pick the spec that matches the file.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torchvision.models.video as tvv
from torchvision.models.feature_extraction import create_feature_extractor

with warnings.catch_warnings():
    # pytorchvideo 0.1.5 applies torch.jit.script to one of its helpers at import time, and this torch
    # warns about that on every start of every tool: nothing a user can act on, so it is silenced here.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from pytorchvideo.models import hub as pvhub
    from pytorchvideo.models.hub import csn as _pv_csn
    from pytorchvideo.models.hub import r2plus1d as _pv_r2p1
    from pytorchvideo.models.hub import resnet as _pv_resnet
    from pytorchvideo.models.hub import slowfast as _pv_slowfast
    from pytorchvideo.models.hub import vision_transformers as _pv_vit
    from pytorchvideo.models.hub import x3d as _pv_x3d

from videoft.choices import AUTO_STAGE, ON_MISSING_WEIGHTS, weights_source_problem
from videoft.errors import ConfigError, UserError, WeightsError
from videoft.models.weights import (
    WeightsUnavailableError,
    hash_prefix_in_name,
    load_strict,
    read_checkpoint,
    unwrap_state_dict,
    warn_random_init,
)

__all__ = ["BACKBONES", "BackboneSpec", "WeightsUnavailableError", "build_backbone", "get_backbone_spec"]


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone needs next to its weights: builder, stage map, head name, preprocessing, source."""

    name: str
    library: str  # "pytorchvideo" | "torchvision"
    builder: Callable[..., nn.Module]  # the library's own model (400-class head), random init
    stages: tuple[str, ...]  # dotted submodule names, stem first; with `head` they partition all parameters
    head: str  # dotted name of the classifier layer replaced by nn.Identity
    clip_len: int  # frames per clip of the published training recipe
    frame_stride: int  # sampling stride in frames (torchvision's 15 fps recipes: 2, assuming ~30 fps video)
    crop_size: int
    short_side: int  # resize-on-decode short side for the eval preset
    mean: tuple[float, float, float]  # normalisation on [0, 1] RGB
    std: tuple[float, float, float]
    weights_url: str | None  # official Kinetics-400 checkpoint
    weights_sha256: str | None  # sha256 prefix declared in the URL's file name (torch.hub check_hash)
    weights_format: str  # "pytorchvideo" -> {"model_state": sd}; "torchvision" -> plain state dict
    kinetics400_top1: float | None  # published top-1 (%)
    slowfast_alpha: int | None = None  # SlowFast: the slow pathway takes every alpha-th frame
    fixed_geometry: bool = False  # True: only (clip_len, crop_size) works (positional embeddings)
    global_pools: tuple[str, ...] = ()  # fixed-kernel pools replaced by AdaptiveAvgPool3d(1)
    head_extras: tuple[str, ...] = ()  # library dropout/softmax around the head, replaced by nn.Identity
    min_clip_len: int = 1  # smallest geometry the architecture runs at (measured)
    min_crop_size: int = 1
    drop_path_arg: str | None = None  # the builder's keyword for its stochastic depth rate (None: it has none)
    # stage outputs are [B, C, T, H, W] and torch.fx traces the model (model.feature_stage): the convolutional
    # single-pathway backbones; not SlowFast (two pathways), MViT and Swin (tokens; pytorchvideo's MViT has
    # data-dependent control flow)
    stage_features: bool = True


_PV_MEAN, _PV_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)  # PySlowFast / pytorchvideo hub preset
_RESNET_STAGES = tuple(f"blocks.{i}" for i in range(5))


def _pv(name: str, url: str, top1: float | None, **kw: Any) -> BackboneSpec:
    """A pytorchvideo hub model; the URL comes from the installed hub module."""
    kw.setdefault("short_side", 256)
    return BackboneSpec(name=name, library="pytorchvideo",
                        builder=functools.partial(getattr(pvhub, name), pretrained=False),
                        mean=_PV_MEAN, std=_PV_STD, weights_url=url, weights_sha256=None,
                        weights_format="pytorchvideo", kinetics400_top1=top1, **kw)


def _tv(name: str, weights_enum: Any, **kw: Any) -> BackboneSpec:
    """A torchvision model; URL, hash, crop, resize, mean/std and top-1 are read from its Weights enum."""
    w = weights_enum.KINETICS400_V1
    preset = w.transforms()
    return BackboneSpec(name=name, library="torchvision",
                        builder=functools.partial(getattr(tvv, name), weights=None),
                        crop_size=preset.crop_size[0], short_side=min(preset.resize_size),
                        mean=tuple(preset.mean), std=tuple(preset.std),
                        weights_url=w.url, weights_sha256=hash_prefix_in_name(w.url),
                        weights_format="torchvision",
                        kinetics400_top1=w.meta["_metrics"]["Kinetics-400"]["acc@1"], **kw)


def _x3d(name: str, clip_len: int, stride: int, crop: int, short: int, top1: float) -> BackboneSpec:
    return _pv(name, _pv_x3d.checkpoint_paths[name], top1,
               stages=(*_RESNET_STAGES, "blocks.5.pool"), head="blocks.5.proj",
               clip_len=clip_len, frame_stride=stride, crop_size=crop, short_side=short,
               global_pools=("blocks.5.pool.pool",), head_extras=("blocks.5.dropout", "blocks.5.activation"))


_VIDEO_RESNET = dict(stages=("stem", "layer1", "layer2", "layer3", "layer4"), head="fc",
                     clip_len=16, frame_stride=2)

# Top-1 (%): pytorchvideo docs/source/model_zoo.md (30 views) where listed, else the hub docstring
# (mvit_base_16x4; slowfast_r50's docstring says 76.4 where model_zoo.md says 76.94);
# torchvision: Weights.meta["_metrics"].
BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in (
    _x3d("x3d_xs", 4, 12, 160, 182, 69.12),
    _x3d("x3d_s", 13, 6, 160, 182, 73.33),
    _x3d("x3d_m", 16, 5, 224, 256, 75.94),
    _pv("slow_r50", _pv_resnet.checkpoint_paths["slow_r50"], 74.58,
        stages=_RESNET_STAGES, head="blocks.5.proj", clip_len=8, frame_stride=8, crop_size=224,
        global_pools=("blocks.5.pool",), head_extras=("blocks.5.dropout",)),
    _pv("slowfast_r50", _pv_slowfast.checkpoint_paths["slowfast_r50"], 76.94,
        stages=_RESNET_STAGES, head="blocks.6.proj", clip_len=32, frame_stride=2, crop_size=224,
        slowfast_alpha=4, global_pools=("blocks.5.pool.0", "blocks.5.pool.1"),
        head_extras=("blocks.6.dropout",), stage_features=False),
    _pv("r2plus1d_r50", _pv_r2p1.checkpoint_paths["r2plus1d_r50"], 76.01,
        stages=_RESNET_STAGES, head="blocks.5.proj", clip_len=16, frame_stride=4, crop_size=224,
        global_pools=("blocks.5.pool",), head_extras=("blocks.5.dropout", "blocks.5.activation")),
    _pv("csn_r101", _pv_csn.checkpoint_paths["csn_r101"], 77.0,
        stages=_RESNET_STAGES, head="blocks.5.proj", clip_len=32, frame_stride=2, crop_size=224,
        global_pools=("blocks.5.pool",)),
    _pv("mvit_base_16x4", _pv_vit.checkpoint_paths["mvit_base_16x4"], 78.9,
        stages=("patch_embed", "cls_positional_encoding", *(f"blocks.{i}" for i in range(16)),
                "norm_embed"),
        head="head.proj", clip_len=16, frame_stride=4, crop_size=224, fixed_geometry=True,
        head_extras=("head.dropout",), drop_path_arg="droppath_rate_block", stage_features=False),
    _tv("r3d_18", tvv.R3D_18_Weights, **_VIDEO_RESNET),
    _tv("mc3_18", tvv.MC3_18_Weights, **_VIDEO_RESNET),
    _tv("r2plus1d_18", tvv.R2Plus1D_18_Weights, **_VIDEO_RESNET),
    _tv("s3d", tvv.S3D_Weights,  # recipe: torchvision references/video_classification README (S3D)
        stages=tuple(f"features.{i}" for i in (0, 2, 3, 5, 6, 8, 9, 10, 11, 12, 14, 15)),
        head="classifier.1", clip_len=64, frame_stride=2,
        global_pools=("avgpool",), head_extras=("classifier.0",), min_clip_len=5, min_crop_size=17),
    _tv("mvit_v2_s", tvv.MViT_V2_S_Weights,
        stages=("conv_proj", "pos_encoding", *(f"blocks.{i}" for i in range(16)), "norm"),
        head="head.1", clip_len=16, frame_stride=4, fixed_geometry=True, head_extras=("head.0",),
        drop_path_arg="stochastic_depth_prob", stage_features=False),
    _tv("swin3d_t", tvv.Swin3D_T_Weights,
        stages=("patch_embed", *(f"features.{i}" for i in range(7)), "norm"),
        head="head", clip_len=32, frame_stride=2, stage_features=False),  # stochastic depth fixed at 0.1
)}


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec of a zoo backbone by name."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; allowed: {sorted(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(spec: BackboneSpec, *, clip_len: int | None = None, crop_size: int | None = None,
                   pretrained: str | None = None, weights: str | None = None,
                   on_missing_weights: str = "error", model_dir: str | None = None,
                   drop_path: float | None = None) -> tuple[nn.Module, int]:
    """Build the library model, load weights strictly, make pooling geometry-free, drop the head.

    Returns (backbone, D): `backbone(x)` gives pooled features [B, D] (SlowFast takes [slow, fast]).
    pretrained: "kinetics400" downloads spec.weights_url through torch.hub (cache: model_dir).
    weights: a local path or a URL (file:// included) of a checkpoint in spec.weights_format.
    on_missing_weights: "error" raises WeightsUnavailableError when the weights cannot be fetched;
        "random" logs a loud warning and keeps the random init.
    clip_len/crop_size: checked against fixed-geometry models; other models accept any geometry.
    drop_path: the stochastic depth rate of the backbones that have it (spec.drop_path_arg; None: the library's
        default, which is 0.2 for mvit_v2_s and 0 for mvit_base_16x4; swin3d_t has a fixed 0.1).
    """
    clip_len = spec.clip_len if clip_len is None else clip_len
    crop_size = spec.crop_size if crop_size is None else crop_size
    _check_geometry(spec, clip_len, crop_size)
    problem = weights_source_problem(pretrained, weights)
    if problem:
        raise ConfigError([problem])
    if on_missing_weights not in ON_MISSING_WEIGHTS:
        raise ValueError(f"on_missing_weights={on_missing_weights!r}; allowed: {ON_MISSING_WEIGHTS}")

    problem = drop_path_problem(spec, drop_path)
    if problem:
        raise ConfigError([problem])
    model = spec.builder(**({spec.drop_path_arg: drop_path} if drop_path is not None else {}))
    source, check_hash = weights, True
    if pretrained is not None:
        if spec.weights_url is None:
            raise WeightsError(f"{spec.name} has no official {pretrained} weights; pass weights=<path>")
        if hash_prefix_in_name(spec.weights_url) != spec.weights_sha256:
            raise ValueError(f"{spec.name}: weights_sha256={spec.weights_sha256!r} is not the hash in "
                             f"the file name of {spec.weights_url}")
        source, check_hash = spec.weights_url, spec.weights_sha256 is not None
    if source is not None:
        try:
            checkpoint = read_checkpoint(source, model_dir=model_dir, check_hash=check_hash)
        except WeightsUnavailableError as e:
            if on_missing_weights == "error":
                raise
            warn_random_init(source, e)
        else:
            load_strict(model, unwrap_state_dict(checkpoint, spec.weights_format, source), source)

    for name in spec.global_pools:
        _replace(model, name, nn.AdaptiveAvgPool3d(1))
    for name in spec.head_extras:
        _replace(model, name, nn.Identity())
    head = model.get_submodule(spec.head)
    if isinstance(head, nn.Linear):
        dim = head.in_features
    elif isinstance(head, nn.Conv3d):
        dim = head.in_channels
    else:
        raise TypeError(f"{spec.name}: head {spec.head} is a {type(head).__name__}, not Linear/Conv3d")
    _replace(model, spec.head, nn.Identity())
    return model, dim


def geometry_problem(spec: BackboneSpec, clip_len: int, crop_size: int) -> str | None:
    """Why `spec` cannot take clips of this length and crop, or None when it can."""
    if clip_len < spec.min_clip_len or crop_size < spec.min_crop_size:
        return (f"{spec.name} needs clip_len >= {spec.min_clip_len} and crop_size >= "
                f"{spec.min_crop_size}; got clip_len={clip_len}, crop_size={crop_size}")
    if spec.fixed_geometry and (clip_len, crop_size) != (spec.clip_len, spec.crop_size):
        return (f"{spec.name} only takes clip_len={spec.clip_len}, crop_size={spec.crop_size} (its positional "
                f"embeddings are sized for them); got clip_len={clip_len}, crop_size={crop_size}")
    return None


def drop_path_problem(spec: BackboneSpec, drop_path: float | None) -> str | None:
    """Why `spec` cannot take this stochastic depth rate, or None when it can."""
    if drop_path is None or spec.drop_path_arg is not None:
        return None
    having = sorted(s.name for s in BACKBONES.values() if s.drop_path_arg)
    return f"model.drop_path: {spec.name} has no stochastic depth (backbones with it: {', '.join(having)})"


def feature_stage_problem(spec: BackboneSpec, stage: str | None) -> str | None:
    """Why `spec` cannot give the features of `stage` (model.feature_stage; `auto` included), or None when it can."""
    if stage is None:
        return None
    if not spec.stage_features:
        having = sorted(s.name for s in BACKBONES.values() if s.stage_features)
        return (f"model.feature_stage: {spec.name} cannot give a stage's features (backbones that can: "
                f"{', '.join(having)})")
    if stage != AUTO_STAGE and stage not in spec.stages:
        return (f"model.feature_stage: {stage!r} is not a stage of {spec.name} (its stages: "
                f"{', '.join(spec.stages)}; or {AUTO_STAGE})")
    return None


def through_stage(spec: BackboneSpec, stage: str | None) -> BackboneSpec:
    """The spec of the backbone cut after `stage` (its stages up to that one), for freezing and LR groups."""
    if stage in (None, AUTO_STAGE):
        return spec
    return dataclasses.replace(spec, stages=spec.stages[:spec.stages.index(stage) + 1])


def cut_at_stage(backbone: nn.Module, spec: BackboneSpec, stage: str, *, clip_len: int | None = None,
                 crop_size: int | None = None) -> tuple[nn.Module, int]:
    """The backbone up to `stage`, its output averaged over time and space, and that output's width D.

    torchvision's create_feature_extractor traces the model (torch.fx) and keeps only what the stage's output
    needs; the kept submodules keep their names, so a cut model's weights are a subset of the whole one's
    and freezing names the same stages. Returns (module giving [B, D], D)."""
    problem = feature_stage_problem(spec, stage)
    if problem:
        raise ConfigError([problem])
    traced = create_feature_extractor(backbone, return_nodes={stage: "features"})
    graph = traced.train_graph  # one graph for both modes: these backbones switch modes only inside modules
    if graph.python_code("self").src != traced.eval_graph.python_code("self").src:
        raise ValueError(f"{spec.name}: its traced graph differs between train and eval mode; it cannot be cut")
    out = next(node for node in graph.nodes if node.op == "output")
    with graph.inserting_before(out):
        pooled = graph.call_method("mean", (out.args[0]["features"], (2, 3, 4)))  # [B, C, T, H, W] -> [B, C]
    out.args = (pooled,)
    cut = fx.GraphModule(traced, graph, class_name=f"{type(backbone).__name__}Through{stage.replace('.', '_')}")
    clip_len = spec.clip_len if clip_len is None else clip_len
    crop_size = spec.crop_size if crop_size is None else crop_size
    cut.eval()  # the width from one forward pass, without touching BatchNorm statistics
    with torch.no_grad():
        device = next(backbone.parameters()).device
        dim = cut(torch.zeros(1, 3, clip_len, crop_size, crop_size, device=device)).shape[1]
    return cut.train(backbone.training), dim


def _check_geometry(spec: BackboneSpec, clip_len: int, crop_size: int) -> None:
    problem = geometry_problem(spec, clip_len, crop_size)
    if problem:
        raise UserError(problem)


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    """Swap the submodule at a dotted path (works for Sequential/ModuleList indices too)."""
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    model.get_submodule(dotted)  # raises AttributeError naming the path if it does not exist
    setattr(parent, child, new)
