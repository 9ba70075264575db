"""One training epoch in a fixed order: set lr, forward under autocast, backward, clip, step, zero_grad, log."""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from videoft.engine.distributed import all_reduce_sum, gather_to_main
from videoft.progress import progress


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops and the last good checkpoint is kept."""


@dataclass
class StepOptions:
    """How each optimisation step is done (from the config, resolved for the device)."""

    accum_steps: int = 1
    grad_clip: float | None = None
    amp_dtype: torch.dtype | None = None     # None: fp32
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    channels_last: bool = False
    max_steps: int | None = None             # optimizer steps per epoch (smoke tests)
    multi_view: bool = False                 # batches are [B, V, ...]: every view is an example (linear probe,
                                             # data.train_clips > 1)


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    clips: int
    seconds: float
    step: int                                 # global optimizer step after the epoch
    failures: list = field(default_factory=list)

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0


def amp_dtype_for(mode: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def configure_determinism(enabled: bool) -> None:
    """Deterministic kernels where they exist: cuBLAS workspace, cuDNN without autotuning, torch's
    deterministic algorithms (warn_only: an op without a deterministic version warns, naming itself)."""
    if not enabled:
        return
    # read by cuBLAS when it creates its first handle, i.e. before the first matmul on the GPU
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def lr_factor_at(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up then cosine decay to `min_ratio`, as a multiplier of each group's base LR."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """lr = base_lr * factor for every group, so per-group scales (head, layer decay) survive."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def mix_batch(video: torch.Tensor, labels: torch.Tensor, num_classes: int, *, mixup_alpha: float,
              cutmix_alpha: float, label_smoothing: float, generator: torch.Generator | None = None):
    """MixUp or CutMix on video `[B, C, T, H, W]`: the same box on every frame; soft targets."""
    target = F.one_hot(labels, num_classes).float()
    target = target * (1 - label_smoothing) + label_smoothing / num_classes
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(1, generator=generator).item() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(video.shape[0], generator=generator, device="cpu").to(video.device)
    if use_cutmix:
        h, w = video.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = torch.randint(h, (1,), generator=generator).item(), torch.randint(w, (1,), generator=generator).item()
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        video = video.clone()
        video[..., y0:y1, x0:x1] = video[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        video = lam * video + (1 - lam) * video[perm]
    return video, lam * target + (1 - lam) * target[perm]


@dataclass
class _Totals:
    """This rank's loss sum, correct predictions and clips, as Python numbers until the epoch's one reduction."""

    loss_sum: float = 0.0
    correct: float = 0.0
    clips: float = 0.0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.loss_sum += loss.item() * n
        self.correct += (logits.argmax(1) == labels).sum().item()
        self.clips += n

    def reduced(self) -> _Totals:
        """Summed over all ranks (one all-reduce, on the collective device)."""
        return _Totals(*all_reduce_sum(torch.tensor([self.loss_sum, self.correct, self.clips],
                                                    dtype=torch.float64)).tolist())


def train_one_epoch(model: torch.nn.Module, loader, optimizer: torch.optim.Optimizer, *, device: torch.device,
                    opts: StepOptions, num_classes: int, step: int, lr_at: Callable[[int], float],
                    scaler: torch.amp.GradScaler | None = None, show_progress: bool = True,
                    epoch_desc: str = "train", on_step: Callable[[int], None] | None = None) -> EpochResult:
    """Train over `loader` once; returns the epoch's loss/accuracy reduced over all ranks.

    `step` is the global optimizer step at the start (the LR schedule is per step);
    `on_step(step)` runs after every optimizer step (periodic checkpoints). The last window of
    an epoch may hold fewer than `accum_steps` micro-batches: it is stepped too, its gradient
    the mean over the micro-batches it holds, so an epoch takes ceil(batches / accum_steps)
    steps. Failures come back from every rank on rank 0 (empty elsewhere).
    """
    model.train()
    totals, failures, start = _Totals(), [], time.perf_counter()
    micro = steps_this_epoch = 0
    num_batches = len(loader)  # equal on every rank (TrainSampler pads): the last window ends together
    bar = progress(loader, desc=epoch_desc, enabled=show_progress, unit="batch")
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        failures += batch["failures"]
        video, labels = _batch_inputs(model, batch, device, opts)
        if labels.numel() == 0:
            continue
        if micro == 0:
            set_lr_factor(optimizer, lr_at(step))
        window_end = micro + 1 == opts.accum_steps or i + 1 == num_batches
        loss, logits = _forward_backward(model, video, labels, opts, num_classes=num_classes, scaler=scaler,
                                         sync_grads=window_end, where=f"step {step} ({epoch_desc})")
        micro += 1
        totals.add(loss, logits, labels)
        if window_end:
            step = _optimizer_step(model, optimizer, opts, scaler, micro, step)
            micro, steps_this_epoch = 0, steps_this_epoch + 1
            if on_step is not None:
                on_step(step)
        bar.set_postfix(loss=f"{totals.loss_sum / totals.clips:.3f}", acc=f"{totals.correct / totals.clips:.3f}",
                        lr=f"{optimizer.param_groups[-1]['lr']:.2e}",
                        clips_s=f"{totals.clips / (time.perf_counter() - start):.1f}")
        if opts.max_steps is not None and steps_this_epoch >= opts.max_steps:
            break
    bar.close()
    if micro:  # the epoch's last batches were all undecodable: step what the window holds
        step = _optimizer_step(model, optimizer, opts, scaler, micro, step)
        if on_step is not None:
            on_step(step)
    seconds, total = time.perf_counter() - start, totals.reduced()
    parts = gather_to_main(failures)
    return EpochResult(loss=total.loss_sum / max(total.clips, 1), accuracy=total.correct / max(total.clips, 1),
                       clips=int(total.clips), seconds=seconds, step=step,
                       failures=[f for part in parts or [] for f in part])


def _batch_inputs(model: torch.nn.Module, batch: dict, device: torch.device, opts: StepOptions
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's decodable clips, normalised by the model, and labels on `device` (views flattened for
    multi-view batches)."""
    video, labels, valid = batch["video"], batch["label"], batch["valid"]
    if not valid.all():  # undecodable eval-style items (already reported in `failures`)
        video, labels = video[valid], labels[valid]
    if opts.multi_view:  # [B, V, ...] -> [B * V, ...], one label per view
        labels = labels.repeat_interleave(video.shape[1])
        video = video.flatten(0, 1)
    video = video.to(device, non_blocking=True)  # [B, C, T, H, W] uint8 (or cached features [B, D])
    labels = labels.to(device, non_blocking=True)
    normalize = getattr(getattr(model, "module", model), "normalize", None)  # DDP keeps the model in .module
    if video.dtype == torch.uint8 and normalize is not None:
        video = normalize(video)  # on the device, before MixUp/CutMix mix the clips
    if opts.channels_last and video.dim() == 5:
        video = video.contiguous(memory_format=torch.channels_last_3d)
    return video, labels


def _forward_backward(model: torch.nn.Module, video: torch.Tensor, labels: torch.Tensor, opts: StepOptions, *,
                      num_classes: int, scaler: torch.amp.GradScaler | None, sync_grads: bool,
                      where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward under autocast, loss (MixUp/CutMix soft targets if configured), scaled backward."""
    if opts.mixup_alpha > 0 or opts.cutmix_alpha > 0:
        inputs, target = mix_batch(video, labels, num_classes, mixup_alpha=opts.mixup_alpha,
                                   cutmix_alpha=opts.cutmix_alpha, label_smoothing=opts.label_smoothing)
    else:
        inputs, target = video, labels
    # DDP: skip the gradient all-reduce on all but the last micro-batch of an accumulation
    sync = contextlib.nullcontext() if sync_grads or not hasattr(model, "no_sync") else model.no_sync()
    with sync:
        with torch.autocast(video.device.type, dtype=opts.amp_dtype, enabled=opts.amp_dtype is not None):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), target, weight=opts.class_weights,
                               label_smoothing=0.0 if target.dtype.is_floating_point else opts.label_smoothing)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at {where}; stopping with the last good "
                                     "checkpoint kept (lower the LR, or check the data)")
        scaled = loss / opts.accum_steps
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return loss, logits


