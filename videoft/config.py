"""Typed run configuration: YAML file + `key=value` overrides, every error reported at once."""
from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from videoft.choices import (
    AMP_MODES,
    AUTO_STAGE,
    BEST_CHECKPOINTS,
    BEST_METRICS,
    BN_MODES,
    DECODERS,
    EVAL_CROPS,
    INPUT_FRAMES,
    LAYOUTS,
    ON_MISSING_WEIGHTS,
    OPTIMIZERS,
    PROBE_SOLVERS,
    weights_source_problem,
)
from videoft.config_checks import path_problems, range_problems
from videoft.errors import ConfigError  # noqa: F401  (re-exported: `from videoft.config import ConfigError`)

log = logging.getLogger("videoft")


@dataclass
class DataConfig:
    root: str = ""                  # class folder, split folders, or a list file
    val_fraction: float = 0.2       # held out from train when no val split is given
    test_fraction: float = 0.0
    split_seed: int = 0
    clip_len: int | None = None     # None: the backbone's default
    frame_stride: int | None = None
    crop_size: int | None = None
    short_side: int | None = None   # resize-on-decode short side; None: the backbone's default
    hflip: bool = True
    scale_jitter: tuple[float, float] = (1.0, 1.25)  # training short side: short_side times a factor in this range
    batch_size: int = 8
    num_workers: int = 2
    prefetch_factor: int = 2        # batches each worker loads ahead
    worker_nice: int | None = None  # workers' nice level (0-19); null: 19 when training on the CPU, 0 on CUDA
    persistent_workers: bool = True  # workers start once per run, not once per epoch (see data/loaders.py)
    eval_clips: int = 3             # temporal clips per video at validation (video-level accuracy)
    train_clips: int = 1            # random clips per training video and step, decoded in one pass, each with its
                                    # own augmentation (PySlowFast AUG.NUM_SAMPLE): a step sees batch_size x this
    eval_crops: int = 1             # 1 (centre) or 3 spatial crops
    decoder: str = "auto"           # auto | decord | pyav
    balanced_sampler: bool = False  # draw classes uniformly (for imbalanced data)
    decode_timeout: float | None = 60.0  # seconds a video may take to open or decode before it is abandoned
                                    # (decoded in a child process that is killed then); null: no limit, in-process
    audit: bool = False             # probe every video first (tools/audit.py, cached) and leave out unreadable ones


@dataclass
class ModelConfig:
    backbone: str = "x3d_xs"
    pretrained: str | None = None   # "kinetics400" downloads the official weights
    weights: str | None = None      # a local file or URL with the backbone's weights
    on_missing_weights: str = "error"  # error | random (loud warning, random init)
    dropout: float = 0.5
    init_from: str | None = None    # start from another videoft checkpoint (head re-made if classes differ)
    model_dir: str | None = None    # where downloaded weights are cached (torch hub cache by default)
    drop_path: float | None = None  # stochastic depth rate (mvit_v2_s, mvit_base_16x4); None: the library default
    input: str = "rgb"              # rgb | residual: the backbone sees each frame minus the one before (motion
                                    # only; README "Recipes for small data" measures it from scratch)
    feature_stage: str | None = None  # the head reads this backbone stage's pooled output (later stages dropped);
                                      # None: the last; auto (solved linear probe): the stage with the lowest
                                      # held-out log loss. Earlier features can transfer better from a narrow
                                      # pretraining (README "Transfer")


@dataclass
class UnfreezeConfig:
    head_only_epochs: int = 0       # train only the head (and unfrozen stages) for this many epochs
    every: int = 0                  # then unfreeze one more stage, top-down, every N epochs (0: off)
    min_frozen: int = 0             # never unfreeze below this many stages


@dataclass
class FreezeConfig:
    stages: int = 0                 # freeze the first N stages (stem = 1); -1: whole backbone (linear probe);
                                    # with `unfreeze`, the floor gradual unfreezing stops at
    bn: str = "frozen"              # frozen (BN of frozen parts in eval mode) | all | train
    unfreeze: UnfreezeConfig = field(default_factory=UnfreezeConfig)


