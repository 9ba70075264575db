"""Pieces of the training loop: precise BatchNorm, MixUp/CutMix for video, per-group LR scaling."""
from __future__ import annotations

import torch
import torch.nn as nn

from videoft.engine.train import mix_batch, recompute_bn_stats, set_lr_factor


def _batches(*videos):
    return [{"video": v, "valid": torch.ones(v.shape[0], dtype=torch.bool)} for v in videos]


def test_precise_bn_gives_exact_statistics_and_spares_frozen_bn():
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 4, 1, bias=False)
    trained_bn, frozen_bn = nn.BatchNorm3d(4), nn.BatchNorm3d(4)
    model = nn.Sequential(conv, trained_bn, frozen_bn)
    frozen_before = frozen_bn.running_mean.clone()
    a, b = torch.randn(2, 3, 2, 4, 4) + 3, torch.randn(2, 3, 2, 4, 4) - 1
    model.train()
    frozen_bn.eval()
    frozen_bn.train = lambda mode=True: frozen_bn  # stays in eval mode, as freezing does
    used = recompute_bn_stats(model, _batches(a, b), num_batches=5, device=torch.device("cpu"))
    assert used == 2
    with torch.no_grad():
        feats = torch.cat([conv(a), conv(b)])
    expected = feats.mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(trained_bn.running_mean, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(frozen_bn.running_mean, frozen_before)
    assert trained_bn.momentum == 0.1  # restored


def test_mixup_and_cutmix_soft_targets():
    video = torch.stack([torch.full((3, 2, 8, 8), float(i)) for i in range(4)])
    labels = torch.tensor([0, 1, 2, 3])
    g = torch.Generator().manual_seed(0)
    mixed, target = mix_batch(video, labels, 4, mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.0, generator=g)
    assert mixed.shape == video.shape and target.shape == (4, 4)
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    cut, target = mix_batch(video, labels, 4, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1, generator=g)
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    # CutMix pastes the same box on every frame: frames of a clip stay identical to each other
    assert torch.equal(cut[:, :, 0], cut[:, :, 1])


def test_lr_factor_keeps_group_ratios():
    w1, w2 = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [w1], "lr": 0.1, "base_lr": 0.1}, {"params": [w2], "lr": 0.01, "base_lr": 0.01}])
    set_lr_factor(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.005]
    set_lr_factor(opt, 1.0)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
