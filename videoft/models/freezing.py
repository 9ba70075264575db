"""Freeze backbone stages (frozen BatchNorm included), unfreeze them gradually, and build per-stage LR groups.

Stage counting: `frozen_stages = N` freezes the first N entries of `spec.stages`, the stem
(stages[0]) counting as one: 0 freezes nothing, 1 the stem, k the stem and the next k-1 stages,
and len(spec.stages) (also written -1 or "all") the whole backbone, i.e. a linear probe. This
differs from mmaction2's `frozen_stages`, where -1 freezes nothing and 0 freezes the stem only.
The new head ("head") is always trainable.
"""
from __future__ import annotations

import logging
import numbers
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from videoft.choices import BN_MODES

if TYPE_CHECKING:
    from videoft.models.backbones import BackboneSpec
    from videoft.models.classifier import VideoClassifier

log = logging.getLogger(__name__)

# Never weight-decayed besides biases and norm weights (ndim <= 1): positional embeddings, class
# tokens and relative-position tables (MViT, Swin), as in timm's no_weight_decay lists.
NO_DECAY_NAME_PARTS = ("pos_embed", "cls_token", "class_token", "rel_pos", "relative_position_bias_table")


def resolve_frozen(spec: BackboneSpec, frozen_stages: int | str) -> int:
    """Number of frozen stages as an int in [0, len(spec.stages)] (-1 and "all" mean every stage)."""
    total = len(spec.stages)
    if frozen_stages in (-1, "all"):
        return total
    if (isinstance(frozen_stages, bool) or not isinstance(frozen_stages, numbers.Integral)
            or not 0 <= frozen_stages <= total):
        raise ValueError(f"frozen stages={frozen_stages!r} for {spec.name}; allowed: 0..{total}, -1 or 'all' "
                         f"(stages: {', '.join(spec.stages)})")
    return int(frozen_stages)


