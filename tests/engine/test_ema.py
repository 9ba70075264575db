"""train.ema_decay: the warmed-up moving average, the swap into the trained model, and what a run validates,
saves and resumes."""
from __future__ import annotations

import pytest
import torch

from tests.test_recipe import make_recipe
from videoft.checkpoint import read_run_checkpoint
from videoft.config import ConfigError, load_config
from videoft.engine.ema import build_ema, held_in
from videoft.errors import CheckpointError
from videoft.inference import load_model

pytestmark = pytest.mark.usefixtures("restore_threads")


def test_the_average_warms_up_then_moves_by_one_minus_decay():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.BatchNorm1d(1))
    ema = build_ema(model, decay=0.5)
    expected = None
    for n in range(12):  # n: updates before this one
        with torch.no_grad():
            model[0].weight.fill_(float(10 * (n + 1)))
        model.train()(torch.randn(4, 2))  # running statistics move, num_batches_tracked counts
        ema.update_parameters(model)
        w = float(model[0].weight[0, 0].detach())
        d = min(0.5, (1 + n) / (10 + n))
        expected = w if n == 0 else expected + (w - expected) * (1 - d)  # the first update copies
        assert float(ema.module[0].weight[0, 0].detach()) == pytest.approx(expected)
    assert d == 0.5 and expected != w  # the warm-up ended: the average lags the weights
    assert int(ema.module[1].num_batches_tracked) == 12  # integers follow the model, not averaged
    assert not torch.equal(ema.module[1].running_mean, model[1].running_mean)  # float buffers are averaged


def test_held_in_lends_the_average_and_gives_the_trained_weights_back():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = build_ema(model, decay=0.9)
    ema.update_parameters(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with held_in(model, ema):
        assert torch.equal(model[0].weight, ema.module[0].weight)
        model[1].running_mean.fill_(7.0)  # what precise BN does to the evaluated weights' statistics
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 7.0))


def test_ema_decay_is_checked():
    with pytest.raises(ConfigError, match=r"train.ema_decay: 1.0 is out of range \(allowed: \[0, 1\)\)"):
        load_config(None, ["data.root=x", "train.ema_decay=1.0"])
    with pytest.raises(ConfigError, match="the lbfgs probe solves the head exactly"):
        load_config(None, ["data.root=x", "train.ema_decay=0.9", "train.linear_probe=true"])


def test_a_run_validates_and_saves_the_average_and_resumes_both(tmp_path, tiny_motion_dataset):
    ema = ["train.ema_decay=0.9", "train.max_steps_per_epoch=3", "data.batch_size=2"]
    recipe = make_recipe(tmp_path, tiny_motion_dataset, "train.epochs=2", *ema)
    recipe.setup()
    recipe.fit(on_epoch_end=lambda row: True)  # stopped after epoch 1, as by a kill at its end
    ckpt = read_run_checkpoint(recipe.out_dir / "last.pt")
    assert ckpt.training.ema_updates == 3
    assert any(not torch.equal(v, ckpt.training.online_model[k]) for k, v in ckpt.model.items())
    # the validation loss recorded is the saved average's (with the BatchNorm statistics precise BN gave it)
    from videoft.engine.evaluate import predict
    from videoft.engine.metrics import cross_entropy

    def val_loss(weights: dict) -> float:
        recipe.raw_model.load_state_dict(weights)
        pred = predict(recipe.raw_model, recipe.val_loader, device=torch.device("cpu"), num_clips=2, num_crops=1,
                       show_progress=False)
        return cross_entropy(pred.clip_probs, pred.labels)
    row = recipe.state.history[-1]
    assert val_loss(ckpt.model) == pytest.approx(row["val_loss"], rel=1e-5)
    # the trained weights were validated too, as a run without EMA would (their precise-BN statistics are saved)
    assert val_loss(ckpt.training.online_model) == pytest.approx(row["val_online_loss"], rel=1e-5)
    assert row["val_online_loss"] != pytest.approx(row["val_loss"], rel=1e-3)
    assert {"val_online_top1", "val_online_video_top1"} <= row.keys()
    # tools/evaluate.py --online reads them; a checkpoint without them says so
    model, _ = load_model(recipe.out_dir / "last.pt", online=True)
    assert all(torch.equal(v, ckpt.training.online_model[k]) for k, v in model.state_dict().items())
    (tmp_path / "plain").mkdir()
    plain = make_recipe(tmp_path / "plain", tiny_motion_dataset, "train.epochs=1", "train.max_steps_per_epoch=1")
    plain.setup()
    plain.fit()
    with pytest.raises(CheckpointError, match="holds no trained weights beside an average"):
        load_model(plain.out_dir / "last.pt", online=True)

    # epoch 2 resumed from last.pt ends where two epochs in one run end: trained weights and average alike
    assert ckpt.training.epoch == 1
    again = make_recipe(tmp_path, tiny_motion_dataset, "train.epochs=2", "resume=auto", *ema)
    again.setup()
    again.fit()
    (tmp_path / "straight").mkdir()
    straight = make_recipe(tmp_path / "straight", tiny_motion_dataset, "train.epochs=2", *ema)
    straight.setup()
    straight.fit()
    a, b = read_run_checkpoint(again.out_dir / "last.pt"), read_run_checkpoint(straight.out_dir / "last.pt")
    assert a.training.ema_updates == b.training.ema_updates == 6
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
        assert torch.equal(a.training.online_model[k], b.training.online_model[k]), k
