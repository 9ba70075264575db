"""Value checks of the config that need no other component: numeric ranges and the files it names.

`videoft.config.validate` runs them with the choice and cross-field checks, so every problem is
listed at once. A new numeric key gets its allowed range here, in `_RANGES`.
"""
from __future__ import annotations

from pathlib import Path

# (key, lowest, highest, brackets): highest None = unbounded; "(" / ")" exclude the bound, "[" / "]" include it
_RANGES = (
    ("data.batch_size", 1, None, "[]"), ("data.eval_clips", 1, None, "[]"), ("data.num_workers", 0, None, "[]"),
    ("data.val_fraction", 0, 1, "[)"), ("data.test_fraction", 0, 1, "[)"), ("data.decode_timeout", 0, None, "()"),
    ("data.clip_len", 1, None, "[]"), ("data.frame_stride", 1, None, "[]"), ("data.crop_size", 1, None, "[]"),
    ("data.short_side", 1, None, "[]"), ("data.prefetch_factor", 1, None, "[]"),
    ("data.worker_nice", 0, 19, "[]"), ("data.train_clips", 1, None, "[]"),
    ("model.dropout", 0, 1, "[)"), ("model.drop_path", 0, 1, "[)"),
    ("freeze.stages", -1, None, "[]"),
    ("optim.lr", 0, None, "()"), ("optim.backbone_lr", 0, None, "[]"), ("optim.layer_decay", 0, 1, "(]"),
    ("optim.weight_decay", 0, None, "[]"), ("optim.momentum", 0, 1, "[)"), ("optim.warmup_epochs", 0, None, "[]"),
    ("optim.min_lr_ratio", 0, 1, "[]"), ("optim.label_smoothing", 0, 1, "[)"), ("optim.grad_clip", 0, None, "()"),
    ("optim.accum_steps", 1, None, "[]"), ("optim.mixup_alpha", 0, None, "[]"), ("optim.cutmix_alpha", 0, None, "[]"),
    ("train.epochs", 1, None, "[]"), ("train.eval_every", 1, None, "[]"), ("train.early_stop_patience", 0, None, "[]"),
    ("train.checkpoint_every_steps", 0, None, "[]"), ("train.max_steps_per_epoch", 1, None, "[]"),
    ("train.precise_bn_batches", 0, None, "[]"), ("train.threads", 1, None, "[]"),
    ("train.feature_cache_ram_mb", 0, None, "[]"), ("train.min_val_videos", 0, None, "[]"),
    ("train.ema_decay", 0, 1, "[)"),
)


def range_problems(flat: dict) -> list[str]:
    """Every numeric key outside its range (null is allowed where the type allows it)."""
    problems = []
    for key, lo, hi, brackets in _RANGES:
        node = flat
        for part in key.split("."):
            node = node[part]
        if node is None:
            continue
        ok_lo = node > lo if brackets[0] == "(" else node >= lo
        ok_hi = hi is None or (node < hi if brackets[1] == ")" else node <= hi)
        if not (ok_lo and ok_hi):
            problems.append(f"{key}: {node} is out of range (allowed: {_allowed(lo, hi, brackets)})")
    u = flat["freeze"]["unfreeze"]
    problems += [f"freeze.unfreeze.{k}: {v} must be >= 0" for k, v in u.items() if v < 0]
    lo, hi = flat["data"]["scale_jitter"]
    if not 0 < lo <= hi:
        problems.append(f"data.scale_jitter: needs 0 < low <= high, got {[lo, hi]}")
    if not all(0 <= b < 1 for b in flat["optim"]["betas"]):
        problems.append(f"optim.betas: {flat['optim']['betas']} must both be in [0, 1)")
    return problems


def _allowed(lo: float, hi: float | None, brackets: str) -> str:
    if hi is None:
        return f"> {lo}" if brackets[0] == "(" else f">= {lo}"
    return f"{brackets[0]}{lo}, {hi}{brackets[1]}"


def path_problems(resume: str | None, init_from: str | None, weights: str | None) -> list[str]:
    """Files the config names that do not exist (URLs are checked when they are fetched)."""
    problems = []
    if resume not in (None, "auto") and not Path(resume).exists():
        problems.append(f"resume: {resume} does not exist (use 'auto' or a checkpoint path)")
    if init_from and not Path(init_from).is_file():
        problems.append(f"model.init_from: {init_from} does not exist (give a videoft best.pt/last.pt)")
    if weights and "://" not in weights and not Path(weights).expanduser().is_file():
        problems.append(f"model.weights: {weights} does not exist (a local file, or an http(s):// or file:// URL)")
    return problems