def freeze_stages(model: VideoClassifier, spec: BackboneSpec, frozen_stages: int | str,
                  bn: str = "frozen") -> list[str]:
    """Make exactly the first `frozen_stages` stages frozen (requires_grad=False), every other stage and
    the head trainable; returns the trainable stage names ("backbone.<stage>", ..., "head").

    bn: "frozen" keeps the BatchNorm of frozen stages in eval mode (running stats fixed), "all" keeps
    every backbone BatchNorm in eval mode (mmaction2 norm_eval), "train" leaves BatchNorm alone (the
    running stats of frozen stages then still move). The eval mode survives `model.train()`.
    Called again with another count it re-applies everything (gradual unfreezing). Under DDP,
    re-wrap the model after a change: DDP only all-reduces the parameters that required grad when
    it was constructed, so newly unfrozen ones would silently diverge across ranks.
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn={bn!r}; allowed: {BN_MODES}")
    n = resolve_frozen(spec, frozen_stages)
    frozen = set(spec.stages[:n])
    for stage in spec.stages:
        for p in model.backbone.get_submodule(stage).parameters():
            p.requires_grad_(stage not in frozen)
            if stage in frozen:
                p.grad = None  # a stale zero grad would still let SGD/AdamW apply weight decay and momentum
    for p in model.head.parameters():
        p.requires_grad_(True)

    if bn == "all":
        scopes = [("backbone", model.backbone)]
    elif bn == "frozen":
        scopes = [(f"backbone.{s}", model.backbone.get_submodule(s)) for s in spec.stages if s in frozen]
    else:
        scopes = []
    model.set_frozen_bn({f"{prefix}.{name}" if name else prefix
                         for prefix, scope in scopes
                         for name, m in scope.named_modules() if isinstance(m, _BatchNorm)})
    trainable = [f"backbone.{s}" for s in spec.stages[n:]] + ["head"]
    log.debug("frozen stages: %d/%d; trainable: %s", n, len(spec.stages), ", ".join(trainable))
    return trainable


class UnfreezeSchedule:
    """Top-down gradual unfreezing: head only for `head_only_epochs`, then one more stage every `every` epochs.

    frozen_stages_at(epoch) (0-based epochs) goes total_stages, ..., total_stages - 1 at head_only_epochs,
    one fewer every `every` epochs after that, never below `min_frozen`.
    """

    def __init__(self, head_only_epochs: int, every: int, total_stages: int, min_frozen: int = 0) -> None:
        self.head_only_epochs, self.every = head_only_epochs, every
        self.total_stages, self.min_frozen = total_stages, min_frozen
        self._validate()

    def _validate(self) -> None:
        if self.head_only_epochs < 0 or self.every < 1 or self.total_stages < 0:
            raise ValueError(f"UnfreezeSchedule(head_only_epochs={self.head_only_epochs}, every={self.every}, "
                             f"total_stages={self.total_stages}): need head_only_epochs >= 0, every >= 1, "
                             f"total_stages >= 0")
        if not 0 <= self.min_frozen <= self.total_stages:
            raise ValueError(f"min_frozen={self.min_frozen}; allowed: 0..{self.total_stages}")

    def frozen_stages_at(self, epoch: int) -> int:
        """Number of frozen stages during `epoch` (pure)."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch}; must be >= 0")
        if epoch < self.head_only_epochs:
            return self.total_stages
        unfrozen = 1 + (epoch - self.head_only_epochs) // self.every
        return max(self.min_frozen, self.total_stages - unfrozen)

    def state_dict(self) -> dict[str, int]:
        return {"head_only_epochs": self.head_only_epochs, "every": self.every,
                "total_stages": self.total_stages, "min_frozen": self.min_frozen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        state = dict(state)
        if "num_stages" in state:  # checkpoints written before the rename
            state["total_stages"] = state.pop("num_stages")
        if set(state) != set(self.state_dict()):
            raise ValueError(f"UnfreezeSchedule state keys {sorted(state)}; expected {sorted(self.state_dict())}")
        for key, value in state.items():
            setattr(self, key, int(value))
        self._validate()


def param_groups(model: VideoClassifier, spec: BackboneSpec, *, head_lr: float, backbone_lr: float,
                 layer_decay: float = 1.0, weight_decay: float, include_frozen: bool = True) -> list[dict[str, Any]]:
    """Optimizer groups, one per (stage, decay/no_decay), named like "backbone.blocks.3/decay" and "head/no_decay".

    - No weight decay on biases, norm weights (ndim <= 1) and NO_DECAY_NAME_PARTS parameters.
    - Layer-wise decay: the last stage gets backbone_lr, each earlier stage layer_decay times the next.
    - Each group stores "base_lr" (its peak lr, layer decay included): schedule with
      `videoft.engine.train.set_lr_factor`, which sets lr = base_lr * factor, not with schedulers
      that write one lr into every group.
    - include_frozen=True (for gradual unfreezing) also places frozen parameters in their groups, so
      the groups never change and an optimizer state_dict resumes cleanly. A frozen parameter gets
      no .grad, and SGD/AdamW skip parameters whose .grad is None (no update, no weight decay, no
      momentum): use zero_grad(set_to_none=True), the default. include_frozen=False leaves them out.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay={layer_decay}; allowed: 0 < layer_decay <= 1")
    for key, value in (("head_lr", head_lr), ("backbone_lr", backbone_lr), ("weight_decay", weight_decay)):
        if value < 0:
            raise ValueError(f"{key}={value}; must be >= 0")
    n = len(spec.stages)
    units = [(f"backbone.{s}", model.backbone.get_submodule(s), layer_decay ** (n - 1 - i), backbone_lr)
             for i, s in enumerate(spec.stages)] + [("head", model.head, 1.0, head_lr)]
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for unit, module, scale, lr in units:
        buckets: dict[str, list[torch.Tensor]] = {"decay": [], "no_decay": []}
        for name, p in module.named_parameters():
            if id(p) in seen:
                raise ValueError(f"{unit}.{name} belongs to two stages of {spec.name}")
            seen.add(id(p))
            if include_frozen or p.requires_grad:
                buckets["no_decay" if _no_decay(name, p) else "decay"].append(p)
        for kind, params in buckets.items():
            if params:
                groups.append({"params": params, "name": f"{unit}/{kind}", "lr": lr * scale,
                               "base_lr": lr * scale, "weight_decay": weight_decay if kind == "decay" else 0.0})
    outside = [name for name, p in model.named_parameters() if id(p) not in seen]
    if outside:
        raise ValueError(f"parameters outside the stages of {spec.name} and the head: {outside[:8]}")
    return groups


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or any(part in name for part in NO_DECAY_NAME_PARTS)