@dataclass
class OptimConfig:
    name: str = "sgd"               # sgd | adamw
    lr: float = 0.01                # head learning rate (per global batch as configured)
    backbone_lr: float | None = None  # None: same as lr
    layer_decay: float = 1.0        # each earlier stage's LR is multiplied by this
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0       # cosine decays to lr * min_lr_ratio
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    accum_steps: int = 1
    class_weighted_loss: bool = False
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 10
    amp: str = "auto"               # auto (bf16 on CUDA unless its gradient is off fp32's; on CPU the faster of
                                    # fp32/bf16, timed) | bf16 | fp16 | off
    channels_last: str = "auto"     # channels_last_3d: auto (timed on CPU and CUDA, see engine.autotune) | on | off
    sync_bn: bool = False
    eval_every: int = 1
    best_metric: str = "mean_class_accuracy"  # or top1, video_top1, video_mean_class_accuracy
    early_stop_patience: int = 0    # epochs without improvement before stopping (0: off)
    checkpoint_every_steps: int = 0  # also write last.pt every N optimizer steps (0: per epoch only)
    max_steps_per_epoch: int | None = None
    deterministic: bool = False
    precise_bn_batches: int = 0     # before each validation, recompute BatchNorm statistics over N train batches
    linear_probe: bool = False      # whole backbone frozen, trained on the eval views (eval_clips x eval_crops)
    cache_features: bool = True     # linear_probe: run the backbone once and train the head on cached features
    probe_solver: str = "lbfgs"     # linear_probe on cached features: lbfgs (standardised features, the head
                                    # solved to convergence, L2 chosen from a grid; train.epochs unused) | sgd
                                    # (the head trained by steps on standardised features for train.epochs)
    best_checkpoint: str = "auto"   # best.pt: best (best validated epoch) | last | auto (last when validation
                                    # has fewer than min_val_videos videos and early stopping is off)
    min_val_videos: int = 30        # below this, validation is too small to choose an epoch or an L2 strength
    feature_cache_ram_mb: float = 1024  # cached features above this size are memory-mapped from
                                    # out_dir/feature_cache instead of loaded in each process's RAM
    threads: int | None = None      # torch CPU threads (None: torch's default)
    ema_decay: float = 0.0          # > 0: validate, checkpoint and export an exponential moving average of the
                                    # weights (updated every optimizer step; decay warmed up as timm does)


