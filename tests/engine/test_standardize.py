"""The linear probe trained by steps (train.probe_solver=sgd) on standardised features, folded into the model's head."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import TINY_TRAIN_OVERRIDES
from videoft.checkpoint import read_run_checkpoint
from videoft.config import load_config
from videoft.engine.distributed import DistInfo
from videoft.engine.probe import fold_standardization, standardization
from videoft.engine.standardize import StandardizedHead, feature_moments, standardization_from
from videoft.runner import build_recipe

REPO = Path(__file__).resolve().parents[2]
ONE_PROCESS = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))

pytestmark = pytest.mark.usefixtures("restore_threads")


def test_moments_in_parts_give_the_standardisation_of_all_rows():
    torch.manual_seed(0)
    x = torch.randn(64, 12) * torch.linspace(0.1, 30, 12) + 50
    x[:, 3] = 7.0  # a constant feature keeps std 1
    mean, std = standardization_from(feature_moments([x[:20], x[20:20], x[20:].view(11, 4, 12)], 12))
    ref_mean, ref_std = standardization(x)
    assert torch.allclose(mean, ref_mean, rtol=1e-6) and torch.allclose(std, ref_std, rtol=1e-4)
    assert std[3] == 1
    with pytest.raises(ValueError, match="no training features"):
        standardization_from(feature_moments([], 12))


def test_the_head_trained_standardised_is_folded_into_the_raw_head_and_back():
    torch.manual_seed(0)
    x = torch.randn(64, 12) * 10 + 50  # badly scaled features
    y = torch.randint(0, 3, (64,))
    head = nn.Sequential(nn.Dropout(0.3), nn.Linear(12, 3))
    probe = StandardizedHead(head, *standardization_from(feature_moments([x], 12)))
    assert not probe.linear.weight.any() and not probe.linear.bias.any() and probe.dropout.p == 0.3  # from zero
    assert [p.shape for p in probe.parameters()] == [(3, 12), (3,)]  # mean and std are not trained
    opt = torch.optim.SGD(probe.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(probe(x), y).backward()
        opt.step()
    probe.fold_into(head)
    probe.eval(), head.eval()
    with torch.no_grad():
        assert torch.allclose(probe(x), head(x), atol=1e-4)
    state = probe.training_state()
    again = StandardizedHead(nn.Sequential(nn.Dropout(0.3), nn.Linear(12, 3)), state["mean"], state["std"])
    again.unfold_from(head)
    assert torch.allclose(again.linear.weight, state["weight"], atol=1e-5)
    assert torch.allclose(again.linear.bias, state["bias"], atol=1e-4)


def sgd_probe(out: Path, data: Path, *extra: str):
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.root={data}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES, "train.linear_probe=true",
                       "train.probe_solver=sgd", "model.dropout=0.3", "train.epochs=2", *extra])
    recipe = build_recipe(cfg, ONE_PROCESS, out)
    recipe.setup()
    return recipe


def test_sgd_probe_steps_the_standardised_head_and_resumes_with_it_exactly(tmp_path, tiny_motion_dataset):
    straight = sgd_probe(tmp_path / "straight", tiny_motion_dataset)
    trained = {id(p) for p in straight.probe_head.linear.parameters()}
    stepped = {id(p) for g in straight.optimizer.param_groups for p in g["params"]}
    assert trained <= stepped and not stepped & {id(p) for p in straight.raw_model.head.parameters()}
    assert not any(p.requires_grad for p in straight.raw_model.parameters())  # the model's head follows the probe's
    x, _ = straight.train_loader.dataset.features.arrays(straight.train_loader.dataset.labels)
    rows = x.flatten(0, 1)
    assert torch.allclose(straight.probe_head.mean, rows.mean(0), atol=1e-5)
    straight.fit()

    # the saved head is the standardised one folded: a plain Linear on raw features, nothing else in `model`
    ckpt = read_run_checkpoint(tmp_path / "straight" / "last.pt")
    t = ckpt.training.probe_head
    weight, bias = fold_standardization(t["weight"], t["bias"], t["mean"], t["std"])
    assert torch.equal(ckpt.model["head.1.weight"], weight) and torch.equal(ckpt.model["head.1.bias"], bias)
    assert set(ckpt.model) == set(straight.raw_model.state_dict())
    assert (t["std"] != 1).any()  # standardised, not the identity

    # stopped after epoch 1 and resumed: the same weights, bit for bit (the standardised head restored, not unfolded)
    stopped = sgd_probe(tmp_path / "resumed", tiny_motion_dataset)
    stopped.fit(on_epoch_end=lambda row: True)
    assert read_run_checkpoint(tmp_path / "resumed" / "last.pt").training.epoch == 1
    resumed = sgd_probe(tmp_path / "resumed", tiny_motion_dataset, "resume=auto")
    resumed.fit()
    again = read_run_checkpoint(tmp_path / "resumed" / "last.pt")
    assert again.training.epoch == 2
    assert torch.equal(again.model["head.1.weight"], ckpt.model["head.1.weight"])
    assert torch.equal(again.training.probe_head["weight"], t["weight"])
