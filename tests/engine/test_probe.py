"""The linear probe solved on cached features: converged, L2 from the grid, standardisation folded into the head."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TINY_TRAIN_OVERRIDES
from videoft.config import load_config
from videoft.engine.distributed import DistInfo
from videoft.engine.probe import (
    L2_GRID,
    fit_softmax,
    fold_standardization,
    solve_linear_probe,
    solve_probe_over_stages,
    standardization,
    stratified_folds,
)
from videoft.inference import load_model
from videoft.models.backbones import get_backbone_spec
from videoft.recipe import FineTuneRecipe
from videoft.runner import build_recipe

REPO = Path(__file__).resolve().parents[2]
ONE_PROCESS = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
PROBE = ["train.linear_probe=true", "model.dropout=0.3", "data.eval_clips=3"]


pytestmark = pytest.mark.usefixtures("restore_threads")


def run_probe(out: Path, data: Path, *extra: str) -> tuple[FineTuneRecipe, torch.Tensor, torch.Tensor]:
    """A linear-probe run in process; returns it with its cached training features [n, V, D] and labels."""
    out.mkdir(parents=True)
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.root={data}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES, *PROBE, *extra])
    recipe = build_recipe(cfg, ONE_PROCESS, out)
    recipe.setup()
    store = recipe.train_loader.dataset  # in RAM (below the limit): readable after the cache folder is gone
    x, y = store.features.arrays(store.labels)
    recipe.fit()
    return recipe, x, y


def head_loss(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    head.eval()
    with torch.no_grad():
        return float(F.cross_entropy(head(x.flatten(0, 1)), y.repeat_interleave(x.shape[1])))


@pytest.mark.slow
def test_solved_probe_beats_sgd_head_and_survives_save_load(tmp_path, tiny_motion_dataset):
    sgd, x, y = run_probe(tmp_path / "sgd", tiny_motion_dataset, "train.probe_solver=sgd", "train.epochs=3",
                          "optim.lr=0.01")
    solved, x2, y2 = run_probe(tmp_path / "lbfgs", tiny_motion_dataset)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # the same cache: same frozen backbone, same views
    assert x.shape[:2] == (12, 3)  # 12 training videos, 3 views each

    # the converged head fits the training features better than 3 epochs of SGD on the same cache
    sgd_loss, solved_loss = head_loss(sgd.raw_model.head, x, y), head_loss(solved.raw_model.head, x, y)
    print(f"training loss on the cache: SGD 3 epochs {sgd_loss:.4f}, solved {solved_loss:.4f}")
    assert solved_loss < sgd_loss - 0.1, (solved_loss, sgd_loss)

    # the L2 strength comes from the grid, chosen by cross-validation (8 validation videos < 30), and is recorded
    row = json.loads((tmp_path / "lbfgs" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["probe_l2"] in L2_GRID and [g["l2"] for g in row["probe_grid"]] == list(L2_GRID)
    assert "cross-validation" in row["probe_selection"] and "8 validation videos" in row["probe_selection"]
    assert row["probe_l2"] == min(row["probe_grid"], key=lambda g: g["heldout_log_loss"])["l2"]
    assert "val_video_top1" in row and solved.state.epoch == solved.cfg.train.epochs

    # standardisation is folded into the saved Linear: the reloaded model on raw features gives the solver's loss
    model, ckpt = load_model(tmp_path / "lbfgs" / "best.pt")
    assert set(ckpt.model) == set(solved.raw_model.state_dict())  # no extra state in the checkpoint
    assert head_loss(model.head, x, y) == pytest.approx(row["train_loss"], rel=1e-4)
    with torch.no_grad():
        assert torch.allclose(model.head(x[0]), solved.raw_model.head(x[0]))


def test_fold_standardization_gives_the_same_logits():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen) * torch.tensor([1.0, 10.0, 0.01, 3.0, 0.0, 5.0]) + 7.0  # one constant
    y = torch.arange(50) % 3
    mean, std = standardization(x)
    w, _ = fit_softmax((x - mean) / std, y, 3, l2=1e-2)
    w_raw, b_raw = fold_standardization(w[:, :-1], w[:, -1], mean, std)
    assert torch.allclose((x - mean) / std @ w[:, :-1].T + w[:, -1], x @ w_raw.T + b_raw, atol=1e-4)
    assert std[4] == 1.0  # a constant feature is left as it is, not divided by ~0


def test_stratified_folds_hold_out_every_class():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 7)
    folds = stratified_folds(labels, 3, seed=0)
    for f in range(3):
        assert set(labels[folds == f]) == {0, 1, 2}


def test_small_validation_keeps_the_last_epoch(tmp_path, tiny_motion_dataset):
    """8 validation videos: best.pt is the last epoch (best_checkpoint=auto); `best` keeps the old rule."""
    for rule, expect_last in (("auto", True), ("best", False)):
        out = tmp_path / rule
        out.mkdir()
        cfg = load_config(REPO / "configs" / "demo.yaml",
                          [f"data.root={tiny_motion_dataset}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES,
                           "train.epochs=2", "optim.lr=1e-12", "train.max_steps_per_epoch=1",
                           f"train.best_checkpoint={rule}"])
        recipe = build_recipe(cfg, ONE_PROCESS, out)
        recipe.setup()
        recipe.record_best(0.9, 0)  # a lucky first epoch...
        assert recipe.record_best(0.5, 1) is expect_last  # ...then a worse one
        assert recipe.state.best["epoch"] == (2 if expect_last else 1)


def test_the_solved_probe_is_validated_on_cached_features_as_decoding_would(tmp_path, tiny_motion_dataset,
                                                                             monkeypatch):
    """After the solve, validation reads the validation views' cached features (the backbone is frozen):
    the same numbers as decoding the videos again through the whole model, without the decode."""
    import videoft.recipe as recipe_module

    real_predict = recipe_module.predict

    def no_decoding(*args, **kwargs):
        raise AssertionError("validation decoded the videos again")
    monkeypatch.setattr(recipe_module, "predict", no_decoding)
    solved, _, _ = run_probe(tmp_path / "lbfgs", tiny_motion_dataset)
    row = solved.state.history[-1]
    monkeypatch.setattr(recipe_module, "predict", real_predict)
    decoded = solved.validate(0)
    assert row["val_loss"] == pytest.approx(decoded["loss"], rel=1e-5)
    for key in ("top1", "mean_class_accuracy", "video_top1", "video_mean_class_accuracy"):
        assert row[f"val_{key}"] == decoded[key], key


def test_a_stage_whose_features_separate_the_classes_is_the_one_kept():
    """solve_probe_over_stages: noise in one stage's columns, the label in another's: the held-out log loss
    picks the informative stage and its fit is the probe on those columns alone."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    informative = torch.randn(40, 2, 6, generator=g) + 3.0 * y.view(-1, 1, 1).float()
    x = torch.cat([torch.randn(40, 2, 5, generator=g), informative, torch.randn(40, 2, 4, generator=g)], dim=-1)
    columns = {"a": slice(0, 5), "b": slice(5, 11), "c": slice(11, 15)}
    val_y = torch.arange(40) % 2
    val = torch.cat([torch.randn(40, 2, 5, generator=g), torch.randn(40, 2, 6, generator=g)
                     + 3.0 * val_y.view(-1, 1, 1).float(), torch.randn(40, 2, 4, generator=g)], dim=-1)
    choice = solve_probe_over_stages(x, y, columns, 2, val=(val, val_y))
    assert choice.stage == "b" and [r["stage"] for r in choice.table] == ["a", "b", "c"]
    assert choice.table[1]["heldout_log_loss"] < 0.5 * min(choice.table[0]["heldout_log_loss"],
                                                            choice.table[2]["heldout_log_loss"])
    assert choice.fit.weight.shape == (2, 6) and "validation (40 videos)" in choice.fit.selection
    alone = solve_linear_probe(x[..., 5:11], y, 2, val=(val[..., 5:11], val_y))
    assert np.allclose(choice.fit.weight, alone.weight) and choice.fit.l2 == alone.l2
    # one training video per class and no validation: nothing can be held out, the last stage is kept
    assert solve_probe_over_stages(x[:2], y[:2], columns, 2).stage == "c"


