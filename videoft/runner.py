"""The fine-tuning recipe: setup -> train -> cleanup. The one place that sees config, data, model and engine."""
from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from videoft.config import Config, dump_config, to_dict
from videoft.data.dataset import VideoClipDataset, collate, load_splits, split_summary
from videoft.data.samplers import TrainSampler
from videoft.data.transforms import build_transform
from videoft.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from videoft.engine.distributed import (DistInfo, all_gather_objects, barrier, cleanup_distributed,
                                        setup_distributed, sync_bn_stats)
from videoft.engine.features import FeatureDataset, extract_features
from videoft.engine.evaluate import ShardSampler, predict, summarize
from videoft.engine.logger import RunLogger
from videoft.engine.train import (NonFiniteLossError, StepOptions, lr_factor_at, recompute_bn_stats,
                                 train_one_epoch)
from videoft.models.backbones import BackboneSpec, get_backbone_spec
from videoft.models.classifier import VideoClassifier, build_classifier
from videoft.models.freezing import UnfreezeSchedule, freeze_stages, param_groups, set_trainable_stages

log = logging.getLogger("videoft")

# what must match for a resume (a change here means a different run, not a continuation)
RESUME_KEYS = ("model.backbone", "data.clip_len", "data.frame_stride", "data.crop_size")


@dataclass(frozen=True)
class Geometry:
    """How clips are cut and preprocessed; stored in every checkpoint for inference."""

    clip_len: int
    frame_stride: int
    crop_size: int
    short_side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict:
        return {"clip_len": self.clip_len, "frame_stride": self.frame_stride, "crop_size": self.crop_size,
                "short_side": self.short_side, "mean": list(self.mean), "std": list(self.std)}


