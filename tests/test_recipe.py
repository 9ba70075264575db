"""The recipe's named steps, in process: setup, a short fit, save and resume through RunState."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TRAIN_OVERRIDES
from videoft.checkpoint import read_run_checkpoint
from videoft.config import load_config
from videoft.engine.distributed import DistInfo
from videoft.models.backbones import get_backbone_spec
from videoft.recipe import FineTuneRecipe, resolve_preprocessing
from videoft.runner import build_recipe

REPO = Path(__file__).resolve().parents[1]
ONE_PROCESS = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


pytestmark = pytest.mark.usefixtures("restore_threads")


def make_recipe(tmp_path: Path, data: Path, *extra: str) -> FineTuneRecipe:
    out = tmp_path / "run"
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.root={data}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES, *extra])
    return build_recipe(cfg, ONE_PROCESS, out)


def test_preprocessing_follows_backbone_then_config():
    cfg = load_config(None, ["data.root=x", "model.backbone=x3d_s"])
    pre = resolve_preprocessing(cfg, get_backbone_spec("x3d_s"))
    assert (pre.clip_len, pre.frame_stride, pre.crop_size, pre.short_side) == (13, 6, 160, 182)
    cfg = load_config(None, ["data.root=x", "model.backbone=x3d_s", "data.crop_size=80", "data.clip_len=4"])
    pre = resolve_preprocessing(cfg, get_backbone_spec("x3d_s"))
    assert (pre.clip_len, pre.crop_size, pre.short_side) == (4, 80, 91)  # short side keeps the 182/160 ratio


def test_setup_steps_build_what_the_config_says(tmp_path, tiny_motion_dataset):
    recipe = make_recipe(tmp_path, tiny_motion_dataset, "freeze.stages=3", "optim.accum_steps=2",
                         "train.epochs=3", "optim.warmup_epochs=1")
    recipe.setup_runtime()
    recipe.setup_data()
    assert recipe.classes == ["bounce", "roll", "spin", "throw"]
    recipe.validate_setup()
    assert (recipe.out_dir / "config.yaml").is_file() and (recipe.out_dir / "splits.json").is_file()
    recipe.setup_model()
    stages = recipe.spec.stages
    frozen = {n for n, p in recipe.raw_model.named_parameters() if not p.requires_grad}
    assert frozen and all(any(n.startswith(f"backbone.{s}.") for s in stages[:3]) for n in frozen)
    assert recipe.state.frozen_stages == 3
    recipe.setup_precision()
    assert recipe.scaler is None  # no fp16 on the CPU: bf16 or fp32 (timed), neither needs a scaler
    assert recipe.amp_dtype in (None, torch.bfloat16) and isinstance(recipe.channels_last, bool)
    recipe.setup_optimizer()
    recipe.setup_loaders()
    assert len(recipe.train_loader) == 3  # 12 training videos, batch 4
    assert recipe.val_loader is not None and len(recipe.val_loader.dataset) == 8
    recipe.setup_lr_schedule()
    assert recipe.total_steps == 2 * 3 and recipe.warmup_steps == 2  # ceil(3 / 2) steps per epoch
    assert recipe.lr_at(0) == pytest.approx(0.5) and recipe.lr_at(1) == pytest.approx(1.0)
    assert recipe.maybe_resume() is False
    recipe.wrap_model()
    assert recipe.model is recipe.raw_model  # one process: no DDP wrapper


def test_fit_saves_a_checkpoint_that_resumes_the_run_state(tmp_path, tiny_motion_dataset):
    recipe = make_recipe(tmp_path, tiny_motion_dataset, "train.epochs=1", "train.max_steps_per_epoch=2")
    recipe.setup()
    summary = recipe.fit()
    assert summary["epochs_run"] == 1 and recipe.state.epoch == 1 and recipe.state.step == 2
    assert recipe.state.best["epoch"] == 1
    ckpt = read_run_checkpoint(recipe.out_dir / "last.pt")
    assert ckpt.classes == recipe.classes and ckpt.preprocessing == recipe.pre
    assert ckpt.training.epoch == 1 and ckpt.training.step == 2 and ckpt.training.epoch_step == 0
    assert ckpt.config.data.root == str(tiny_motion_dataset)

    again = make_recipe(tmp_path, tiny_motion_dataset, "train.epochs=2", "train.max_steps_per_epoch=2",
                        "resume=auto")
    again.setup()
    assert (again.state.epoch, again.state.step) == (1, 2)
    assert again.state.best == recipe.state.best and again.state.history == recipe.state.history
    for k, v in recipe.raw_model.state_dict().items():
        assert torch.equal(v, again.raw_model.state_dict()[k]), k
    again.fit()
    assert again.state.epoch == 2 and again.state.step == 4 and len(again.state.history) == 2


def test_resume_with_changed_geometry_is_refused_before_training(tmp_path, tiny_motion_dataset):
    recipe = make_recipe(tmp_path, tiny_motion_dataset, "train.epochs=1", "train.max_steps_per_epoch=1")
    recipe.setup()
    recipe.fit()
    other = make_recipe(tmp_path, tiny_motion_dataset, "train.epochs=2", "resume=auto", "data.crop_size=24",
                        "data.short_side=28")
    with pytest.raises(ValueError, match="data.crop_size: checkpoint has 32, config has 24"):
        other.setup()


def test_validation_loss_is_the_centre_clip_cross_entropy(tmp_path, tiny_motion_dataset):
    """val_loss: mean cross-entropy of the clip-level prediction (centre clip, centre crop), recomputed
    here from the model's logits on the validation views with torch's own cross_entropy."""
    from videoft.engine.evaluate import centre_view_index

    recipe = make_recipe(tmp_path, tiny_motion_dataset, "train.epochs=1", "train.max_steps_per_epoch=1")
    recipe.setup()
    metrics = recipe.validate(0)
    dataset = recipe.val_loader.dataset
    centre = centre_view_index(dataset.num_clips, 1)
    items = [dataset[i] for i in range(len(dataset))]
    with torch.no_grad():
        logits = recipe.raw_model.eval()(torch.stack([item["video"][centre] for item in items]))
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([item["label"] for item in items]))
    assert metrics["loss"] == pytest.approx(expected.item(), rel=1e-4)
    recipe.fit()
    row = recipe.state.history[-1]
    assert row["val_loss"] > 0 and row["val_loss"] == pytest.approx(recipe.validate(0)["loss"], rel=1e-4)


def test_schedule_length_is_the_steps_taken_with_a_partial_accumulation_window(tmp_path, tiny_motion_dataset):
    """12 training videos, batch 4: 3 batches per epoch; accum_steps 2 -> windows of 2 and 1 -> 2 steps."""
    recipe = make_recipe(tmp_path, tiny_motion_dataset, "optim.accum_steps=2", "train.epochs=2",
                         "data.val_fraction=0", "optim.min_lr_ratio=0.1")
    recipe.setup()
    assert recipe.total_steps == 4
    recipe.fit()
    assert recipe.state.step == recipe.total_steps == 4
    assert recipe.lr_at(recipe.state.step) == pytest.approx(0.1)  # the cosine ends where the run ends


def test_deterministic_sets_what_cuda_needs(tmp_path, tiny_motion_dataset, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        make_recipe(tmp_path, tiny_motion_dataset, "train.deterministic=true").setup_runtime()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[:2]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])


def test_several_clips_per_training_video_train_and_recompute_batchnorm(tmp_path, tiny_motion_dataset):
    """data.train_clips=2: batches [B, 2, C, T, H, W], each clip an example (labels repeated), precise BN too."""
    recipe = make_recipe(tmp_path, tiny_motion_dataset, "train.epochs=1", "data.train_clips=2",
                         "train.precise_bn_batches=2", "train.max_steps_per_epoch=2")
    recipe.setup()
    batch = next(iter(recipe.train_loader))
    assert batch["video"].shape[:2] == (4, 2) and recipe.step_options.multi_view
    summary = recipe.fit()
    assert summary["epochs_run"] == 1 and recipe.state.step == 2
    assert recipe.state.history[-1]["train_loss"] > 0 and "val_top1" in recipe.state.history[-1]
    with pytest.raises(ValueError, match="the linear probe trains on the evaluation views"):
        load_config(None, ["data.root=x", "data.train_clips=2", "train.linear_probe=true"])


def test_a_probe_on_an_earlier_stage_of_another_run_saves_a_model_that_loads_and_resumes_only_so(
        tmp_path, tiny_motion_dataset):
    """model.feature_stage with model.init_from: the kept stages carry the other run's weights, the solved head
    reads the stage's features, load_model rebuilds the same cut model, and a resume must keep the stage."""
    from videoft.inference import load_model

    source = make_recipe(tmp_path / "source", tiny_motion_dataset, "train.epochs=1", "train.max_steps_per_epoch=2")
    source.setup()
    source.fit()
    init = source.out_dir / "last.pt"
    probe = make_recipe(tmp_path / "probe", tiny_motion_dataset, f"model.init_from={init}", "train.linear_probe=true",
                        "model.feature_stage=blocks.2", "train.epochs=1")
    probe.setup()
    assert probe.spec.stages == ("blocks.0", "blocks.1", "blocks.2")
    assert probe.raw_model.feature_dim == 48 == probe.raw_model.head[1].in_features  # X3D's blocks.2 width
    source_weights = read_run_checkpoint(init).model
    probe.fit()
    saved = read_run_checkpoint(probe.out_dir / "last.pt")
    backbone = {k: v for k, v in saved.model.items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(v, source_weights[k]) for k, v in backbone.items())  # frozen, carried over
    assert not any(k.startswith("backbone.blocks.3.") for k in saved.model)
    model, _ = load_model(probe.out_dir / "last.pt")
    x = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(x), probe.raw_model.eval()(x))
    other = make_recipe(tmp_path / "probe", tiny_motion_dataset, f"model.init_from={init}", "train.linear_probe=true",
                        "model.feature_stage=blocks.3", "train.epochs=2", "resume=auto")
    with pytest.raises(ValueError, match="model.feature_stage: checkpoint has 'blocks.2', config has 'blocks.3'"):
        other.setup()


