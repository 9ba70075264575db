"""The trial process's pieces: the time budget, and the recipe's per-epoch hook that applies it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TRAIN_OVERRIDES
from videoft.config import load_config
from videoft.engine.distributed import DistInfo
from videoft.recipe import FineTuneRecipe
from videoft.sweep.trial import TimeBudget

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_stops_before_an_epoch_that_would_not_fit():
    clock = FakeClock()
    budget = TimeBudget(100, clock=clock)
    clock.now += 30  # setup + epoch 1: 30 s; another 30 s fits in 100
    assert budget({"epoch": 1}) is False
    clock.now += 30  # 60 s used; another 30 s fits exactly
    assert budget({"epoch": 2}) is False and budget.reason is None
    clock.now += 35  # 95 s used; another 35 s would end at 130
    assert budget({"epoch": 3}) is True
    assert budget.reason.startswith("time budget: 95 s of 100 s used after epoch 3")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_fit_stops_when_the_epoch_hook_says_so(tmp_path, tiny_motion_dataset, one_thread):
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.root={tiny_motion_dataset}", f"out_dir={tmp_path}", *TINY_TRAIN_OVERRIDES,
                       "train.epochs=3", "train.max_steps_per_epoch=1", "train.precise_bn_batches=0"])
    recipe = FineTuneRecipe(cfg, DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")), tmp_path)
    recipe.setup()
    rows = []
    summary = recipe.fit(on_epoch_end=lambda row: rows.append(row) or row["epoch"] == 2)
    assert [r["epoch"] for r in rows] == [1, 2] and "val_mean_class_accuracy" in rows[0]
    assert summary["epochs_run"] == 2 and summary["stopped_early"] is True
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (tmp_path / "last.pt").is_file()  # the hook runs after the epoch's checkpoint