def resolve_geometry(cfg: Config, spec: BackboneSpec) -> Geometry:
    """The backbone's defaults, overridden key by key by the config's data section."""
    d = cfg.data
    crop = d.crop_size or spec.crop_size
    # keep the backbone's short-side/crop ratio when only the crop is changed
    short = d.short_side or (spec.short_side if not d.crop_size else int(round(crop * spec.short_side / spec.crop_size)))
    return Geometry(d.clip_len or spec.clip_len, d.frame_stride or spec.frame_stride, crop, short,
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


def amp_dtype_for(mode: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def build_loaders(cfg: Config, geom: Geometry, splits: dict, dist: DistInfo):
    """Train loader (epoch-seeded sampler, sharded) and eval loaders (sharded, unpadded)."""
    d = cfg.data
    train_tf = build_transform(True, crop_size=geom.crop_size, short_side=geom.short_side, mean=geom.mean,
                               std=geom.std, hflip=d.hflip, scale_jitter=d.scale_jitter)
    eval_tf = build_transform(False, crop_size=geom.crop_size, short_side=geom.short_side, mean=geom.mean,
                              std=geom.std, num_crops=d.eval_crops)
    common = {"clip_len": geom.clip_len, "stride": geom.frame_stride, "short_side": geom.short_side,
              "backend": d.decoder, "seed": cfg.seed}
    if cfg.train.linear_probe:  # deterministic views: the frozen backbone's output never changes
        train_ds = VideoClipDataset(splits["train"], train=False, transform=eval_tf, num_clips=d.eval_clips,
                                    **common)
    else:
        train_ds = VideoClipDataset(splits["train"], train=True, transform=train_tf, **common)
    sampler = TrainSampler([s.label for s in splits["train"]], seed=cfg.seed, balanced=d.balanced_sampler,
                           rank=dist.rank, world_size=dist.world_size)
    per_rank_batch = d.batch_size // dist.world_size
    if per_rank_batch * dist.world_size != d.batch_size:
        raise ValueError(f"data.batch_size {d.batch_size} (the global batch) must be divisible by the "
                         f"number of processes {dist.world_size}")
    loader_kw = {"num_workers": d.num_workers, "collate_fn": collate, "pin_memory": dist.device.type == "cuda",
                 "multiprocessing_context": "spawn" if d.num_workers and dist.device.type == "cuda" else None}
    # the loader's own generator (seeded per epoch in run()) keeps it off the global torch RNG
    train_loader = DataLoader(train_ds, batch_size=per_rank_batch, sampler=sampler,
                              generator=torch.Generator(), **loader_kw)
    eval_loaders = {}
    for split in ("val", "test"):
        if splits.get(split):
            ds = VideoClipDataset(splits[split], train=False, transform=eval_tf, num_clips=d.eval_clips, **common)
            eval_loaders[split] = DataLoader(ds, batch_size=max(1, per_rank_batch // 2),
                                             sampler=ShardSampler(len(ds), dist.rank, dist.world_size),
                                             generator=torch.Generator(), **loader_kw)
    return train_loader, eval_loaders


def checkpoint_state(*, model: VideoClassifier, optimizer, scaler, cfg: Config, classes: list[str],
                     geom: Geometry, epoch: int, step: int, epoch_step: int, schedule: UnfreezeSchedule | None,
                     best: dict, history: list) -> dict:
    """Everything to resume the run, and everything inference needs, in plain containers."""
    return {
        "format": "videoft/1",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": epoch,            # epochs completed (when epoch_step == 0), else the epoch in progress
        "epoch_step": epoch_step,  # optimizer steps already done inside `epoch`
        "step": step,
        "rng": rng_state(),
        "unfreeze": schedule.state_dict() if schedule is not None else {},
        "best": best,
        "history": history,
        "config": to_dict(cfg),
        "classes": list(classes),
        "backbone": cfg.model.backbone,
        "preprocessing": geom.as_dict(),
        "num_classes": len(classes),
    }


def cache_train_features(model: VideoClassifier, loader: DataLoader, dist: DistInfo,
                         amp_dtype: torch.dtype | None) -> tuple[DataLoader, list]:
    """Run the frozen backbone once over the training views (sharded), share them, and return a
    loader of cached features with the same sampler and batch size, plus the decode failures."""
    ds = loader.dataset
    shard = DataLoader(ds, batch_size=loader.batch_size, collate_fn=collate, num_workers=loader.num_workers,
                       sampler=ShardSampler(len(ds), dist.rank, dist.world_size), generator=torch.Generator())
    t0 = time.perf_counter()
    feats, failures = extract_features(model.backbone, shard, device=dist.device, amp_dtype=amp_dtype,
                                       show_progress=dist.is_main)
    merged: dict = {}
    all_failures: list = []
    for part, fails in all_gather_objects((feats, failures)):
        merged.update(part)
        all_failures += fails
    log.info("linear probe: cached features of %d training videos (%d views each) in %.1f s",
             len(merged), ds.num_clips * getattr(ds.transform, "num_crops", 1), time.perf_counter() - t0)
    cached = FeatureDataset(merged,
                            [s.label for s in ds.samples])
    return DataLoader(cached, batch_size=loader.batch_size, sampler=loader.sampler, collate_fn=collate,
                      generator=loader.generator), all_failures


def check_resume_compatible(state: dict, cfg: Config, classes: list[str], path: Path) -> None:
    """Refuse to resume a checkpoint whose classes or model differ from this config."""
    problems = []
    if state.get("classes") != list(classes):
        problems.append(f"classes differ: checkpoint {state.get('classes')} vs data {list(classes)}")
    old = state.get("config", {})
    for key in RESUME_KEYS:
        section, name = key.split(".")
        before, now = old.get(section, {}).get(name), to_dict(cfg)[section][name]
        if before != now:
            problems.append(f"{key}: checkpoint has {before!r}, config has {now!r}")
    if problems:
        raise ValueError(f"cannot resume from {path}: " + "; ".join(problems)
                         + ". Start a new run (another out_dir), or use model.init_from to fine-tune from it.")


def init_from_checkpoint(model: VideoClassifier, path: str, classes: list[str]) -> None:
    """Start from another videoft run's weights; keep its head only if the classes are the same."""
    state = load_checkpoint(path)
    weights = state["model"]
    if state.get("classes") != list(classes):
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
        log.info("init_from %s: backbone weights loaded, head re-made for %d classes", path, len(classes))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    bad = [k for k in missing if not k.startswith("head.")] + list(unexpected)
    if bad:
        raise ValueError(f"init_from {path}: weights do not match backbone {state.get('backbone')}: {bad[:8]}")


def run(cfg: Config) -> dict:
    """Train and validate as configured; returns the final summary (best metric, paths)."""
    dist = setup_distributed()
    out_dir = Path(cfg.out_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    setup_logging(dist, out_dir)
    try:
        return _run(cfg, dist, out_dir)
    finally:
        cleanup_distributed()


def _run(cfg: Config, dist: DistInfo, out_dir: Path) -> dict:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    spec = get_backbone_spec(cfg.model.backbone)
    geom = resolve_geometry(cfg, spec)
    splits, classes = load_splits(cfg.data.root, val_fraction=cfg.data.val_fraction,
                                  test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed)
    if not splits.get("train"):
        raise ValueError(f"data.root {cfg.data.root}: no training videos found")
    log.info("data %s: %d classes\n%s", cfg.data.root, len(classes), split_summary(splits, classes))
    log.info("backbone %s, clip %d frames x stride %d, crop %d (short side %d), %d process(es) on %s",
             spec.name, geom.clip_len, geom.frame_stride, geom.crop_size, geom.short_side,
             dist.world_size, dist.device)
    if dist.is_main:
        dump_config(cfg, out_dir / "config.yaml")
        (out_dir / "classes.txt").write_text("\n".join(classes) + "\n")
        (out_dir / "splits.json").write_text(json.dumps(
            {k: [s.path for s in v] for k, v in splits.items()}, indent=1))

    model = build_classifier(spec.name, len(classes), clip_len=geom.clip_len, crop_size=geom.crop_size,
                             pretrained=cfg.model.pretrained, weights=cfg.model.weights,
                             on_missing_weights=cfg.model.on_missing_weights, dropout=cfg.model.dropout,
                             model_dir=cfg.model.model_dir)
    if cfg.model.init_from:
        init_from_checkpoint(model, cfg.model.init_from, classes)
    num_stages = len(spec.stages)
    frozen = num_stages if cfg.freeze.stages < 0 or cfg.train.linear_probe else min(cfg.freeze.stages, num_stages)
    u = cfg.freeze.unfreeze
    schedule = UnfreezeSchedule(head_only_epochs=u.head_only_epochs, every=u.every, num_stages=num_stages,
                                min_frozen=max(u.min_frozen, frozen)) if u.every > 0 else None
    if schedule is not None:
        frozen = schedule.frozen_stages_at(0)
    freeze_stages(model, spec, frozen, bn=cfg.freeze.bn)
    model.to(dist.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    o = cfg.optim
    groups = param_groups(model, spec, head_lr=o.lr, backbone_lr=o.backbone_lr if o.backbone_lr is not None else o.lr,
                          layer_decay=o.layer_decay, weight_decay=o.weight_decay)
    if o.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    else:
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)
    amp_dtype = amp_dtype_for(cfg.train.amp, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type) if amp_dtype == torch.float16 else None

    train_loader, eval_loaders = build_loaders(cfg, geom, splits, dist)
    probe_failures: list = []
    if cfg.train.linear_probe and cfg.train.cache_features:
        train_loader, probe_failures = cache_train_features(model, train_loader, dist, amp_dtype)
    steps_per_epoch = math.ceil(len(train_loader) / o.accum_steps)
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup = int(round(o.warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        return lr_factor_at(step, total_steps=total_steps, warmup_steps=warmup, min_ratio=o.min_lr_ratio)

    class_weights = None
    if o.class_weighted_loss:
        counts = torch.bincount(torch.tensor([s.label for s in splits["train"]]), minlength=len(classes)).float()
        class_weights = (counts.sum() / (len(classes) * counts.clamp(min=1))).to(dist.device)
    opts = StepOptions(accum_steps=o.accum_steps, grad_clip=o.grad_clip, amp_dtype=amp_dtype,
                       label_smoothing=o.label_smoothing, class_weights=class_weights, mixup_alpha=o.mixup_alpha,
                       cutmix_alpha=o.cutmix_alpha, channels_last=cfg.train.channels_last,
                       max_steps=cfg.train.max_steps_per_epoch, multi_view=cfg.train.linear_probe)

    # ---- resume -------------------------------------------------------------------------------
    start_epoch, step, epoch_step = 0, 0, 0
    best = {"metric": cfg.train.best_metric, "value": -math.inf, "epoch": -1}
    history: list[dict] = []
    resume_path = out_dir / "last.pt" if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if resume_path is not None and resume_path.is_file():
        state = load_checkpoint(resume_path)
        check_resume_compatible(state, cfg, classes, resume_path)
        if schedule is not None and state.get("unfreeze"):
            schedule.load_state_dict(state["unfreeze"])
            frozen = schedule.frozen_stages_at(state["epoch"])
            set_trainable_stages(model, spec, frozen, bn=cfg.freeze.bn)
        model.load_state_dict(state["model"])
        configured = [(g["base_lr"], g["weight_decay"]) for g in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        # the config is the source of truth for LRs and weight decay (load_state_dict restores the old ones)
        for group, (base_lr, wd) in zip(optimizer.param_groups, configured):
            group["base_lr"], group["weight_decay"] = base_lr, wd
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step, epoch_step = state["epoch"], state["step"], state["epoch_step"]
        best, history = state["best"], state["history"]
        set_rng_state(state["rng"])
        log.info("resumed from %s: epoch %d (+%d steps), global step %d", resume_path, start_epoch,
                 epoch_step, step)
    elif cfg.resume not in (None, "auto"):
        raise FileNotFoundError(f"resume: {cfg.resume} does not exist")

    if dist.distributed and cfg.train.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same Parameter objects
    raw_model = model  # unwrapped once: used for saving, evaluating and (un)freezing

    def wrap(m: torch.nn.Module) -> torch.nn.Module:
        """DDP registers the parameters that require grad when it wraps: re-wrap after unfreezing."""
        if not dist.distributed:
            return m
        return torch.nn.parallel.DistributedDataParallel(
            m, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)

    # linear probe on cached features: the loader yields backbone features, so only the head trains
    trained = raw_model.head if cfg.train.linear_probe and cfg.train.cache_features else raw_model
    model = wrap(trained)
    frozen_now = frozen

    logger = RunLogger(out_dir, classes, enabled=dist.is_main)
    all_failures: dict[str, str] = dict(probe_failures)
    patience_left = cfg.train.early_stop_patience
    stopped_early = False

    def save(name: str, epoch: int, epoch_step_: int, step_: int) -> None:
        if dist.is_main:
            save_checkpoint(checkpoint_state(model=raw_model, optimizer=optimizer, scaler=scaler, cfg=cfg,
                                             classes=classes, geom=geom, epoch=epoch, step=step_,
                                             epoch_step=epoch_step_, schedule=schedule, best=best,
                                             history=history), out_dir / name)

    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            if schedule is not None and schedule.frozen_stages_at(epoch) != frozen_now:
                frozen_now = schedule.frozen_stages_at(epoch)
                set_trainable_stages(raw_model, spec, frozen_now, bn=cfg.freeze.bn)
                model = wrap(raw_model)
                log.info("epoch %d: unfreezing, %d of %d stages now frozen", epoch + 1, frozen_now, num_stages)
            train_loader.sampler.set_epoch(epoch, start=epoch_step * o.accum_steps * train_loader.batch_size)
            train_loader.dataset.set_epoch(epoch)
            train_loader.generator.manual_seed(cfg.seed * 7919 + epoch)
            epoch_start_step = step - epoch_step

            def on_step(s: int, _epoch=epoch, _start=epoch_start_step) -> None:
                every = cfg.train.checkpoint_every_steps
                if every and s % every == 0:
                    save("last.pt", _epoch, s - _start, s)

            remaining = None if opts.max_steps is None else max(0, opts.max_steps - epoch_step)
            result = train_one_epoch(model, train_loader, optimizer, device=dist.device,
                                     opts=StepOptions(**{**opts.__dict__, "max_steps": remaining}),
                                     num_classes=len(classes), step=step, lr_at=lr_at, scaler=scaler,
                                     show_progress=dist.is_main, epoch_desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                                     on_step=on_step)
            step, epoch_step = result.step, 0
            for path, reason in result.failures:
                if path not in all_failures:
                    log.warning("skipped undecodable video %s: %s", path, reason)
                all_failures[path] = reason
            row = {"epoch": epoch + 1, "step": step, "train_loss": result.loss, "train_acc": result.accuracy,
                   "lr": optimizer.param_groups[-1]["lr"], "clips_per_s": result.clips_per_second * dist.world_size}
            improved = False
            if "val" in eval_loaders and ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs):
                if cfg.train.precise_bn_batches and not cfg.train.linear_probe:
                    train_loader.sampler.set_epoch(epoch)  # the epoch's first batches, also after a mid-epoch resume
                    # every rank sees its own shard: average so the ranks keep identical statistics
                    recompute_bn_stats(raw_model, train_loader, num_batches=cfg.train.precise_bn_batches,
                                       device=dist.device, amp_dtype=amp_dtype, channels_last=cfg.train.channels_last)
                    sync_bn_stats(raw_model)
                pred = predict(raw_model, eval_loaders["val"],
                               device=dist.device, num_clips=cfg.data.eval_clips, num_crops=cfg.data.eval_crops,
                               amp_dtype=amp_dtype, channels_last=cfg.train.channels_last,
                               show_progress=dist.is_main, desc="validate")
                metrics = summarize(pred, classes)
                for path, reason in pred.failures:
                    all_failures[path] = reason
                row.update({f"val_{k}": metrics[k] for k in ("top1", "mean_class_accuracy", "video_top1",
                                                             "video_mean_class_accuracy")})
                value = metrics[cfg.train.best_metric]
                improved = value > best["value"]
                if improved:
                    best = {"metric": cfg.train.best_metric, "value": value, "epoch": epoch + 1}
                    patience_left = cfg.train.early_stop_patience
                else:
                    patience_left -= 1
                logger.confusion(metrics, step)
            history.append(row)
            logger.epoch(row)
            save("last.pt", epoch + 1, 0, step)
            if improved:
                save("best.pt", epoch + 1, 0, step)
            if cfg.train.early_stop_patience and patience_left <= 0 and epoch + 1 < cfg.train.epochs:
                log.info("early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                         cfg.train.best_metric, cfg.train.early_stop_patience, best["value"], best["epoch"])
                stopped_early = True
                break
    except NonFiniteLossError as err:
        log.error("%s", err)
        raise
    finally:
        logger.close(history)
    if all_failures and dist.is_main:
        (out_dir / "skipped_videos.json").write_text(json.dumps(all_failures, indent=1))
        log.warning("%d undecodable video(s) were skipped; list in %s", len(all_failures),
                    out_dir / "skipped_videos.json")
    summary = {"out_dir": str(out_dir), "last": str(out_dir / "last.pt"),
               "best": str(out_dir / "best.pt") if (out_dir / "best.pt").exists() else None,
               "best_metric": best, "epochs_run": len(history), "stopped_early": stopped_early,
               "skipped_videos": len(all_failures), "history": history}
    if dist.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    barrier()
    return summary