@dataclass
class Config:
    out_dir: str = "runs/default"
    seed: int = 0
    resume: str | None = None       # "auto" (out_dir/last.pt if present) or a checkpoint path
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# the choice-valued keys; the lists live in videoft.choices, beside the components that use them
CHOICES = {
    "data.decoder": DECODERS,
    "data.eval_crops": EVAL_CROPS,
    "model.on_missing_weights": ON_MISSING_WEIGHTS,
    "model.input": INPUT_FRAMES,
    "freeze.bn": BN_MODES,
    "optim.name": OPTIMIZERS,
    "train.amp": AMP_MODES,
    "train.channels_last": LAYOUTS,
    "train.best_metric": BEST_METRICS,
    "train.best_checkpoint": BEST_CHECKPOINTS,
    "train.probe_solver": PROBE_SOLVERS,
}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file, apply `a.b=value` overrides (values parsed as YAML), validate."""
    raw: dict = {}
    problems: list[str] = []
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError([f"cannot read {path}: {exc}"]) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"{path}: the top level must be a mapping"])
    typed = _apply_overrides(raw, overrides, problems)
    _command_line_wins(raw, typed, path)
    cfg = _build(Config, raw, "", problems)
    problems += validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], problems: list[str]) -> list[str]:
    """Set each `a.b=value` in `raw`; returns the keys set, in the order typed."""
    typed = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r} is not key=value")
            continue
        node = raw
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: {p} is not a section")
                break
        else:
            node[leaf] = yaml.safe_load(value) if value.strip() else None
            typed.append(key.strip())
    return typed


# model.<key>s of which only one may be set; one typed on the command line replaces the other from the file
EXCLUSIVE_MODEL_KEYS = ("pretrained", "weights")


def _command_line_wins(raw: dict, typed: list[str], path: str | Path | None) -> None:
    """`model.weights=F` typed over a file that says `pretrained: kinetics400` (or the reverse) replaces
    it, with a notice: the user should not have to know to also type `model.pretrained=null`. The
    same pair set in one place (both in the file, or both typed) stays an error (validate says so)."""
    section = raw.get("model")
    if not isinstance(section, dict):
        return
    given = [n for n in EXCLUSIVE_MODEL_KEYS if section.get(n) is not None]
    on_line = [n for n in given if f"model.{n}" in typed]
    if len(given) == 2 and len(on_line) == 1:
        kept, dropped = on_line[0], next(n for n in given if n != on_line[0])
        log.warning("model.%s=%s (command line) replaces model.%s=%s from %s", kept, section[kept], dropped,
                    section[dropped], path or "the defaults")
        section[dropped] = None


def validate(cfg: Config) -> list[str]:
    """Cross-field checks: returns the list of problems (empty when valid)."""
    problems = []
    flat = to_dict(cfg)
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        if flat[section][name] not in allowed:
            problems.append(f"{key}: {flat[section][name]!r} is not one of {list(allowed)}")
    if not cfg.data.root:
        problems.append("data.root: required (a class folder, split folders or a list file)")
    problems += range_problems(flat)
    d = cfg.data
    if d.crop_size is not None and d.short_side is not None and d.crop_size > d.short_side * d.scale_jitter[0]:
        problems.append(f"data.crop_size {d.crop_size} is larger than the frames it is cut from (data.short_side "
                        f"{d.short_side} x data.scale_jitter low {d.scale_jitter[0]}): lower the crop or raise "
                        "the short side")
    if cfg.train.linear_probe and cfg.train.probe_solver == "lbfgs" and not cfg.train.cache_features:
        problems.append("train.probe_solver=lbfgs solves the head on cached features: needs train.cache_features="
                        "true (or train.probe_solver=sgd)")
    t = cfg.train
    if t.ema_decay and t.linear_probe and t.cache_features and t.probe_solver == "lbfgs":
        problems.append("train.ema_decay averages the weights of gradient steps: the lbfgs probe solves the head "
                        "exactly (set train.ema_decay=0, or train.probe_solver=sgd)")
    solved_probe = t.linear_probe and t.cache_features and t.probe_solver == "lbfgs"
    if cfg.model.feature_stage == AUTO_STAGE and not solved_probe:
        problems.append("model.feature_stage=auto chooses the stage with the solved linear probe: needs "
                        "train.linear_probe=true (with train.cache_features=true, train.probe_solver=lbfgs); "
                        "otherwise name a stage")
    if cfg.model.input == "residual" and cfg.data.clip_len is not None and cfg.data.clip_len < 2:
        problems.append(f"model.input=residual feeds the differences of consecutive frames: needs data.clip_len >= 2, "
                        f"got {cfg.data.clip_len}")
    if cfg.train.linear_probe and cfg.data.train_clips > 1:
        problems.append("data.train_clips: the linear probe trains on the evaluation views (data.eval_clips x "
                        "data.eval_crops); set data.train_clips=1")
    if cfg.train.linear_probe and cfg.freeze.unfreeze.every:
        problems.append("train.linear_probe keeps the whole backbone frozen: freeze.unfreeze.every must be 0")
    weights_problem = weights_source_problem(cfg.model.pretrained, cfg.model.weights)
    if weights_problem:
        problems.append(weights_problem)
    problems += path_problems(cfg.resume, cfg.model.init_from, cfg.model.weights)
    return problems


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (YAML/JSON/checkpoint friendly)."""
    out = dataclasses.asdict(cfg)
    return _plain(out)


def from_dict(raw: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. stored in a checkpoint)."""
    problems: list[str] = []
    cfg = _build(Config, raw, "", problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Instantiate dataclass `cls` from a dict, collecting unknown keys and type errors."""
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key (allowed: {', '.join(fields)})")
            continue
        hint = hints[key]
        if isinstance(value, bool) and "off" in CHOICES.get(f"{prefix}{key}", ()):
            value = "on" if value else "off"  # YAML 1.1 reads on/off/true/false as booleans
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.", problems)
        else:
            ok, converted = _coerce(value, hint)
            if ok:
                kwargs[key] = converted
            else:
                problems.append(f"{prefix}{key}: {value!r} is not a valid {_type_name(hint)}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, None
    if hint is type(None):
        return value is None, None
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            conv = [_coerce(v, a) for v, a in zip(value, args)]
            if all(ok for ok, _ in conv):
                return True, tuple(v for _, v in conv)
        return False, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return (True, float(value)) if isinstance(value, str) else (False, None)
        except ValueError:
            return False, None
    if hint is str:
        return isinstance(value, str), value
    return True, value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
