"""Freezing with frozen BatchNorm, gradual unfreezing with one optimizer, LR / weight-decay groups."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from videoft.models.backbones import build_backbone, get_backbone_spec
from videoft.models.classifier import VideoClassifier, build_classifier
from videoft.models.freezing import (
    UnfreezeSchedule,
    freeze_stages,
    param_groups,
    resolve_frozen,
)

# pytorchvideo's Swish backward uses the deprecated ctx.saved_variables: one warning per step.
pytestmark = pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning")

SPEC = get_backbone_spec("x3d_xs")  # stages: blocks.0 (stem) .. blocks.4, blocks.5.pool


@pytest.fixture
def model() -> VideoClassifier:
    torch.manual_seed(0)
    return build_classifier("x3d_xs", 3)


def stage_params(model, stage: str) -> dict[str, torch.Tensor]:
    prefix = "head" if stage == "head" else f"backbone.{stage}"
    return {n: p for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + ".")}


def trainable_stages(model) -> list[str]:
    return [s for s in (*SPEC.stages, "head") if all(p.requires_grad for p in stage_params(model, s).values())]


def bn_modules(model, stage: str) -> dict[str, _BatchNorm]:
    return {f"backbone.{stage}.{n}": m for n, m in model.backbone.get_submodule(stage).named_modules()
            if isinstance(m, _BatchNorm)}


def sgd_steps(model, optimizer, steps: int = 3) -> None:
    torch.manual_seed(1)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(torch.randn(2, 3, 4, 32, 32)), torch.tensor([0, 2]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("frozen, expected", [
    (0, list(SPEC.stages)), (1, list(SPEC.stages[1:])), (4, list(SPEC.stages[4:])), (-1, []), ("all", []),
])
def test_freeze_counts_stages_from_the_stem(model, frozen, expected):
    freeze_stages(model, SPEC, frozen)
    assert trainable_stages(model) == expected + ["head"]
    frozen_stages = set(SPEC.stages) - set(expected)
    assert not any(p.requires_grad for s in frozen_stages for p in stage_params(model, s).values())


@pytest.mark.parametrize("bad", [7, -2, "some", True, 1.5])
def test_bad_frozen_count_names_the_range(bad):
    with pytest.raises(ValueError, match=r"allowed: 0\.\.6, -1 or 'all'"):
        resolve_frozen(SPEC, bad)


def test_frozen_stages_do_not_move_in_training(model):
    freeze_stages(model, SPEC, 3)  # stem, blocks.1, blocks.2
    frozen, trainable = SPEC.stages[:3], [*SPEC.stages[3:], "head"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(param_groups(model, SPEC, head_lr=0.1, backbone_lr=0.1, weight_decay=1e-2),
                                lr=0.1, momentum=0.9)
    sgd_steps(model, optimizer)
    after = model.state_dict()
    for stage in frozen:  # parameters and BN running stats (mean, var, num_batches_tracked)
        prefix = f"backbone.{stage}."
        keys = [k for k in before if k.startswith(prefix)]
        assert keys and all(torch.equal(before[k], after[k]) for k in keys), stage
        assert all(p.grad is None for p in stage_params(model, stage).values())
        assert all(not m.training for m in bn_modules(model, stage).values())
    for stage in trainable:
        assert any(not torch.equal(before[n], p) for n, p in stage_params(model, stage).items()), stage
    for stage in SPEC.stages[3:]:
        for name, m in bn_modules(model, stage).items():
            assert m.training and not torch.equal(before[f"{name}.running_mean"], m.running_mean), name
    model.eval()
    model.train()  # the override puts frozen BN back in eval mode
    assert model.frozen_bn_modules == {n for s in frozen for n in bn_modules(model, s)}
    assert all(not model.get_submodule(n).training for n in model.frozen_bn_modules)


def test_bn_modes(model):
    freeze_stages(model, SPEC, 2, bn="all")
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    freeze_stages(model, SPEC, 2, bn="train")
    assert model.frozen_bn_modules == set() and all(m.training for m in model.modules() if isinstance(m, _BatchNorm))
    stem_bn = next(iter(bn_modules(model, "blocks.0").values()))
    mean = stem_bn.running_mean.clone()
    model(torch.randn(1, 3, 4, 32, 32))
    assert not torch.equal(mean, stem_bn.running_mean)  # "train": frozen weights, moving stats
    with pytest.raises(ValueError, match="bn='none'.*'frozen', 'all', 'train'"):
        freeze_stages(model, SPEC, 2, bn="none")


def test_refreezing_fewer_stages_returns_their_bn_to_training(model):
    model.train()
    freeze_stages(model, SPEC, 4)
    assert all(not m.training for m in bn_modules(model, "blocks.3").values())
    freeze_stages(model, SPEC, 1)
    assert all(m.training for m in bn_modules(model, "blocks.3").values())
    assert all(not m.training for m in bn_modules(model, "blocks.0").values())


def test_unfreeze_schedule_values_and_state():
    schedule = UnfreezeSchedule(head_only_epochs=2, every=2, total_stages=6, min_frozen=1)
    assert [schedule.frozen_stages_at(e) for e in range(12)] == [6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert [UnfreezeSchedule(0, 1, 3).frozen_stages_at(e) for e in range(4)] == [2, 1, 0, 0]
    restored = UnfreezeSchedule(0, 1, 1)
    restored.load_state_dict(schedule.state_dict())
    assert restored.state_dict() == schedule.state_dict() == {
        "head_only_epochs": 2, "every": 2, "total_stages": 6, "min_frozen": 1}
    assert all(type(v) is int for v in restored.state_dict().values())
    old = UnfreezeSchedule(0, 1, 1)  # checkpoints written before the rename said "num_stages"
    old.load_state_dict({"head_only_epochs": 2, "every": 2, "num_stages": 6, "min_frozen": 1})
    assert old.state_dict() == schedule.state_dict()
    with pytest.raises(ValueError, match="expected"):
        restored.load_state_dict({"every": 1})
    with pytest.raises(ValueError, match="every=0"):
        UnfreezeSchedule(1, 0, 6)
    with pytest.raises(ValueError, match="min_frozen=7"):
        UnfreezeSchedule(1, 1, 6, min_frozen=7)


def test_gradual_unfreezing_keeps_one_optimizer(model):
    schedule = UnfreezeSchedule(head_only_epochs=1, every=1, total_stages=len(SPEC.stages), min_frozen=3)
    freeze_stages(model, SPEC, schedule.frozen_stages_at(0))
    optimizer = torch.optim.AdamW(param_groups(model, SPEC, head_lr=1e-2, backbone_lr=1e-3, weight_decay=0.05),
                                  lr=1e-3)
    shape = [len(g["params"]) for g in optimizer.param_groups]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for epoch in range(5):
        frozen = schedule.frozen_stages_at(epoch)
        trainable = freeze_stages(model, SPEC, frozen)
        assert trainable == [f"backbone.{s}" for s in SPEC.stages[frozen:]] + ["head"]
        assert trainable_stages(model) == [*SPEC.stages[frozen:], "head"]
        sgd_steps(model, optimizer, steps=1)
        assert [len(g["params"]) for g in optimizer.param_groups] == shape
        for stage in SPEC.stages[:frozen]:  # never trained so far: untouched, no optimizer state
            for name, p in stage_params(model, stage).items():
                assert torch.equal(p, start[name]) and p not in optimizer.state, name
        for stage in SPEC.stages[frozen:]:
            assert any(not torch.equal(p, start[n]) for n, p in stage_params(model, stage).items()), stage
    assert [schedule.frozen_stages_at(e) for e in range(5)] == [6, 5, 4, 3, 3]
    # Resume: a fresh model and optimizer with the same groups take the saved state as is.
    fresh = build_classifier("x3d_xs", 3)
    freeze_stages(fresh, SPEC, schedule.frozen_stages_at(4))
    resumed = torch.optim.AdamW(param_groups(fresh, SPEC, head_lr=1e-2, backbone_lr=1e-3, weight_decay=0.05),
                                lr=1e-3)
    resumed.load_state_dict(optimizer.state_dict())
    assert len(resumed.state) == len(optimizer.state) > 0
    assert [g["name"] for g in resumed.param_groups] == [g["name"] for g in optimizer.param_groups]


def test_param_groups_decay_names_and_coverage(model):
    freeze_stages(model, SPEC, 2)
    groups = param_groups(model, SPEC, head_lr=1e-2, backbone_lr=1e-3, weight_decay=0.05)
    names = [g["name"] for g in groups]
    assert names == [f"{u}/{k}" for u in [f"backbone.{s}" for s in SPEC.stages] + ["head"]
                     for k in ("decay", "no_decay")]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    for g in groups:
        if g["name"].endswith("/no_decay"):
            assert g["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in g["params"])
        else:
            assert g["weight_decay"] == 0.05 and all(p.ndim > 1 for p in g["params"])
    trainable_only = param_groups(model, SPEC, head_lr=1e-2, backbone_lr=1e-3, weight_decay=0.05,
                                  include_frozen=False)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in trainable_only for p in g["params"]} == trainable


def test_layer_decay_and_set_lr(model):
    from videoft.engine.train import set_lr_factor  # the per-step schedule the recipe uses

    groups = param_groups(model, SPEC, head_lr=1e-2, backbone_lr=1e-3, layer_decay=0.5, weight_decay=0.0)
    n = len(SPEC.stages)
    for g in groups:
        unit = g["name"].split("/")[0]
        expected = 1e-2 if unit == "head" else 1e-3 * 0.5 ** (n - 1 - SPEC.stages.index(unit[len("backbone."):]))
        assert g["lr"] == g["base_lr"] == pytest.approx(expected)
    optimizer = torch.optim.SGD(groups, lr=123.0)
    set_lr_factor(optimizer, 0.25)
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(0.25 * g["base_lr"])
    lrs = [g["lr"] for g in optimizer.param_groups]
    set_lr_factor(optimizer, 0.1)
    assert [g["lr"] / lr for g, lr in zip(optimizer.param_groups, lrs)] == pytest.approx([0.4] * len(lrs))
    with pytest.raises(ValueError, match="layer_decay=1.5"):
        param_groups(model, SPEC, head_lr=1e-2, backbone_lr=1e-3, layer_decay=1.5, weight_decay=0.0)


@pytest.mark.parametrize("name, part", [("swin3d_t", "relative_position_bias_table"), ("mvit_v2_s", "rel_pos_h")])
def test_no_decay_on_positional_tables(name, part):
    spec = get_backbone_spec(name)
    with torch.device("meta"):
        backbone, dim = build_backbone(spec)
        model = VideoClassifier(backbone, dim, 3)
    groups = param_groups(model, spec, head_lr=1e-2, backbone_lr=1e-3, weight_decay=0.05)
    by_id = {id(p): g for g in groups for p in g["params"]}
    tables = [p for n, p in model.named_parameters() if part in n]
    assert tables and all(p.ndim > 1 and by_id[id(p)]["weight_decay"] == 0.0 for p in tables)


@pytest.mark.slow
def test_frozen_step_is_cheaper():
    """x3d_xs, 8x64x64, batch 4, SGD: all trainable vs the last 2 / last 1 stages + head (median of 5 steps).

    `pytest tests/models/test_freezing.py -k frozen_step -s` prints the step times.
    """
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 64, 64), torch.tensor([0, 1, 2, 0])

    def step_time(frozen: int) -> float:
        model = build_classifier("x3d_xs", 3).train()
        freeze_stages(model, SPEC, frozen)
        optimizer = torch.optim.SGD(param_groups(model, SPEC, head_lr=0.01, backbone_lr=0.01, weight_decay=1e-4),
                                    lr=0.01, momentum=0.9)
        times = []
        for _ in range(6):  # the first step (allocation, kernel selection) is not counted
            start = time.perf_counter()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return sorted(times[1:])[2]

    n = len(SPEC.stages)
    full, last_two, last_one = step_time(0), step_time(n - 2), step_time(n - 1)
    print(f"\nx3d_xs 8x64x64 batch 4, {torch.get_num_threads()} thread(s): full {1000 * full:.0f} ms, "
          f"{SPEC.stages[-2]}+{SPEC.stages[-1]}+head {1000 * last_two:.0f} ms ({full / last_two:.1f}x), "
          f"{SPEC.stages[-1]}+head {1000 * last_one:.0f} ms ({full / last_one:.1f}x)")
    assert last_one < last_two < full and last_one < 0.5 * full
