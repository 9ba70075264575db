"""The backbone zoo: specs, stage maps, head removal, geometry, pooling equivalence."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
from pytorchvideo.models.x3d import create_x3d

from videoft.models.backbones import BACKBONES, BackboneSpec, build_backbone, get_backbone_spec
from videoft.models.classifier import VideoClassifier
from videoft.models.weights import hash_prefix_in_name

REQUIRED = ("x3d_xs", "x3d_s", "x3d_m", "slow_r50", "slowfast_r50", "r2plus1d_r50", "csn_r101",
            "mvit_base_16x4", "r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t")
FEATURE_DIM = {"x3d_xs": 2048, "x3d_s": 2048, "x3d_m": 2048, "slow_r50": 2048, "slowfast_r50": 2304,
               "r2plus1d_r50": 2048, "csn_r101": 2048, "mvit_base_16x4": 768, "r3d_18": 512, "mc3_18": 512,
               "r2plus1d_18": 512, "s3d": 1024, "mvit_v2_s": 768, "swin3d_t": 768}
NAMES = sorted(BACKBONES)
# The fixed-geometry MViTs only run at 16x224: ~3 s per forward on one CPU thread.
EXPENSIVE_FORWARD = [n for n in NAMES if BACKBONES[n].fixed_geometry]
CHEAP = [n for n in NAMES if n not in EXPENSIVE_FORWARD]


def small_geometry(spec: BackboneSpec) -> tuple[int, int]:
    """(clip_len, crop_size): the smallest cheap geometry a geometry-free backbone accepts."""
    clip_len = 2 * spec.slowfast_alpha if spec.slowfast_alpha else 4
    return max(clip_len, spec.min_clip_len), max(32, spec.min_crop_size)


def library_model(spec: BackboneSpec) -> nn.Module:
    """The library model on the meta device (no memory, no init cost) where it builds there."""
    try:
        with torch.device("meta"):
            return spec.builder()
    except RuntimeError:  # pytorchvideo MViT calls .item() while building
        return spec.builder()


def owners(name: str, prefixes: tuple[str, ...]) -> list[str]:
    """The prefixes (dotted module names) a parameter name falls under."""
    return [p for p in prefixes if name == p or name.startswith(p + ".")]


def test_zoo_has_every_required_backbone():
    assert set(REQUIRED) <= set(BACKBONES)


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'x3d_xxl'.*x3d_xs"):
        get_backbone_spec("x3d_xxl")


@pytest.mark.parametrize("name", NAMES)
def test_spec_metadata(name):
    spec = get_backbone_spec(name)
    assert spec.name == name and spec.library in ("pytorchvideo", "torchvision")
    assert spec.weights_format == spec.library
    assert len(spec.mean) == len(spec.std) == 3 and all(0 < s < 1 for s in spec.std)
    assert spec.short_side >= spec.crop_size and spec.clip_len >= spec.min_clip_len
    assert spec.kinetics400_top1 is None or 60 < spec.kinetics400_top1 < 90
    if spec.library == "pytorchvideo":
        assert spec.weights_url.startswith("https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/")
        assert spec.weights_sha256 is None
    else:
        assert spec.weights_url.startswith("https://download.pytorch.org/models/")
        assert spec.weights_sha256 and spec.weights_sha256 == hash_prefix_in_name(spec.weights_url)
    assert (spec.slowfast_alpha is not None) == (name == "slowfast_r50")


@pytest.mark.parametrize("name", NAMES)
def test_stages_and_head_partition_the_library_model(name):
    """Each parameter of the library model lies under exactly one stage or the head."""
    spec = get_backbone_spec(name)
    model = library_model(spec)
    prefixes = (*spec.stages, spec.head)
    for pname, _ in model.named_parameters():
        assert len(owners(pname, prefixes)) == 1, (pname, owners(pname, prefixes))
    for prefix in prefixes:
        assert any(owners(p, (prefix,)) for p, _ in model.named_parameters()), f"{prefix} has no parameters"
    head = model.get_submodule(spec.head)
    assert isinstance(head, (nn.Linear, nn.Conv3d))
    assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == 400


@pytest.mark.parametrize("name", NAMES)
def test_built_backbone_drops_head_and_stages_cover_it(name, built):
    spec = get_backbone_spec(name)
    backbone, dim = built(name)
    assert dim == FEATURE_DIM[name]
    assert isinstance(backbone.get_submodule(spec.head), nn.Identity)
    for pname, _ in backbone.named_parameters():
        assert len(owners(pname, spec.stages)) == 1, pname
    for extra in spec.head_extras:
        assert isinstance(backbone.get_submodule(extra), nn.Identity)
    for pool in spec.global_pools:
        assert isinstance(backbone.get_submodule(pool), nn.AdaptiveAvgPool3d)


@pytest.mark.parametrize("name", CHEAP)
def test_forward_small_geometry(name, built):
    spec = get_backbone_spec(name)
    backbone, dim = built(name)
    model = VideoClassifier(backbone, dim, 3, slowfast_alpha=spec.slowfast_alpha).eval()
    clip_len, crop = small_geometry(spec)
    with torch.no_grad():
        assert model(torch.randn(2, 3, clip_len, crop, crop)).shape == (2, 3)


@pytest.mark.parametrize("name", EXPENSIVE_FORWARD)
def test_forward_fixed_geometry(name, built):
    spec = get_backbone_spec(name)
    backbone, dim = built(name)
    model = VideoClassifier(backbone, dim, 3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, spec.clip_len, spec.crop_size, spec.crop_size)).shape == (1, 3)


@pytest.mark.parametrize("name", EXPENSIVE_FORWARD)
def test_fixed_geometry_rejects_another(name):
    with pytest.raises(ValueError, match=r"clip_len=16, crop_size=224.*got clip_len=8, crop_size=224"):
        build_backbone(get_backbone_spec(name), clip_len=8)
    with pytest.raises(ValueError, match="crop_size=112"):
        build_backbone(get_backbone_spec(name), crop_size=112)


def test_minimum_geometry_is_checked():
    with pytest.raises(ValueError, match=r"s3d needs clip_len >= 5 and crop_size >= 17"):
        build_backbone(get_backbone_spec("s3d"), clip_len=4)
    with pytest.raises(ValueError, match="crop_size=16"):
        build_backbone(get_backbone_spec("s3d"), crop_size=16)


def test_slowfast_gets_both_pathways_from_one_tensor(built):
    backbone, dim = built("slowfast_r50")
    model = VideoClassifier(backbone, dim, 3, slowfast_alpha=4).eval()
    seen = []
    hook = backbone.blocks[0].register_forward_pre_hook(lambda m, args: seen.append([x.shape for x in args[0]]))
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 8, 32, 32))
    finally:
        hook.remove()
    assert seen == [[(1, 3, 2, 32, 32), (1, 3, 8, 32, 32)]]  # [slow: every 4th frame, fast: all]


@pytest.mark.parametrize("name", [n for n in NAMES if BACKBONES[n].global_pools])
def test_fixed_pools_cover_the_whole_map_at_native_geometry(name):
    """AdaptiveAvgPool3d(1) is only a faithful replacement if the library kernel spans the feature map."""
    spec = get_backbone_spec(name)
    with torch.device("meta"):
        model = spec.builder().eval()
    seen = {}
    for pool in spec.global_pools:
        model.get_submodule(pool).register_forward_hook(
            lambda m, args, out, pool=pool: seen.__setitem__(pool, (tuple(args[0].shape[2:]), tuple(m.kernel_size))))
    native = 16 if name == "s3d" else spec.clip_len  # s3d's kernel (2, 7, 7) spans 16x224, not its 64-frame recipe
    x = torch.empty(1, 3, native, spec.crop_size, spec.crop_size, device="meta")
    model([x[:, :, :: spec.slowfast_alpha], x] if spec.slowfast_alpha else x)
    assert set(seen) == set(spec.global_pools)
    for shape, kernel in seen.values():
        assert shape == tuple(int(k) for k in kernel)


@pytest.fixture(scope="module")
def x3d_xs_pair(x3d_xs_file):
    """The library X3D-XS (eval, softmax removed: compare logits) and our backbone, same weights."""
    path, state = x3d_xs_file
    library = get_backbone_spec("x3d_xs").builder()
    library.load_state_dict(state)
    library.blocks[5].activation = nn.Identity()
    ours, _ = build_backbone(get_backbone_spec("x3d_xs"), weights=str(path))
    return library.eval(), ours.eval()


def test_adaptive_pool_is_identical_at_native_geometry(x3d_xs_pair):
    library, ours = x3d_xs_pair
    x = torch.randn(1, 3, 4, 160, 160)  # X3D-XS native: 4 frames, 160 crop
    with torch.no_grad():
        expected = library(x)  # [1, 400] logits
        features = ours(x)  # [1, 2048]
        got = library.blocks[5].proj(features)
    assert features.shape == (1, 2048)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_other_geometry_equals_library_built_for_it(x3d_xs_pair, x3d_xs_file):
    """At 8x96 our backbone equals create_x3d(input_clip_length=8, input_crop_size=96); the library
    model built for 4x160 also runs at 6x160, but averages overlapping windows: silently different."""
    library, ours = x3d_xs_pair
    rebuilt = create_x3d(input_clip_length=8, input_crop_size=96).eval()
    rebuilt.load_state_dict(x3d_xs_file[1])
    rebuilt.blocks[5].activation = nn.Identity()
    with torch.no_grad():
        x = torch.randn(1, 3, 8, 96, 96)
        torch.testing.assert_close(rebuilt.blocks[5].proj(ours(x)), rebuilt(x), rtol=1e-5, atol=1e-6)
        x = torch.randn(1, 3, 6, 160, 160)
        stale, got = library(x), library.blocks[5].proj(ours(x))
    assert not torch.allclose(stale, got, rtol=1e-3, atol=1e-5)


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_backbone_spec("x3d_xs").clip_len = 8
