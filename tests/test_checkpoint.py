"""The typed checkpoint record: what the trainer writes is what every reader gets, and anything else
is refused in one line."""
from __future__ import annotations

import pytest
import torch

from videoft.checkpoint import FORMAT, RunCheckpoint, TrainingState, read_run_checkpoint
from videoft.config import load_config
from videoft.data.transforms import Preprocessing

PRE = Preprocessing(8, 2, 32, 36, (0.43, 0.39, 0.37), (0.22, 0.22, 0.21))


def make(training: bool) -> RunCheckpoint:
    cfg = load_config(None, ["data.root=/data", "model.backbone=s3d", "data.eval_clips=5", "model.dropout=0.2"])
    state = TrainingState(epoch=3, epoch_step=1, step=40, optimizer={"state": {}, "param_groups": []}, scaler={},
                          rng={"torch": torch.get_rng_state()}, unfreeze={}, best={"metric": "top1", "value": 0.5,
                                                                                    "epoch": 2},
                          history=[{"epoch": 1}]) if training else None
    return RunCheckpoint(model={"head.1.weight": torch.randn(4, 3)}, classes=["a", "b", "c", "d"], backbone="s3d",
                         preprocessing=PRE, config=cfg, training=state)


@pytest.mark.parametrize("training", [False, True])
def test_round_trip_gives_typed_values(tmp_path, training):
    ckpt = make(training)
    ckpt.save(tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # plain containers only
    assert raw["format"] == FORMAT and raw["num_classes"] == 4 and raw["preprocessing"]["clip_len"] == 8
    back = read_run_checkpoint(tmp_path / "c.pt")
    assert back.preprocessing == PRE and back.config == ckpt.config and back.classes == ckpt.classes
    assert back.config.data.eval_clips == 5 and back.config.model.dropout == 0.2  # no restated defaults
    assert torch.equal(back.model["head.1.weight"], ckpt.model["head.1.weight"])
    if training:
        assert back.training.step == 40 and back.training.best["value"] == 0.5
        assert torch.equal(back.training.rng["torch"], ckpt.training.rng["torch"])
    else:
        assert back.training is None and "optimizer" not in raw


@pytest.mark.parametrize("state, needle", [
    ({"model": {"w": torch.zeros(1)}, "optimizer": {}, "epoch": 3}, "no 'format' key"),  # the common training dict
    ({"model": {"w": torch.zeros(1)}, "format": "other/2"}, "format 'other/2'"),
    ({"format": FORMAT, "model": {}, "classes": ["a"]}, "missing ['backbone', 'preprocessing', 'config']"),
])
def test_other_files_are_refused_in_one_line(tmp_path, state, needle):
    path = tmp_path / "x.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="x.pt") as err:
        read_run_checkpoint(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_bare_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a videoft checkpoint"):
        read_run_checkpoint(path)


def test_preparation_is_remembered_and_old_checkpoints_still_load(tmp_path):
    ckpt = make(False)
    ckpt.preparation = {"format": "h264", "short_side": 128, "gop": 16, "quality": 90, "source": "/data/raw"}
    ckpt.save(tmp_path / "p.pt")
    assert read_run_checkpoint(tmp_path / "p.pt").preparation == ckpt.preparation
    old = torch.load(tmp_path / "p.pt", weights_only=True)
    del old["preparation"]  # written before the field existed
    torch.save(old, tmp_path / "old.pt")
    assert read_run_checkpoint(tmp_path / "old.pt").preparation == {}
