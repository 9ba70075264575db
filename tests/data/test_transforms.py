"""Train/eval presets: shapes, uint8 out, one set of random parameters per clip (normalisation: the model's)."""
from __future__ import annotations

import pytest
import torch

from videoft.data.transforms import EvalPreset, TrainPreset, build_transform


def static_clip(num_frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:  # [T, H, W, C] uint8
    """The same random image repeated over time."""
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return image.expand(num_frames, -1, -1, -1).contiguous()


def gradient_clip(num_frames: int, height: int, width: int) -> torch.Tensor:  # [T, H, W, C] uint8
    """Columns and rows numbered in the pixel values: every crop position looks different."""
    x = torch.arange(width).mul(255 // max(width - 1, 1)).view(1, width).expand(height, width)
    y = torch.arange(height).mul(255 // max(height - 1, 1)).view(height, 1).expand(height, width)
    image = torch.stack([x, y, (x + y) // 2], dim=-1).to(torch.uint8)
    return image.expand(num_frames, -1, -1, -1).contiguous()


def train_preset(**kw) -> TrainPreset:
    return TrainPreset(crop_size=kw.pop("crop_size", 32), scale_range=kw.pop("scale_range", (40, 56)), **kw)


def test_train_preset_shape_and_dtype():
    out = train_preset()(static_clip(8, 48, 64))
    assert out.shape == (3, 8, 32, 32)  # [C, T, crop, crop]
    assert out.dtype == torch.uint8  # normalised on the device by the model: a quarter of the bytes to move
    assert out.is_contiguous()


def test_train_preset_same_crop_and_flip_for_every_frame():
    transform = train_preset()
    outputs = []
    for seed in range(12):
        torch.manual_seed(seed)
        out = transform(static_clip(6, 48, 64))
        for t in range(1, 6):
            assert torch.equal(out[:, t], out[:, 0]), f"seed {seed}: frame {t} was cropped/flipped differently"
        outputs.append(out[:, 0])
    # the parameters are random across clips (otherwise the check above proves nothing)
    assert len({tuple(o.flatten()[:50].tolist()) for o in outputs}) > 6


def test_train_preset_flips_sometimes_and_hflip_off_never():
    # a left-to-right ramp without any crop room: the only change left is the flip
    clip = gradient_clip(2, 32, 32)
    flips = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = train_preset(scale_range=(32, 32))(clip)
        flips.add(bool(out[0, 0, 0, 0] > out[0, 0, 0, -1]))
        torch.manual_seed(seed)
        assert train_preset(scale_range=(32, 32), hflip=False)(clip)[0, 0, 0, 0] < \
            train_preset(scale_range=(32, 32), hflip=False)(clip)[0, 0, 0, -1]
    assert flips == {True, False}


def test_presets_keep_pixel_values_of_a_uniform_clip():
    values = (30, 128, 250)
    clip = torch.tensor(values, dtype=torch.uint8).view(1, 1, 1, 3).expand(4, 48, 64, 3).contiguous()
    torch.manual_seed(0)
    for out in (train_preset()(clip), EvalPreset(crop_size=32, short_side=40)(clip)[0]):
        assert torch.equal(out, torch.tensor(values, dtype=torch.uint8).view(3, 1, 1, 1).expand_as(out))


def test_train_preset_rejects_scale_below_crop():
    with pytest.raises(ValueError, match="crop_size"):
        train_preset(crop_size=32, scale_range=(24, 40))


def test_eval_centre_crop():
    clip = gradient_clip(5, 48, 64)
    out = EvalPreset(crop_size=32, short_side=40)(clip)
    assert out.shape == (1, 3, 5, 32, 32)  # [crops, C, T, crop, crop]
    assert out.dtype == torch.uint8
    assert torch.equal(out, EvalPreset(crop_size=32, short_side=40)(clip))  # no randomness
    # centred: left half dark, right half bright; no resize (short side already 48): the
    # 32-wide crop from x = 16 holds 16 dark then 16 bright columns
    halves = torch.zeros(2, 48, 64, 3, dtype=torch.uint8)
    halves[:, :, 32:] = 255
    out = EvalPreset(crop_size=32, short_side=48)(halves)[0]  # [C, T, h, w]
    assert out.shape == (3, 2, 32, 32)
    assert torch.all(out[..., :16] == 0) and torch.all(out[..., 16:] == 255)
    # and vertically centred on a portrait clip
    halves = torch.zeros(2, 64, 48, 3, dtype=torch.uint8)
    halves[:, 32:] = 255
    out = EvalPreset(crop_size=32, short_side=48)(halves)[0]
    assert torch.all(out[..., :16, :] == 0) and torch.all(out[..., 16:, :] == 255)


@pytest.mark.parametrize("height,width", [(48, 64), (64, 48)])
def test_eval_three_crops_differ_along_the_long_side(height, width):
    clip = gradient_clip(4, height, width)
    out = EvalPreset(crop_size=32, short_side=32, num_crops=3)(clip)
    assert out.shape == (3, 3, 4, 32, 32)
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.equal(out[a], out[b])
    # start, centre, end: the column (landscape) or row (portrait) ramp increases across the crops
    channel = 0 if width > height else 1
    means = [out[k, channel].float().mean().item() for k in range(3)]
    assert means[0] < means[1] < means[2]
    # the middle crop is the centre crop (the resized long side leaves an even margin here)
    centre = EvalPreset(crop_size=32, short_side=32, num_crops=1)(clip)[0]
    assert torch.equal(out[1], centre)


def test_eval_preset_validates():
    with pytest.raises(ValueError, match="num_crops"):
        EvalPreset(crop_size=32, short_side=40, num_crops=2)
    with pytest.raises(ValueError, match="short_side"):
        EvalPreset(crop_size=32, short_side=24)


def test_build_transform_picks_preset_and_jitter():
    train = build_transform(True, crop_size=32, short_side=40, scale_jitter=(1.0, 1.25))
    assert isinstance(train, TrainPreset)
    assert train(static_clip(3, 48, 64)).shape == (3, 3, 32, 32)
    evaluate = build_transform(False, crop_size=32, short_side=40, num_crops=3)
    assert isinstance(evaluate, EvalPreset)
    assert evaluate(static_clip(3, 48, 64)).shape == (3, 3, 3, 32, 32)
    # the jitter never goes below the crop
    small = build_transform(True, crop_size=32, short_side=20)
    assert small(static_clip(2, 48, 64)).shape == (3, 2, 32, 32)
