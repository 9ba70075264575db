"""The fine-tuning recipe: setup -> fit -> cleanup. The one place that sees config, data, model and engine.

    recipe = FineTuneRecipe(cfg, dist_info, out_dir)
    recipe.setup()      # data, checks, model, optimizer, loaders, LR schedule, resume, DDP wrap (in this order)
    summary = recipe.fit()

`SolvedProbeRecipe` (videoft/probe_recipe.py) builds on it for a linear probe solved on cached features;
videoft/runner.py picks the class (`build_recipe`) and runs it (`run`, for tools/train.py). Each setup step
is a method that can be called and tested on its own; what the run has done so far lives in one
`RunState`, which every checkpoint saves and `maybe_resume` restores.
"""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from videoft.checkpoint import (
    RunCheckpoint,
    TrainingState,
    check_resume_compatible,
    init_from_checkpoint,
    read_run_checkpoint,
)
from videoft.choices import AUTO_STAGE
from videoft.config import Config, OptimConfig, dump_config
from videoft.data.dataset import load_splits, split_summary
from videoft.data.loaders import build_eval_loader, build_train_loader
from videoft.data.prepared import read_preparation
from videoft.data.segments import audit_spans
from videoft.data.transforms import Preprocessing
from videoft.data.watchdog import decode_process
from videoft.engine.autotune import choose_step_format, device_name
from videoft.engine.checkpoint import rng_state, set_rng_state
from videoft.engine.distributed import (
    DistInfo,
    barrier,
    broadcast_from_main,
    sync_bn_stats,
)
from videoft.engine.ema import build_ema, held_in
from videoft.engine.evaluate import Predictions, predict, summarize
from videoft.engine.features import cache_features, view_feature_moments
from videoft.engine.logger import RunLogger
from videoft.engine.metrics import cross_entropy
from videoft.engine.standardize import StandardizedHead, standardization_from
from videoft.engine.train import (
    EpochResult,
    NonFiniteLossError,
    StepOptions,
    amp_dtype_for,
    configure_determinism,
    lr_factor_at,
    recompute_bn_stats,
    train_one_epoch,
)
from videoft.errors import CheckpointError
from videoft.models.backbones import BackboneSpec, get_backbone_spec, through_stage
from videoft.models.classifier import FeatureExtractor, VideoClassifier, build_classifier
from videoft.models.freezing import UnfreezeSchedule, freeze_stages, param_groups
from videoft.preflight import audit_splits, check_run

log = logging.getLogger("videoft")
EpochHook = Callable[[dict], bool]  # per-epoch callback of FineTuneRecipe.fit: history row in, "stop now?" out
DETAILED_METRICS = ("clip_level", "video_level")  # per-class tables: rank 0 only (the logger's confusion matrix)
VAL_COLUMNS = ("loss", "top1", "mean_class_accuracy", "video_top1", "video_mean_class_accuracy")


def val_columns(metrics: dict) -> dict:
    """A history row's validation columns: `val_<name>`, and `val_online_<name>` for the trained weights of an
    EMA run."""
    return {**{f"val_{k}": metrics[k] for k in VAL_COLUMNS},
            **{f"val_{k}": v for k, v in metrics.items() if k.startswith("online_")}}

def resolve_preprocessing(cfg: Config, spec: BackboneSpec) -> Preprocessing:
    """The backbone's clip geometry and normalisation, overridden key by key by the config's data section."""
    d = cfg.data
    crop = d.crop_size or spec.crop_size
    # keep the backbone's short-side/crop ratio when only the crop is changed
    short = d.short_side or (spec.short_side if not d.crop_size
                             else int(round(crop * spec.short_side / spec.crop_size)))
    return Preprocessing(d.clip_len or spec.clip_len, d.frame_stride or spec.frame_stride, crop, short,
                         tuple(spec.mean), tuple(spec.std))