def test_auto_feature_stage_keeps_the_probe_s_stage_in_the_model_the_checkpoint_and_a_resume(
        tmp_path, tiny_motion_dataset):
    solved, x, _ = run_probe(tmp_path / "auto", tiny_motion_dataset, "model.feature_stage=auto")
    row = json.loads((tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()[-1])
    stages = [r["stage"] for r in row["probe_stages"]]
    assert stages == list(get_backbone_spec("x3d_xs").stages)
    best = min(row["probe_stages"], key=lambda r: r["heldout_log_loss"])["stage"]
    assert row["probe_stage"] == best == solved.raw_model.feature_stage
    ckpt_model, ckpt = load_model(tmp_path / "auto" / "last.pt")
    assert ckpt.config.model.feature_stage == best and ckpt_model.feature_stage == best
    assert x.shape[-1] > ckpt_model.feature_dim  # the cache held every stage; the model reads one
    clip = torch.randint(0, 256, (1, 3, 4, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(ckpt_model(clip), solved.raw_model.eval()(clip))
    # the same command again: the finished probe resumes at its chosen stage and has nothing left to do
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.root={tiny_motion_dataset}",
                                                       f"out_dir={tmp_path / 'auto'}", *TINY_TRAIN_OVERRIDES, *PROBE,
                                                       "model.feature_stage=auto", "resume=auto"])
    again = build_recipe(cfg, ONE_PROCESS, tmp_path / "auto")
    again.setup()
    assert again.raw_model.feature_stage == best
    again.fit()
    assert len(again.state.history) == 1
    with pytest.raises(ValueError, match="model.feature_stage=auto chooses the stage with the solved linear probe"):
        load_config(None, ["data.root=x", "model.feature_stage=auto"])
