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


def _linear_batches(sizes, seed=0):
    """Train-style batches of 6-d 'clips' (no BatchNorm, no dropout: a step depends only on the examples)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        out.append({"video": torch.randn(n, 6, generator=g), "label": torch.randint(0, 3, (n,), generator=g),
                    "valid": torch.ones(n, dtype=torch.bool), "failures": []})
    return out


def _merged(batches):
    return {"video": torch.cat([b["video"] for b in batches]), "label": torch.cat([b["label"] for b in batches]),
            "valid": torch.cat([b["valid"] for b in batches]), "failures": []}


def _train(batches, accum_steps, lr_at=lambda step: 1.0):
    from videoft.engine.train import StepOptions, train_one_epoch

    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    result = train_one_epoch(model, batches, opt, device=torch.device("cpu"), opts=StepOptions(accum_steps=accum_steps),
                             num_classes=3, step=0, lr_at=lr_at, show_progress=False)
    return model, result


def test_partial_accumulation_window_is_stepped_as_the_mean_over_its_batches():
    """5 batches, accum_steps 2: windows (1, 2), (3, 4) and the partial (5,). Each window's step equals
    one step on its batches merged (equal batch sizes: the mean of means is the mean)."""
    batches = _linear_batches([4] * 5)
    model, result = _train(batches, accum_steps=2)
    windows = [_merged(batches[0:2]), _merged(batches[2:4]), batches[4]]
    reference, _ = _train(windows, accum_steps=1)
    assert result.step == 3  # ceil(5 / 2): the partial window is a step, as the LR schedule counts it
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # without the last window's step (what happened before: its gradient was wiped), the weights differ
    dropped, _ = _train(windows[:2], accum_steps=1)
    assert not torch.allclose(model.weight, dropped.weight)
    assert result.clips == 20  # every batch counts in the epoch's loss and accuracy


def test_lr_schedule_is_asked_once_per_optimizer_step_taken():
    seen = []
    _, result = _train(_linear_batches([2] * 7), accum_steps=3, lr_at=lambda step: seen.append(step) or 1.0)
    assert seen == list(range(result.step)) == [0, 1, 2]  # windows of 3, 3 and 1 batches, each one step