def setup_logging(dist: DistInfo, out_dir: Path | None) -> None:
    level = logging.INFO if dist.is_main else logging.WARNING
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if out_dir is not None and dist.is_main:
        handlers.append(logging.FileHandler(out_dir / "train.log"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        handlers=handlers, force=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: VideoClassifier, spec: BackboneSpec, o: OptimConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0) or AdamW over per-stage groups (head LR, layer decay, no decay on norms)."""
    groups = param_groups(model, spec, head_lr=o.lr, backbone_lr=o.backbone_lr if o.backbone_lr is not None else o.lr,
                          layer_decay=o.layer_decay, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)


@dataclass
class RunState:
    """Where the run stands: saved in every checkpoint, restored by a resume."""

    epoch: int = 0                 # epochs completed (while an epoch runs: the one in progress)
    epoch_step: int = 0            # optimizer steps done inside the epoch in progress
    step: int = 0                  # global optimizer step (the LR schedule's position)
    best: dict = field(default_factory=dict)  # {"metric", "value", "epoch"}
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    frozen_stages: int = 0         # what gradual unfreezing has reached
    patience_left: int = 0         # early stopping
    stopped_early: bool = False
    failures: dict[str, str] = field(default_factory=dict)  # undecodable videos seen: path -> reason


class FineTuneRecipe:
    """Fine-tune a zoo backbone on a video folder as `cfg` says (see the module docstring)."""

    def __init__(self, cfg: Config, dist: DistInfo, out_dir: Path):
        self.cfg, self.dist, self.out_dir = cfg, dist, Path(out_dir)
        self.state = RunState(best={"metric": cfg.train.best_metric, "value": -math.inf, "epoch": -1},
                              patience_left=cfg.train.early_stop_patience)
        self.schedule: UnfreezeSchedule | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.resume_checkpoint: RunCheckpoint | None = None     # read by validate_setup, used by maybe_resume
        self.init_checkpoint: RunCheckpoint | None = None
        self.keep_last = False  # best.pt follows the last epoch (validation too small to choose one)
        self.preparation: dict = {}  # tools/prepare.py's parameters when data.root is a prepared copy
        self.ema: AveragedModel | None = None  # train.ema_decay: the average that is validated and saved
        self.trained: torch.nn.Module | None = None  # what the optimizer steps (wrap_model); DDP-wrapped: .model
        self.probe_head: StandardizedHead | None = None  # the linear probe trained by steps (setup_probe_head)

    # ---- setup ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Every step in order; the order is part of the recipe (the RNG is drawn in this order)."""
        self.setup_runtime()
        self.setup_data()
        self.validate_setup()
        self.setup_model()
        self.setup_precision()
        self.setup_ema()
        self.setup_optimizer()
        self.setup_loaders()
        self.setup_lr_schedule()
        self.maybe_resume()
        self.wrap_model()

    def setup_runtime(self) -> None:
        """Threads, seeds, determinism."""
        if self.cfg.train.threads:
            torch.set_num_threads(self.cfg.train.threads)
        seed_everything(self.cfg.seed)
        configure_determinism(self.cfg.train.deterministic)

    def setup_data(self) -> None:
        """Backbone spec, preprocessing, splits and classes (with data.audit: quarantined files left out)."""
        cfg, dist = self.cfg, self.dist
        self.spec = get_backbone_spec(cfg.model.backbone)
        self.pre = resolve_preprocessing(cfg, self.spec)
        self.splits, self.classes = load_splits(cfg.data.root, val_fraction=cfg.data.val_fraction,
                                                test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed)
        if cfg.data.audit:  # after the split, so leaving files out does not move the others between splits
            self.splits, quarantined = audit_splits(self.splits, self.classes, self.pre, dist, self.out_dir,
                                                    root=cfg.data.root, workers=cfg.data.num_workers,
                                                    timeout=cfg.data.decode_timeout, backend=cfg.data.decoder)
            self.state.failures.update(quarantined)
        if cfg.data.decode_timeout and cfg.data.num_workers == 0:
            # this process decodes: fork its decode child now, before the model exists (see decode_process)
            decode_process(cfg.data.decode_timeout).start()
        log.info("data %s: %d classes\n%s", cfg.data.root, len(self.classes),
                 split_summary(self.splits, self.classes))
        self.preparation = read_preparation(cfg.data.root)
        if self.preparation:
            log.info("data prepared by tools/prepare.py: %s, short side %s (manifest %s)",
                     self.preparation.get("format"), self.preparation.get("short_side"),
                     self.preparation.get("manifest"))
            if int(self.preparation.get("short_side") or 0) < self.pre.short_side:
                log.warning("the data was prepared at short side %s, below the training short side %d: frames "
                            "are upscaled (prepare again with --short-side %d)", self.preparation.get("short_side"),
                            self.pre.short_side, self.pre.short_side)
        if dist.is_main:
            span_problems = audit_spans([s for part in self.splits.values() for s in part])
            for problem in span_problems[:10]:
                log.warning("segment span: %s", problem)
            if len(span_problems) > 10:
                log.warning("... %d more segment span problems", len(span_problems) - 10)
        log.info("backbone %s, clip %d frames x stride %d, crop %d (short side %d), %d process(es) on %s, %s",
                 self.spec.name, self.pre.clip_len, self.pre.frame_stride, self.pre.crop_size, self.pre.short_side,
                 dist.world_size, dist.device, f"backend {dist.backend}" if dist.backend else "no process group")

    def validate_setup(self) -> None:
        """Every check that needs no model (geometry, runtime, data, resume/init_from checkpoints), before
        the model is built or weights downloaded: all problems in one error, warnings logged."""
        found = check_run(self.cfg, self.spec, self.pre, self.dist, self.splits, self.classes, self.resume_path())
        for warning in found.warnings:
            log.warning("%s", warning)
        found.raise_if_any()
        self.resume_checkpoint, self.init_checkpoint = found.resume, found.init_from
        if self.dist.is_main:  # only now: a refused run (a resume that does not fit) leaves out_dir as it was
            dump_config(self.cfg, self.out_dir / "config.yaml")
            (self.out_dir / "classes.txt").write_text("\n".join(self.classes) + "\n")
            (self.out_dir / "splits.json").write_text(json.dumps(
                {k: [s.describe() for s in v] for k, v in self.splits.items()}, indent=1))

    def setup_model(self) -> None:
        """Build the classifier (weights, init_from), freeze as configured, move it to the device."""
        cfg, spec = self.cfg, self.spec
        model = build_classifier(spec.name, len(self.classes), clip_len=self.pre.clip_len,
                                 crop_size=self.pre.crop_size, pretrained=cfg.model.pretrained,
                                 weights=cfg.model.weights, on_missing_weights=cfg.model.on_missing_weights,
                                 dropout=cfg.model.dropout, model_dir=cfg.model.model_dir,
                                 drop_path=cfg.model.drop_path, input_frames=cfg.model.input)
        if cfg.model.init_from:
            init_from_checkpoint(model, cfg.model.init_from, self.classes, ckpt=self.init_checkpoint)
        if cfg.model.feature_stage not in (None, AUTO_STAGE):  # after any weights are in: the cut keeps those of
            # the stages it keeps (auto: SolvedProbeRecipe cuts at the stage the probe chose)
            model.cut_at(cfg.model.feature_stage, clip_len=self.pre.clip_len, crop_size=self.pre.crop_size)
            self.spec = spec = through_stage(spec, cfg.model.feature_stage)
            log.info("model: %s cut after stage %s (%d features for the head)", spec.name, cfg.model.feature_stage,
                     model.feature_dim)
        total = len(spec.stages)
        frozen = total if cfg.freeze.stages < 0 or cfg.train.linear_probe else min(cfg.freeze.stages, total)
        u = cfg.freeze.unfreeze
        if u.every > 0:
            self.schedule = UnfreezeSchedule(head_only_epochs=u.head_only_epochs, every=u.every,
                                             total_stages=total, min_frozen=max(u.min_frozen, frozen))
            frozen = self.schedule.frozen_stages_at(0)
        freeze_stages(model, spec, frozen, bn=cfg.freeze.bn)
        self.state.frozen_stages = frozen
        model.to(self.dist.device)
        self.raw_model: VideoClassifier = model  # never DDP-wrapped: saved, evaluated and (un)frozen

    def setup_precision(self) -> None:
        """Autocast dtype and memory layout: as configured; `auto` is the fastest format for this model and CPU or
        GPU whose gradient agrees with fp32's, timed (engine.autotune; on CUDA the dtype is bf16, or fp16 without
        bf16, unless refused); (fp16 only) a gradient scaler."""
        cfg, device = self.cfg, self.dist.device
        amp_dtype = amp_dtype_for(cfg.train.amp, device)
        channels_last = cfg.train.channels_last == "on"
        timed = "auto" in (cfg.train.amp, cfg.train.channels_last) or (cfg.train.amp == "bf16" and device.type == "cpu")
        if timed and device.type in ("cpu", "cuda") and not self.caches_features:
            fmt = choose_step_format(
                self.raw_model, amp_mode=cfg.train.amp, channels_last_mode=cfg.train.channels_last,
                backbone=self.spec.name + (f"@{self.cfg.model.feature_stage}" if self.cfg.model.feature_stage else ""),
                batch=min(4, cfg.data.batch_size // self.dist.world_size),
                clip_len=self.pre.clip_len, crop=self.pre.crop_size, num_classes=len(self.classes),
                frozen_stages=self.state.frozen_stages, device=device_name(device),
                gpu_dtype=amp_dtype_for("auto", device) if device.type == "cuda" else None,
            ) if self.dist.is_main else None
            fmt = broadcast_from_main(fmt)  # every rank trains in rank 0's choice
            amp_dtype, channels_last = fmt.amp_dtype, fmt.channels_last
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        if channels_last:
            self.raw_model.to(memory_format=torch.channels_last_3d)
        if self.amp_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(device.type)
        log.info("precision: %s%s", f"{self.amp_dtype} autocast" if self.amp_dtype else "fp32",
                 ", channels_last_3d" if channels_last else "")

    def setup_ema(self) -> None:
        """The moving average of the weights (engine/ema.py), when train.ema_decay is set."""
        if self.cfg.train.ema_decay:
            self.ema = build_ema(self.raw_model, self.cfg.train.ema_decay)
            log.info("weights averaged (EMA, decay %g): validation and checkpoints use the average",
                     self.cfg.train.ema_decay)

    @property
    def caches_features(self) -> bool:
        """Linear probe on cached features: the backbone runs once without gradients, then only the head trains."""
        return self.cfg.train.linear_probe and self.cfg.train.cache_features

    def setup_optimizer(self) -> None:
        """Optimizer over per-stage groups."""
        self.optimizer = build_optimizer(self.raw_model, self.spec, self.cfg.optim)

    def setup_loaders(self) -> None:
        """Training loader (linear probe: cached backbone features) and the validation loader."""
        cfg, dist, d = self.cfg, self.dist, self.cfg.data
        per_rank_batch = d.batch_size // dist.world_size
        probe_views = (d.eval_clips, d.eval_crops) if cfg.train.linear_probe else None
        workers = {"num_workers": d.num_workers, "persistent_workers": d.persistent_workers,
                   "prefetch_factor": d.prefetch_factor, "rank": dist.rank, "world_size": dist.world_size,
                   "device": dist.device, "backend": d.decoder, "decode_timeout": d.decode_timeout,
                   "worker_nice": d.worker_nice}
        self.train_loader = build_train_loader(
            self.splits["train"], self.pre, batch_size=per_rank_batch, seed=cfg.seed, hflip=d.hflip,
            scale_jitter=d.scale_jitter, balanced=d.balanced_sampler, fixed_views=probe_views,
            train_clips=d.train_clips, **workers)
        self.val_loader = None
        if self.splits.get("val"):
            self.val_loader = build_eval_loader(
                self.splits["val"], self.pre, num_clips=d.eval_clips, num_crops=d.eval_crops,
                batch_size=max(1, per_rank_batch // 2), seed=cfg.seed, **workers)
        if self.caches_features:
            self.train_loader, failures = cache_features(
                self.feature_extractor(), self.train_loader, dist, self.out_dir / "feature_cache",
                amp_dtype=self.amp_dtype, ram_limit_mb=cfg.train.feature_cache_ram_mb)
            self.state.failures.update(failures)
        if cfg.train.linear_probe and not self.uses_probe_solver:
            self.setup_probe_head()
        self.choose_best_rule()

    def setup_probe_head(self) -> None:
        """The linear probe trained by steps: its head trains on standardised features (engine/standardize.py);
        the optimizer steps that head in place of the model's, which follows it after every step."""
        head = self.raw_model.head
        dim = head[-1].in_features
        features = None if self.caches_features else self.feature_extractor()  # None: the loader yields them
        if features is None:
            moments = self.train_loader.dataset.features.moments(dim)
        else:
            moments = view_feature_moments(features, self.train_loader, self.dist, dim, amp_dtype=self.amp_dtype)
        mean, std = standardization_from(moments)
        self.probe_head = StandardizedHead(head, mean, std, features=features)
        swap = {id(head[-1].weight): self.probe_head.linear.weight, id(head[-1].bias): self.probe_head.linear.bias}
        for group in self.optimizer.param_groups:
            group["params"] = [swap.get(id(p), p) for p in group["params"]]
        head.requires_grad_(False)  # derived from the standardised head now
        self.probe_head.fold_into(head)
        log.info("linear probe: the head trains on standardised features (%d training views; feature mean in "
                 "[%.3g, %.3g], std in [%.3g, %.3g])", int(moments[0]), float(mean.min()), float(mean.max()),
                 float(std.min()), float(std.max()))

    def feature_extractor(self) -> torch.nn.Module:
        """What the linear probe's cache holds for a clip: the backbone's features."""
        return FeatureExtractor(self.raw_model)

    @property
    def uses_probe_solver(self) -> bool:
        return self.caches_features and self.cfg.train.probe_solver == "lbfgs"

    def choose_best_rule(self) -> None:
        """best.pt: the best validated epoch, or the last one when validation is too small to choose.

        With a few videos the validation accuracy moves in steps of 1/n: the best of many epochs is
        mostly the luckiest, usually an early one. The cosine schedule's last epoch is then the better
        pick (as papers report the final epoch). Early stopping is an explicit request to choose by
        validation, so it keeps the best epoch."""
        t, n_val = self.cfg.train, len(self.splits.get("val") or [])
        small = n_val < t.min_val_videos and not t.early_stop_patience and not self.uses_probe_solver
        self.keep_last = t.best_checkpoint == "last" or (t.best_checkpoint == "auto" and small)
        if t.best_checkpoint == "auto" and small and n_val:
            log.warning("validation has %d videos (< train.min_val_videos %d): best.pt is the last epoch, not the "
                        "best validated one (train.best_checkpoint=auto; set best to override)", n_val,
                        t.min_val_videos)

    def setup_lr_schedule(self) -> None:
        """Steps per epoch, warm-up + cosine length, and the per-step options (loss, AMP, accumulation)."""
        cfg, o = self.cfg, self.cfg.optim
        # the optimizer steps an epoch really takes: a last, partial accumulation window is stepped too
        steps_per_epoch = math.ceil(len(self.train_loader) / o.accum_steps)
        if cfg.train.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
        self.total_steps = steps_per_epoch * cfg.train.epochs
        self.warmup_steps = int(round(o.warmup_epochs * steps_per_epoch))
        class_weights = None
        if o.class_weighted_loss:
            labels = torch.tensor([s.label for s in self.splits["train"]])
            counts = torch.bincount(labels, minlength=len(self.classes)).float()
            class_weights = (counts.sum() / (len(self.classes) * counts.clamp(min=1))).to(self.dist.device)
        self.step_options = StepOptions(
            accum_steps=o.accum_steps, grad_clip=o.grad_clip, amp_dtype=self.amp_dtype,
            label_smoothing=o.label_smoothing, class_weights=class_weights, mixup_alpha=o.mixup_alpha,
            cutmix_alpha=o.cutmix_alpha, channels_last=self.channels_last,
            max_steps=cfg.train.max_steps_per_epoch, multi_view=cfg.train.linear_probe or cfg.data.train_clips > 1)

    def lr_at(self, step: int) -> float:
        """The LR factor at a global optimizer step (warm-up, then cosine)."""
        return lr_factor_at(step, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                            min_ratio=self.cfg.optim.min_lr_ratio)

    def resume_path(self) -> Path | None:
        resume = self.cfg.resume
        return self.out_dir / "last.pt" if resume == "auto" else (Path(resume) if resume else None)

    def maybe_resume(self) -> bool:
        """Continue from the resume checkpoint if there is one: weights, optimizer, schedule, RNG, progress."""
        path = self.resume_path()
        if path is None or not path.is_file():
            if self.cfg.resume not in (None, "auto"):
                raise CheckpointError(f"resume: {self.cfg.resume} does not exist")
            return False
        ckpt = self.resume_checkpoint
        if ckpt is None:  # validate_setup was not run (a step called on its own)
            ckpt = read_run_checkpoint(path)
            check_resume_compatible(ckpt, self.cfg, self.classes, path, self.pre)
        self.resume_checkpoint = None  # the weights and optimizer state need not stay in memory
        t = ckpt.training
        if self.schedule is not None and t.unfreeze:
            self.schedule.load_state_dict(t.unfreeze)
            self.state.frozen_stages = self.schedule.frozen_stages_at(t.epoch)
            freeze_stages(self.raw_model, self.spec, self.state.frozen_stages, bn=self.cfg.freeze.bn)
        self.raw_model.load_state_dict(t.online_model or ckpt.model)  # with EMA, `model` is the average
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt.model)
            self.ema.n_averaged.fill_(t.ema_updates)
        configured = [(g["base_lr"], g["weight_decay"]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(t.optimizer)
        # the config is the source of truth for LRs and weight decay (load_state_dict restores the old ones)
        for group, (base_lr, wd) in zip(self.optimizer.param_groups, configured):
            group["base_lr"], group["weight_decay"] = base_lr, wd
        if self.scaler is not None and t.scaler:
            self.scaler.load_state_dict(t.scaler)
        if self.probe_head is not None:
            if t.probe_head:
                self.probe_head.load_training_state(t.probe_head)
            else:  # written before the probe standardised: carry on from the raw head it holds
                log.warning("%s holds no standardised probe head: continuing from its raw head", path)
                self.probe_head.unfold_from(self.raw_model.head)
        self.state.epoch, self.state.step, self.state.epoch_step = t.epoch, t.step, t.epoch_step
        self.state.best, self.state.history = t.best, t.history
        set_rng_state(t.rng)
        log.info("resumed from %s: epoch %d (+%d steps), global step %d", path, t.epoch, t.epoch_step, t.step)
        return True

    def wrap_model(self) -> None:
        """SyncBatchNorm if asked; DDP around what trains (only the head on cached features)."""
        if self.dist.distributed and self.cfg.train.sync_bn and self.dist.device.type != "cuda":
            log.warning("train.sync_bn: SyncBatchNorm needs GPUs; on %s each process keeps its own BatchNorm "
                        "statistics", self.dist.device)
        elif self.dist.distributed and self.cfg.train.sync_bn:
            self.raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.raw_model)  # same Parameters
        # the linear probe trained by steps: its standardised head (on cached features, or on the model's);
        # the solved probe on cached features: the head it solves
        self.trained = self.probe_head if self.probe_head is not None else \
            self.raw_model.head if self.caches_features else self.raw_model
        self.model = self._ddp(self.trained)

    def _ddp(self, module: torch.nn.Module) -> torch.nn.Module:
        """DDP registers the parameters that require grad when it wraps: re-wrap after unfreezing."""
        if not self.dist.distributed:
            return module
        return torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[self.dist.local_rank] if self.dist.device.type == "cuda" else None)

    # ---- training ---------------------------------------------------------------------------------------
    def fit(self, on_epoch_end: EpochHook | None = None) -> dict:
        """Train the remaining epochs (validate, checkpoint, stop early); returns the summary.

        `on_epoch_end(row)` runs after each epoch's checkpoint with its history row (validation metrics
        included); True stops the run there, like early stopping (a sweep's time budget uses it).
        """
        if self.uses_probe_solver:
            raise TypeError("a solved linear probe trains in SolvedProbeRecipe: build the recipe with build_recipe")
        cfg, state = self.cfg, self.state
        logger = RunLogger(self.out_dir, self.classes, enabled=self.dist.is_main)
        try:
            for epoch in range(state.epoch, cfg.train.epochs):
                self.maybe_unfreeze(epoch)
                row = self.train_epoch(epoch)
                improved = False
                if self.val_loader is not None and self.should_validate(epoch):
                    metrics = self.validate(epoch)
                    row.update(val_columns(metrics))
                    improved = self.record_best(metrics[cfg.train.best_metric], epoch)
                    logger.confusion(metrics, state.step)
                state.history.append(row)
                logger.epoch(row)
                state.epoch, state.epoch_step = epoch + 1, 0
                self.save("last.pt")
                if improved:
                    self.save("best.pt")
                if self.should_stop_early(epoch) or self.hook_says_stop(on_epoch_end, row):
                    break
        except NonFiniteLossError as err:
            log.error("%s", err)
            raise
        finally:
            logger.close(state.history)
        return self.finish()

    def maybe_unfreeze(self, epoch: int) -> None:
        """Apply the gradual-unfreezing schedule at the start of `epoch` (DDP re-wrapped on a change)."""
        if self.schedule is None or self.schedule.frozen_stages_at(epoch) == self.state.frozen_stages:
            return
        self.state.frozen_stages = self.schedule.frozen_stages_at(epoch)
        freeze_stages(self.raw_model, self.spec, self.state.frozen_stages, bn=self.cfg.freeze.bn)
        self.model = self._ddp(self.raw_model)
        log.info("epoch %d: unfreezing, %d of %d stages now frozen", epoch + 1, self.state.frozen_stages,
                 len(self.spec.stages))

    def train_epoch(self, epoch: int) -> dict:
        """One epoch (continuing mid-epoch after a resume); returns its history row."""
        cfg, state, loader = self.cfg, self.state, self.train_loader
        # the epoch reaches the (persistent) workers with every index: TrainSampler yields (index, epoch)
        loader.sampler.set_epoch(epoch, start=state.epoch_step * cfg.optim.accum_steps * loader.batch_size)
        loader.generator.manual_seed(cfg.seed * 7919 + epoch)
        epoch_start_step = state.step - state.epoch_step

        def on_step(step: int) -> None:
            state.step, state.epoch_step = step, step - epoch_start_step
            if self.probe_head is not None:
                self.probe_head.fold_into(self.raw_model.head)
            if self.ema is not None:
                self.ema.update_parameters(self.raw_model)
            every = cfg.train.checkpoint_every_steps
            if every and step % every == 0:
                self.save("last.pt")

        opts = self.step_options
        remaining = None if opts.max_steps is None else max(0, opts.max_steps - state.epoch_step)
        result = train_one_epoch(self.model, loader, self.optimizer, device=self.dist.device,
                                 opts=StepOptions(**{**opts.__dict__, "max_steps": remaining}),
                                 num_classes=len(self.classes), step=state.step, lr_at=self.lr_at,
                                 scaler=self.scaler, show_progress=self.dist.is_main,
                                 epoch_desc=f"epoch {epoch + 1}/{cfg.train.epochs}", on_step=on_step)
        state.step, state.epoch_step = result.step, 0
        self.record_failures(result)
        return {"epoch": epoch + 1, "step": state.step, "train_loss": result.loss, "train_acc": result.accuracy,
                "lr": self.optimizer.param_groups[-1]["lr"],
                "clips_per_s": result.clips_per_second * self.dist.world_size}

    def record_failures(self, result: EpochResult) -> None:
        for path, reason in result.failures:
            if path not in self.state.failures:
                log.warning("skipped undecodable video %s: %s", path, reason)
            self.state.failures[path] = reason

    def should_validate(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.train.eval_every == 0 or epoch + 1 == self.cfg.train.epochs

    def validate(self, epoch: int) -> dict:
        """Precise BN (if configured), then clip- and video-level metrics on the validation split.

        `loss` is the mean cross-entropy of the clip-level prediction (the centre clip's centre crop):
        one clip per video, as in training, but without label smoothing or mixing, so a gap between
        the two curves that keeps growing is overfitting rather than regularisation.
        The predictions reach rank 0 only; rank 0 computes the metrics and sends every rank the
        scalars that decisions depend on (best checkpoint, early stopping), so all ranks decide alike.
        With train.ema_decay the metrics are the average's; the trained weights are validated first, as a run
        without EMA validates them (their scalars as `online_<name>`: is the average paying on this data?).
        """
        if self.ema is None:
            return self.validate_weights(epoch)
        online = self.validate_weights(epoch)  # precise BN leaves its statistics in the trained weights (last.pt)
        with held_in(self.raw_model, self.ema):
            metrics = self.validate_weights(epoch)
        metrics.update({f"online_{k}": v for k, v in online.items() if k not in DETAILED_METRICS})
        return metrics

    def validate_weights(self, epoch: int) -> dict:
        """`validate` for the weights the model holds now."""
        cfg, dist = self.cfg, self.dist
        if cfg.train.precise_bn_batches and not cfg.train.linear_probe:
            self.train_loader.sampler.set_epoch(epoch)  # the epoch's first batches, also after a mid-epoch resume
            recompute_bn_stats(self.raw_model, self.train_loader, num_batches=cfg.train.precise_bn_batches,
                               device=dist.device, amp_dtype=self.amp_dtype, channels_last=self.channels_last)
            sync_bn_stats(self.raw_model)  # every rank saw its own shard: average so the ranks stay identical
        pred = predict(self.raw_model, self.val_loader, device=dist.device, num_clips=cfg.data.eval_clips,
                       num_crops=cfg.data.eval_crops, amp_dtype=self.amp_dtype,
                       channels_last=self.channels_last, show_progress=dist.is_main, desc="validate")
        for path, reason in pred.failures if pred is not None else []:
            self.state.failures[path] = reason
        return self.shared_metrics(pred)

    def shared_metrics(self, pred: Predictions | None) -> dict:
        """Rank 0's metrics of its predictions (clip- and video-level, the centre clip's loss); every other rank
        gets their scalars, which are what decisions depend on."""
        metrics = None
        if pred is not None:
            metrics = {**summarize(pred, self.classes), "loss": cross_entropy(pred.clip_probs, pred.labels)}
        scalars = broadcast_from_main({k: v for k, v in (metrics or {}).items() if k not in DETAILED_METRICS})
        return metrics if metrics is not None else scalars

    def record_best(self, value: float, epoch: int) -> bool:
        """Track the best validation value and early-stopping patience; True when `value` is a new best."""
        state = self.state
        if self.keep_last:  # validation too small to choose: best.pt is the latest epoch (see choose_best_rule)
            state.best = {"metric": self.cfg.train.best_metric, "value": value, "epoch": epoch + 1, "rule": "last"}
            return True
        if value > state.best["value"]:
            state.best = {"metric": self.cfg.train.best_metric, "value": value, "epoch": epoch + 1}
            state.patience_left = self.cfg.train.early_stop_patience
            return True
        state.patience_left -= 1
        return False

    def should_stop_early(self, epoch: int) -> bool:
        cfg, state = self.cfg, self.state
        if not cfg.train.early_stop_patience or state.patience_left > 0 or epoch + 1 >= cfg.train.epochs:
            return False
        log.info("early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                 cfg.train.best_metric, cfg.train.early_stop_patience, state.best["value"], state.best["epoch"])
        state.stopped_early = True
        return True

    def hook_says_stop(self, on_epoch_end: EpochHook | None, row: dict) -> bool:
        """Ask the caller's per-epoch hook; rank 0's answer holds on every rank (a clock differs per rank)."""
        if on_epoch_end is None:
            return False
        stop = broadcast_from_main(bool(on_epoch_end(row)))
        if stop and self.state.epoch < self.cfg.train.epochs:
            log.info("stopped after epoch %d by the caller (on_epoch_end)", self.state.epoch)
            self.state.stopped_early = True
        return stop

    def checkpoint(self) -> RunCheckpoint:
        """The run as it stands: weights, what inference needs, and the training state."""
        s = self.state
        training = TrainingState(epoch=s.epoch, epoch_step=s.epoch_step, step=s.step,
                                 optimizer=self.optimizer.state_dict(),
                                 scaler=self.scaler.state_dict() if self.scaler is not None else {},
                                 rng=rng_state(), unfreeze=self.schedule.state_dict() if self.schedule else {},
                                 best=s.best, history=s.history,
                                 online_model=self.raw_model.state_dict() if self.ema is not None else {},
                                 ema_updates=int(self.ema.n_averaged) if self.ema is not None else 0,
                                 probe_head=self.probe_head.training_state() if self.probe_head is not None else {})
        weights = self.ema.module.state_dict() if self.ema is not None else self.raw_model.state_dict()
        return RunCheckpoint(model=weights, classes=list(self.classes),
                             backbone=self.cfg.model.backbone, preprocessing=self.pre, config=self.cfg,
                             training=training, preparation=self.preparation)

    def save(self, name: str) -> None:
        """Rank 0 writes out_dir/name atomically."""
        if self.dist.is_main:
            self.checkpoint().save(self.out_dir / name)

    def finish(self) -> dict:
        """List skipped videos, write summary.json; returns the summary."""
        out, state = self.out_dir, self.state
        if state.failures and self.dist.is_main:
            (out / "skipped_videos.json").write_text(json.dumps(state.failures, indent=1))
            log.warning("%d undecodable video(s) were skipped; list in %s", len(state.failures),
                        out / "skipped_videos.json")
        summary = {"out_dir": str(out), "last": str(out / "last.pt"),
                   "best": str(out / "best.pt") if (out / "best.pt").exists() else None,
                   "best_metric": state.best, "epochs_run": len(state.history), "stopped_early": state.stopped_early,
                   "skipped_videos": len(state.failures), "history": state.history}
        if self.dist.is_main:
            (out / "summary.json").write_text(json.dumps(summary, indent=1))
        barrier()  # every rank is done with the feature cache
        if self.dist.is_main:
            shutil.rmtree(out / "feature_cache", ignore_errors=True)
        return summary