def test_build_recipe_gives_the_solved_probe_its_own_recipe(tmp_path, tiny_motion_dataset):
    from videoft.probe_recipe import SolvedProbeRecipe

    assert type(make_recipe(tmp_path / "a", tiny_motion_dataset)) is FineTuneRecipe
    assert type(make_recipe(tmp_path / "b", tiny_motion_dataset, "train.linear_probe=true")) is SolvedProbeRecipe
    sgd = make_recipe(tmp_path / "c", tiny_motion_dataset, "train.linear_probe=true", "train.probe_solver=sgd")
    assert type(sgd) is FineTuneRecipe  # the SGD probe trains by steps on the cache
    wrong = FineTuneRecipe(make_recipe(tmp_path / "d", tiny_motion_dataset, "train.linear_probe=true").cfg,
                           ONE_PROCESS, tmp_path / "d")
    with pytest.raises(TypeError, match="SolvedProbeRecipe"):
        wrong.fit()


def test_a_residual_input_run_saves_a_model_that_loads_and_resumes_only_so(tmp_path, tiny_motion_dataset, caplog):
    """model.input=residual: the checkpoint's config rebuilds the same model for inference, and a resume with
    rgb input is refused (the weights learnt on differences)."""
    from videoft.inference import load_model

    recipe = make_recipe(tmp_path, tiny_motion_dataset, "train.epochs=1", "train.max_steps_per_epoch=2",
                         "model.input=residual")
    recipe.setup()
    assert recipe.raw_model.input_frames == "residual"
    recipe.fit()
    model, _ = load_model(recipe.out_dir / "last.pt")
    assert model.input_frames == "residual"
    x = torch.randint(0, 200, (2, 3, 4, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(x), recipe.raw_model.eval()(x))
        assert torch.allclose(model(x), model(x + 30), atol=1e-5)
    other = make_recipe(tmp_path, tiny_motion_dataset, "train.epochs=2", "resume=auto")
    with pytest.raises(ValueError, match="model.input: checkpoint has 'residual', config has 'rgb'"):
        other.setup()
    caplog.clear()
    rgb = make_recipe(tmp_path / "rgb", tiny_motion_dataset, "train.epochs=1",
                      f"model.init_from={recipe.out_dir / 'last.pt'}")
    rgb.setup()
    assert "its weights learnt on residual frames, this run feeds rgb frames" in caplog.text
    with pytest.raises(ValueError, match="model.input=residual feeds the differences"):
        load_config(None, ["data.root=x", "model.input=residual", "data.clip_len=1"])
