"""An exponential moving average of the weights (`train.ema_decay`), on torch's AveragedModel.

After every optimizer step the average moves toward the trained weights by (1 - decay), with the decay
warmed up as timm's ModelEmaV3 does, min(decay, (1 + n) / (10 + n)) after n updates, so the first
updates are not dominated by the initial weights. BatchNorm statistics are averaged with the weights
(`use_buffers=True`); integer buffers (`num_batches_tracked`) follow the trained model. Validation,
best.pt/last.pt's `model` and everything read from them (evaluation, inference, export) are the
average; the trained weights travel in the checkpoint's training state for a resume.

The averaged weights are used through the trained model itself (`held_in`): its structure is the one
that trains (frozen stages and their BatchNorm modes, SyncBatchNorm, channels_last), so precise-BN
and validation need no second copy kept in step with it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.optim.swa_utils import AveragedModel


def ema_average(decay: float):
    """AveragedModel's multi_avg_fn (one call per device and dtype): the warmed-up exponential average in
    place, integer tensors copied."""
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        n = float(num_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))
    return average


def build_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """A copy of `model` that update_parameters(model) moves toward it after every optimizer step."""
    return AveragedModel(model, multi_avg_fn=ema_average(decay), use_buffers=True)


@contextmanager
def held_in(model: torch.nn.Module, ema: AveragedModel) -> Iterator[None]:
    """`model` holds the averaged weights and buffers inside the block; whatever the block does to the buffers
    (precise BN's recomputed statistics) is kept in the average; the trained weights come back afterwards."""
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.module.state_dict())
    try:
        yield
    finally:
        ema.module.load_state_dict(model.state_dict())
        model.load_state_dict(trained)
