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

from videoft.config import Config, ConfigError, from_dict, to_dict
from videoft.data.transforms import Preprocessing
from videoft.engine.checkpoint import load_checkpoint, save_checkpoint
from videoft.models.classifier import VideoClassifier

log = logging.getLogger("videoft")

FORMAT = "videoft/1"
# what must match for a resume (a change here means a different run, not a continuation)
RESUME_KEYS = ("model.backbone", "data.clip_len", "data.frame_stride", "data.crop_size")


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


@dataclass
class RunCheckpoint:
    """A trained classifier and what inference needs to use it; `training` is set for resumable runs."""

    model: dict[str, torch.Tensor]  # VideoClassifier.state_dict()
    classes: list[str]
    backbone: str
    preprocessing: Preprocessing
    config: Config
    training: TrainingState | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_state(self) -> dict[str, Any]:
        """The on-disk dict (plain containers only)."""
        state: dict[str, Any] = {
            "format": FORMAT, "model": self.model, "classes": list(self.classes), "backbone": self.backbone,
            "preprocessing": self.preprocessing.as_dict(), "num_classes": self.num_classes,
            "config": to_dict(self.config),
        }
        if self.training is not None:
            t = self.training
            state.update({"optimizer": t.optimizer, "scaler": t.scaler, "epoch": t.epoch,
                          "epoch_step": t.epoch_step, "step": t.step, "rng": t.rng, "unfreeze": t.unfreeze,
                          "best": t.best, "history": t.history})
        return state

    def save(self, path: str | Path) -> None:
        """Atomic write (a crash leaves the old file or the new one, never a torn one)."""
        save_checkpoint(self.to_state(), path)


def read_run_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> RunCheckpoint:
    """Load and check a videoft checkpoint; ValueError in one line when `path` is not one."""
    state = load_checkpoint(path, map_location)
    fmt = state.get("format")
    if fmt != FORMAT:
        found = f"format {fmt!r}" if fmt is not None else f"no 'format' key; keys: {sorted(state)[:8]}"
        raise ValueError(f"{path}: not a videoft checkpoint ({found}); give a best.pt or last.pt "
                         f"written by tools/train.py (backbone weights go to model.weights, another "
                         f"videoft run to model.init_from)")
    missing = [k for k in ("model", "classes", "backbone", "preprocessing", "config") if k not in state]
    if missing:
        raise ValueError(f"{path}: incomplete videoft checkpoint, missing {missing}")
    try:
        config = from_dict(state["config"])
        pre = Preprocessing.from_dict(state["preprocessing"])
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: the checkpoint's config or preprocessing cannot be read "
                         f"({str(err).splitlines()[0]})") from None
    training = None
    if "optimizer" in state:
        training = TrainingState(epoch=state["epoch"], epoch_step=state.get("epoch_step", 0), step=state["step"],
                                 optimizer=state["optimizer"], scaler=state.get("scaler", {}), rng=state["rng"],
                                 unfreeze=state.get("unfreeze", {}), best=state["best"],
                                 history=state.get("history", []))
    return RunCheckpoint(model=state["model"], classes=list(state["classes"]), backbone=state["backbone"],
                         preprocessing=pre, config=config, training=training)


def check_resume_compatible(ckpt: RunCheckpoint, cfg: Config, classes: list[str], path: Path) -> None:
    """Refuse to resume a checkpoint whose classes or model differ from this config."""
    problems = []
    if ckpt.classes != list(classes):
        problems.append(f"classes differ: checkpoint {ckpt.classes} vs data {list(classes)}")
    old, now = to_dict(ckpt.config), to_dict(cfg)
    for key in RESUME_KEYS:
        section, name = key.split(".")
        if old[section][name] != now[section][name]:
            problems.append(f"{key}: checkpoint has {old[section][name]!r}, config has {now[section][name]!r}")
    if problems:
        raise ValueError(f"cannot resume from {path}: " + "; ".join(problems)
                         + ". Start a new run (another out_dir), or use model.init_from to fine-tune from it.")


def init_from_checkpoint(model: VideoClassifier, path: str, classes: list[str]) -> None:
    """Start from another videoft run's weights; keep its head only if the classes are the same."""
    ckpt = read_run_checkpoint(path)
    weights = ckpt.model
    if ckpt.classes != list(classes):
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
        log.info("init_from %s: backbone weights loaded, head re-made for %d classes", path, len(classes))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    bad = [k for k in missing if not k.startswith("head.")] + list(unexpected)
    if bad:
        raise ValueError(f"init_from {path}: weights do not match backbone {ckpt.backbone}: {bad[:8]}")
