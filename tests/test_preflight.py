"""Checks that run before the model is built (issue #11 cases 4, 5, 7): all problems in one error, the
model never built, the out_dir left as it was; warnings for classes validation cannot see."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TRAIN_OVERRIDES
from videoft.checkpoint import init_from_checkpoint, read_run_checkpoint
from videoft.config import load_config
from videoft.engine.distributed import DistInfo
from videoft.errors import CheckpointError, ConfigError, DataError
from videoft.models.classifier import build_classifier
from videoft.preflight import runtime_problems
from videoft.recipe import FineTuneRecipe

REPO = Path(__file__).resolve().parents[1]
ONE_PROCESS = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


pytestmark = pytest.mark.usefixtures("restore_threads")


def make_recipe(out: Path, data: Path, *extra: str) -> FineTuneRecipe:
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.root={data}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES, *extra])
    return FineTuneRecipe(cfg, ONE_PROCESS, out)


def refused(recipe: FineTuneRecipe, kind: type[Exception]) -> Exception:
    """setup() raises `kind` before the model exists."""
    with pytest.raises(kind) as err:
        recipe.setup()
    assert not hasattr(recipe, "raw_model"), "the model was built before the problem was reported"
    return err.value


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_motion_dataset) -> Path:
    """out_dir of a one-step run of the tiny motion data (last.pt to resume from)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    recipe = make_recipe(out, tiny_motion_dataset, "train.epochs=1", "train.max_steps_per_epoch=1")
    recipe.setup()
    recipe.fit()
    return out


def test_one_class_is_refused(tmp_path, make_class_folder):
    data = make_class_folder(tmp_path / "data", {"diving": 4})
    err = refused(make_recipe(tmp_path / "run", data), DataError)
    assert str(err) == (f"data.root {data} has 1 class (diving): a classifier needs at least two (data.root is "
                        "the folder that holds one folder per class)")


def test_a_class_only_in_validation_is_refused(tmp_path, make_class_folder):
    data = tmp_path / "data"
    make_class_folder(data / "train", {"a": 2, "b": 2})
    make_class_folder(data / "val", {"a": 2, "b": 2, "c": 2})
    err = refused(make_recipe(tmp_path / "run", data), DataError)
    assert "class(es) ['c'] have no training videos" in str(err)


def test_classes_validation_cannot_see_are_named_with_the_reason(tmp_path, make_class_folder, caplog):
    data = make_class_folder(tmp_path / "data", {"archery": 6, "bowling": 4})
    make_class_folder(data, {"cricket": 1})                 # a single video
    make_class_folder(data, {"diving": 3}, per_group=3)     # three videos, all in group g01
    recipe = make_recipe(tmp_path / "run", data)
    recipe.setup_runtime()
    recipe.setup_data()
    with caplog.at_level(logging.WARNING, logger="videoft"):
        recipe.validate_setup()
    assert caplog.messages == [
        "the val split has no video of 2 class(es): cricket (a single video); diving (all 3 videos in one group, "
        "g1, kept on one side). They train but are never validated, and mean-class accuracy averages over the "
        "other 2 classes only; add videos from other groups, or give a val/ folder"]


def test_every_problem_is_reported_together_before_the_model(tmp_path, make_class_folder):
    data = make_class_folder(tmp_path / "data", {"diving": 4})
    recipe = make_recipe(tmp_path / "run", data, "model.backbone=s3d", "freeze.stages=13",
                         "data.crop_size=null", "data.short_side=100", "data.clip_len=4")
    err = refused(recipe, ConfigError)
    assert err.problems == [
        "model.backbone: s3d needs clip_len >= 5 and crop_size >= 17; got clip_len=4, crop_size=224 (set "
        "data.clip_len / data.crop_size)",
        "data.crop_size 224 is larger than the frames it is cut from (short side 100 x data.scale_jitter low 1.0; "
        "s3d's default where not set): lower data.crop_size or raise data.short_side",
        "freeze.stages: 13, but s3d has 12 stages (0..12, or -1 for the whole backbone)",
        f"data.root {data} has 1 class (diving): a classifier needs at least two (data.root is the folder that "
        "holds one folder per class)",
    ]
    assert str(err).startswith("cannot start this run:\n  - ")