def _optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, opts: StepOptions,
                    scaler: torch.amp.GradScaler | None, micro_batches: int, step: int) -> int:
    """Rescale a partial window, clip (after unscaling), step, zero the gradients; returns the next step."""
    if micro_batches < opts.accum_steps:
        # each micro-batch's loss was divided by accum_steps: make the gradient the mean over this window
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(opts.accum_steps / micro_batches)
    if opts.grad_clip:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step + 1


@torch.no_grad()
def recompute_bn_stats(model: torch.nn.Module, loader, *, num_batches: int, device: torch.device,
                       amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> int:
    """Precise BatchNorm (PySlowFast): replace the running statistics of every BatchNorm that is in
    training mode by exact averages over `num_batches` training batches of the current weights.

    The exponential running average lags behind weights that move fast (training from scratch, high
    LR, small batches), and eval-mode predictions then collapse. Frozen BatchNorm (eval mode) is left
    alone. Returns the number of batches used.
    """
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
           and m.track_running_stats]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: the exact mean over the batches seen
    used = 0
    for batch in loader:
        video = batch["video"][batch["valid"]]
        if video.numel() == 0:
            continue
        if video.dim() == 6:  # several clips per video (data.train_clips): [B, K, ...] -> [B * K, ...]
            video = video.flatten(0, 1)
        video = video.to(device, non_blocking=True)
        if channels_last and video.dim() == 5:
            video = video.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(video)
        used += 1
        if used >= num_batches:
            break
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return used
