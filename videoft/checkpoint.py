"""The videoft checkpoint format: one typed record that the trainer writes and every reader shares.

On disk a checkpoint is a dict of tensors and plain containers (so `torch.load(weights_only=True)`
reads it), written atomically. It describes itself: weights, class names, backbone, clip geometry
and normalisation, the resolved config, and (for resuming) the optimizer, schedule and RNG state.
Readers go through `read_run_checkpoint`, which checks the `format` key and gives typed values, so
no reader restates a default or indexes a raw dict.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from videoft.choices import AUTO_STAGE
from videoft.config import Config, ConfigError, from_dict, to_dict
from videoft.data.transforms import Preprocessing
from videoft.engine.checkpoint import load_checkpoint, save_checkpoint
from videoft.errors import CheckpointError
from videoft.models.classifier import VideoClassifier

log = logging.getLogger("videoft")

FORMAT = "videoft/1"
# what must match for a resume (a change here means a different run, not a continuation); the clip
# geometry is compared as resolved (a backbone default and the same value typed are the same run)
RESUME_KEYS = ("model.backbone", "model.feature_stage", "model.input", "optim.name", "data.clip_len",
               "data.frame_stride", "data.crop_size", "data.short_side")


@dataclass
class TrainingState:
    """Where a run stands: everything `resume` needs beyond the weights."""

    epoch: int                     # epochs completed (when epoch_step == 0), else the epoch in progress
    epoch_step: int                # optimizer steps already done inside `epoch`
    step: int                      # global optimizer step
    optimizer: dict[str, Any]
    scaler: dict[str, Any]         # empty unless fp16 autocast with a GradScaler
    rng: dict[str, Any]            # engine.checkpoint.rng_state()
    unfreeze: dict[str, int]       # UnfreezeSchedule.state_dict(), empty when not unfreezing
    best: dict[str, Any]           # {"metric", "value", "epoch"}
    history: list[dict] = field(default_factory=list)  # one row per epoch (metrics.jsonl)
    # train.ema_decay: the trained weights (the checkpoint's `model` is then their average) and its update count
    online_model: dict[str, torch.Tensor] = field(default_factory=dict)
    ema_updates: int = 0
    # train.probe_solver=sgd: the head as it trains (standardised) and its mean/std (engine/standardize.py)
    probe_head: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RunCheckpoint:
    """A trained classifier and what inference needs to use it; `training` is set for resumable runs."""

    model: dict[str, torch.Tensor]  # VideoClassifier.state_dict()
    classes: list[str]
    backbone: str
    preprocessing: Preprocessing
    config: Config
    training: TrainingState | None = None
    # how the training data was prepared (tools/prepare.py: format, short_side, gop, quality, source);
    # empty for raw files and for checkpoints written before this field existed
    preparation: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_state(self) -> dict[str, Any]:
        """The on-disk dict (plain containers only)."""
        state: dict[str, Any] = {
            "format": FORMAT, "model": self.model, "classes": list(self.classes), "backbone": self.backbone,
            "preprocessing": self.preprocessing.as_dict(), "num_classes": self.num_classes,
            "config": to_dict(self.config), "preparation": dict(self.preparation),
        }
        if self.training is not None:
            t = self.training
            state.update({"optimizer": t.optimizer, "scaler": t.scaler, "epoch": t.epoch,
                          "epoch_step": t.epoch_step, "step": t.step, "rng": t.rng, "unfreeze": t.unfreeze,
                          "best": t.best, "history": t.history, "online_model": t.online_model,
                          "ema_updates": t.ema_updates, "probe_head": t.probe_head})
        return state

    def save(self, path: str | Path) -> None:
        """Atomic write (a crash leaves the old file or the new one, never a torn one)."""
        save_checkpoint(self.to_state(), path)


def read_run_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> RunCheckpoint:
    """Load and check a videoft checkpoint; CheckpointError in one line when `path` is not one."""
    state = load_checkpoint(path, map_location, require_model=False)
    fmt = state.get("format")
    if fmt != FORMAT:
        found = f"format {fmt!r}" if fmt is not None else f"no 'format' key; keys: {sorted(map(str, state))[:8]}"
        raise CheckpointError(f"{path}: not a videoft checkpoint ({found}); give a best.pt or last.pt "
                         f"written by tools/train.py (backbone weights go to model.weights, another "
                         f"videoft run to model.init_from)")
    missing = [k for k in ("model", "classes", "backbone", "preprocessing", "config") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete videoft checkpoint, missing {missing}")
    try:
        config = from_dict(state["config"])
        pre = Preprocessing.from_dict(state["preprocessing"])
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the checkpoint's config or preprocessing cannot be read "
                         f"({str(err).splitlines()[0]})") from None
    training = None
    if "optimizer" in state:
        training = TrainingState(epoch=state["epoch"], epoch_step=state.get("epoch_step", 0), step=state["step"],
                                 optimizer=state["optimizer"], scaler=state.get("scaler", {}), rng=state["rng"],
                                 unfreeze=state.get("unfreeze", {}), best=state["best"],
                                 history=state.get("history", []), online_model=state.get("online_model") or {},
                                 ema_updates=state.get("ema_updates", 0), probe_head=state.get("probe_head") or {})
    return RunCheckpoint(model=state["model"], classes=list(state["classes"]), backbone=state["backbone"],
                         preprocessing=pre, config=config, training=training,
                         preparation=dict(state.get("preparation") or {}))


def resume_problems(ckpt: RunCheckpoint, cfg: Config, classes: list[str], pre: Preprocessing) -> list[str]:
    """What differs between a checkpoint and this run such that resuming would not continue it."""
    problems = []
    if ckpt.classes != list(classes):
        problems.append(f"classes differ: checkpoint {ckpt.classes} vs data {list(classes)}")
    if ckpt.training is None:
        problems.append("it holds weights only, no training state")
    old, now = to_dict(ckpt.config), to_dict(cfg)
    for key in RESUME_KEYS:
        section, name = key.split(".")
        if section == "data":  # resolved geometry, as the checkpoint's preprocessing records it
            was, want = getattr(ckpt.preprocessing, name), getattr(pre, name)
        else:
            was, want = old[section][name], now[section][name]
        if key == "model.feature_stage" and want == AUTO_STAGE and was is not None:  # auto: the stage it chose
            continue
        if was != want:
            problems.append(f"{key}: checkpoint has {was!r}, config has {want!r}")
    return problems


def check_resume_compatible(ckpt: RunCheckpoint, cfg: Config, classes: list[str], path: Path,
                            pre: Preprocessing | None = None) -> None:
    """Refuse to resume a checkpoint whose classes, model, optimizer or clip geometry differ from this run."""
    problems = resume_problems(ckpt, cfg, classes, pre or ckpt.preprocessing)
    if problems:
        raise CheckpointError(f"cannot resume from {path}: " + "; ".join(problems),
                              remedy="Start a new run (another out_dir), or use model.init_from to fine-tune from it")


def init_from_checkpoint(model: VideoClassifier, path: str, classes: list[str],
                         ckpt: RunCheckpoint | None = None) -> None:
    """Start from another videoft run's weights; keep its head only if the classes are the same."""
    ckpt = ckpt or read_run_checkpoint(path)
    weights = ckpt.model
    if ckpt.classes != list(classes):
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
        log.info("init_from %s: backbone weights loaded, head re-made for %d classes", path, len(classes))
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in weights.items()
              if k in own and v.shape != own[k].shape]
    bad = [k for k in own if k not in weights and not k.startswith("head.")] + [k for k in weights if k not in own]
    if shapes or bad:
        raise CheckpointError(f"model.init_from {path}: its {ckpt.backbone} weights do not fit the model this "
                              f"run builds (shape mismatches: {shapes[:4]}; missing or unexpected keys: {bad[:4]})",
                              remedy=f"model.init_from needs a run of the same backbone ({ckpt.backbone}) and "
                                     "clip geometry")
    model.load_state_dict(weights, strict=False)
    if ckpt.config.model.input != model.input_frames:
        log.warning("model.init_from %s: its weights learnt on %s frames, this run feeds %s frames "
                    "(model.input): they start from features of another input", path, ckpt.config.model.input,
                    model.input_frames)