def test_runtime_problems():
    cfg = load_config(None, ["data.root=/x", "train.sync_bn=true", "data.batch_size=5"])
    two_cpu = DistInfo(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    assert runtime_problems(cfg, two_cpu) == ([
        "data.batch_size 5 (the global batch) must be divisible by the number of processes 2",
        "train.sync_bn: SyncBatchNorm needs CUDA devices; this run is on cpu (gloo): set train.sync_bn=false"], [])
    assert runtime_problems(cfg, ONE_PROCESS) == ([], [
        "train.sync_bn has no effect with one process (it synchronises BatchNorm statistics across torchrun "
        "processes)"])


@pytest.mark.parametrize("change, needle", [
    ("optim.name=sgd", "optim.name: checkpoint has 'adamw', config has 'sgd'"),
    ("data.short_side=48", "data.short_side: checkpoint has 40, config has 48"),
    ("model.backbone=r3d_18", "model.backbone: checkpoint has 'x3d_xs', config has 'r3d_18'"),
])
def test_a_resume_that_would_not_continue_the_run_is_refused_first(trained_run, tiny_motion_dataset, change,
                                                                   needle):
    """Issue #11 case 7: optimizer and short side were not compared; a changed backbone was refused only after
    the model and loaders were built. The refused run must not overwrite the run's files either."""
    before = (trained_run / "config.yaml").read_text()
    err = refused(make_recipe(trained_run, tiny_motion_dataset, "train.epochs=2", "resume=auto", change),
                  CheckpointError)
    assert str(err) == (f"cannot resume from {trained_run / 'last.pt'}: {needle}. Start a new run (another "
                        "out_dir), or use model.init_from to fine-tune from it")
    assert (trained_run / "config.yaml").read_text() == before


def test_resume_from_a_file_that_is_not_a_videoft_checkpoint(tmp_path, tiny_motion_dataset):
    torch.save({"model": {}, "optimizer": {}, "epoch": 3}, tmp_path / "other.pt")
    err = refused(make_recipe(tmp_path / "run", tiny_motion_dataset, f"resume={tmp_path / 'other.pt'}"),
                  CheckpointError)
    assert str(err).startswith(f"resume: {tmp_path / 'other.pt'}: not a videoft checkpoint (no 'format' key")


def test_init_from_another_backbone_is_refused_first(trained_run, tmp_path, tiny_motion_dataset):
    err = refused(make_recipe(tmp_path / "run", tiny_motion_dataset, "model.backbone=r3d_18",
                              f"model.init_from={trained_run / 'last.pt'}"), CheckpointError)
    assert str(err) == (f"model.init_from {trained_run / 'last.pt'}: its backbone is x3d_xs, this run builds "
                        "r3d_18 (set model.backbone=x3d_xs)")


def test_init_from_weights_that_do_not_fit_is_a_checkpoint_error(trained_run, tmp_path):
    """Issue #11 case 1: a shape mismatch in model.init_from was a RuntimeError traceback."""
    ckpt = read_run_checkpoint(trained_run / "last.pt")
    key = next(k for k in ckpt.model if k.startswith("backbone.") and ckpt.model[k].dim() == 5)
    ckpt.model[key] = torch.zeros(1, 1, 1, 1, 1)  # as if written by a model of another width
    model = build_classifier("x3d_xs", 4, clip_len=4, crop_size=32)
    with pytest.raises(CheckpointError, match=rf"model.init_from x.pt: its x3d_xs weights do not fit the model this "
                                              rf"run builds \(shape mismatches: \['{key} \(1, 1, 1, 1, 1\) vs"):
        init_from_checkpoint(model, "x.pt", ckpt.classes, ckpt=ckpt)


def test_checks_pass_for_a_good_run_and_leave_the_checkpoint_for_resume(trained_run, tmp_path,
                                                                         tiny_motion_dataset):
    out = tmp_path / "resumed"
    shutil.copytree(trained_run, out)
    recipe = make_recipe(out, tiny_motion_dataset, "train.epochs=2", "resume=auto")
    recipe.setup_runtime()
    recipe.setup_data()
    recipe.validate_setup()
    assert recipe.resume_checkpoint is not None and recipe.resume_checkpoint.training.epoch == 1
