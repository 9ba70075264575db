"""`train.amp: auto` and `train.channels_last: auto`: the fastest precision and memory layout for this model,
geometry and CPU or GPU, measured with a few training steps at start and cached.

Which combination wins depends on both: on an AMD EPYC with avx512_bf16, S3D 8x64x64 trains 1.9x faster with
bf16 autocast and channels_last_3d together, while X3D-XS 4x160x160 is fastest with channels_last_3d alone
(#10's measurements); on an H200, channels_last_3d made R(2+1)D-18 1.5x faster and X3D-S 4.7x slower. A guess
per backbone would be wrong on the next CPU or GPU, so each candidate is timed on a copy of the model (the
model itself, its BatchNorm statistics and gradients are left untouched), its gradient is compared with
plain fp32's on the same clips (a format that gets it wrong is refused), and the choice is cached under
`$VIDEOFT_CACHE` (default `~/.cache/videoft/autotune.json`) by backbone, geometry, batch, frozen stages,
threads, CPU or GPU (with its cuDNN) and torch version. On the CPU bf16 is a candidate only with native bf16
instructions (AVX512-BF16 or AMX): elsewhere it is emulated and never faster. On CUDA `auto` is bf16 (fp16
where unsupported) unless its gradient is refused, then fp32; only the layout is chosen by speed.
"""
from __future__ import annotations

import copy
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from videoft.cache import cache_dir, write_text_atomically

log = logging.getLogger("videoft")


@dataclass(frozen=True)
class StepFormat:
    """How training steps run: autocast dtype (None: fp32) and the channels_last_3d layout."""

    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def name(self) -> str:
        return f"{'bf16' if self.amp_dtype == torch.bfloat16 else 'fp32'}{' + channels_last' * self.channels_last}"


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo)."""
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def candidates(amp_mode: str, channels_last_mode: str, *, native_bf16: bool,
               gpu_dtype: torch.dtype | None = None) -> list[StepFormat]:
    """The formats to time: every combination left open by the 'auto' settings (a fixed setting is kept).
    gpu_dtype: on CUDA, the autocast dtype `auto` stands for (bf16, or fp16 where bf16 is unsupported): it is
    the only dtype candidate there (half the activation memory), and fp32 is the fallback when its gradient is
    refused (choose_step_format)."""
    auto = [gpu_dtype] if gpu_dtype is not None else [None, torch.bfloat16] if native_bf16 else [None]
    dtypes = {"off": [None], "bf16": [torch.bfloat16], "fp16": [torch.float16]}.get(amp_mode, auto)
    layouts = {"on": [True], "off": [False]}.get(channels_last_mode, [False, True])
    return [StepFormat(d, c) for d in dtypes for c in layouts]


# largest relative error of a format's gradient against plain fp32's that is still taken as right
GRADIENT_TOLERANCE = {None: 0.01, torch.bfloat16: 0.15, torch.float16: 0.15}


@dataclass
class Measurement:
    seconds: float            # median seconds per forward+backward step
    gradient: torch.Tensor    # every trainable parameter's gradient of the first step, flattened (float64)


def measure_step(model: torch.nn.Module, fmt: StepFormat, *, batch: int, clip_len: int, crop: int,
                 num_classes: int, steps: int = 2) -> Measurement:
    """Median seconds of a forward+backward training step in `fmt` on a copy of `model` (timed after one
    warm-up step), and the warm-up step's gradient (the same clips, labels and dropout for every format)."""
    trial = copy.deepcopy(model).train()
    if fmt.channels_last:
        trial = trial.to(memory_format=torch.channels_last_3d)
    device = next(trial.parameters()).device
    clips = torch.randint(0, 256, (batch, 3, clip_len, crop, crop), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0)).to(device)
    if fmt.channels_last:
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    labels = torch.arange(batch, device=device) % num_classes
    times, gradient = [], None
    for step in range(steps + 1):
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step)  # dropout draws the same masks in every format
            with torch.autocast(device.type, dtype=fmt.amp_dtype, enabled=fmt.amp_dtype is not None):
                loss = F.cross_entropy(trial(clips).float(), labels)
            loss.backward()
        if gradient is None:
            gradient = torch.cat([p.grad.detach().double().flatten().cpu() for p in trial.parameters()
                                  if p.grad is not None])
        trial.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return Measurement(statistics.median(times[1:]), gradient)


def gradient_error(gradient: torch.Tensor, reference: torch.Tensor) -> float:
    """|g - ref| / |ref| over all parameters together (inf when g is not finite)."""
    if not torch.isfinite(gradient).all():
        return float("inf")
    return float((gradient - reference).norm() / reference.norm().clamp_min(1e-30))


def fastest(timings: dict[StepFormat, float], *, margin: float = 0.05) -> StepFormat:
    """The fastest format; fp32 contiguous (the reference) unless another is more than `margin` faster, and a
    plain layout over channels_last within the margin: a tie is not worth a change."""
    def rank(fmt: StepFormat) -> tuple[float, int]:
        return timings[fmt], int(fmt.amp_dtype is not None) + int(fmt.channels_last)
    best = min(timings, key=rank)
    simpler = [f for f in timings if rank(f)[1] < rank(best)[1] and timings[f] <= timings[best] * (1 + margin)]
    return min(simpler, key=lambda f: (rank(f)[1], timings[f])) if simpler else best


CACHE_VERSION = 3  # raised whenever the choice rule changes: a choice made by an older rule is measured again


def cache_path() -> Path:
    return cache_dir() / "autotune.json"


def device_name(device: torch.device) -> str:
    """What a timing depends on besides the model: the CPU's model name, or the GPU's name and cuDNN version."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}|cuDNN {torch.backends.cudnn.version()}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def cache_key(backbone: str, *, batch: int, clip_len: int, crop: int, frozen_stages: int, options: Sequence[str],
              device: str | None = None) -> str:
    device = device or device_name(torch.device("cpu"))
    return (f"v{CACHE_VERSION}|{backbone}|{clip_len}x{crop}x{crop}|batch {batch}|frozen {frozen_stages}|threads "
            f"{torch.get_num_threads()}|{device}|torch {torch.__version__}|{','.join(options)}")


def choose_step_format(model: torch.nn.Module, *, amp_mode: str, channels_last_mode: str, backbone: str,
                       batch: int, clip_len: int, crop: int, num_classes: int, frozen_stages: int,
                       measure: Callable[..., Measurement] = measure_step, cache_file: Path | None = None,
                       gpu_dtype: torch.dtype | None = None, device: str | None = None) -> StepFormat:
    """The step format for these settings on the model's device: fixed settings kept (a fixed bf16 is still
    checked, with a warning when wrong), 'auto' ones decided by measurement, cached in `cache_file` (default:
    cache_path()) under `device` (default: this CPU; see device_name). A format is a candidate only if its
    gradient agrees with plain fp32's (GRADIENT_TOLERANCE): on torch 2.14.1's CPU kernels bf16 autocast gives
    NaN gradients for S3D and R(2+1)D (their (3, 1, 1) temporal convolutions at 2 frames) and 30-40% wrong ones
    for R3D/MC3, and channels_last_3d puts S3D 2-3% off (3-6% off float64, against 1% for plain fp32), while
    X3D's agree (README, Performance). On CUDA (`gpu_dtype`: what amp `auto` means there) the layout is timed
    both ways, the dtype stays `gpu_dtype` unless its gradient is refused, then fp32: on an H200 channels_last_3d
    made R(2+1)D-18 and S3D 1.5x faster and X3D-S 4.7x slower, and bf16's first-step gradient was 100-140% off
    fp32's for random-initialised R(2+1)D-18 and S3D, 1-5% for X3D-S, Slow-R50 and MViT (README, Running on GPUs)."""
    options = candidates(amp_mode, channels_last_mode, native_bf16=cpu_has_native_bf16(), gpu_dtype=gpu_dtype)
    if len(options) == 1 and options[0].amp_dtype is None:
        return options[0]  # fp32 fixed in both settings: nothing to choose, nothing to check
    key = cache_key(backbone, batch=batch, clip_len=clip_len, crop=crop, frozen_stages=frozen_stages,
                    options=[f.name for f in options], device=device)
    path = cache_file or cache_path()
    cached = _read_cache(path).get(key)
    by_name = {f.name: f for f in options}
    if cached in by_name:
        log.info("step format: %s (measured before on this machine: %s)", cached, path)
        return by_name[cached]
    reference = StepFormat(None, False)
    runs = {f: measure(model, f, batch=batch, clip_len=clip_len, crop=crop, num_classes=num_classes)
            for f in ([reference] if reference not in options else []) + options}
    errors = {f: gradient_error(runs[f].gradient, runs[reference].gradient) for f in options}
    safe = {f: runs[f].seconds for f in options if errors[f] <= GRADIENT_TOLERANCE.get(f.amp_dtype, 0.0)}
    if not safe and amp_mode == "auto":  # on CUDA, where fp32 is no candidate: the reference it was measured against
        safe = {reference: runs[reference].seconds}
    choice = fastest(safe) if safe else min(options, key=lambda f: errors[f])
    if not safe:  # only formats the configuration fixed (train.amp=bf16, train.channels_last=on): kept, with a warning
        log.warning("step format %s: its gradient is %s off fp32 for %s on this CPU; training may diverge "
                    "(train.amp=auto train.channels_last=auto would train in fp32)", choice.name,
                    _percent(errors[choice]), backbone)
    log.info("step format: %s (timed training steps: %s)", choice.name, ", ".join(
        f"{f.name} {batch / runs[f].seconds:.1f} clips/s, gradient {_percent(errors[f])} off fp32"
        + ("" if f in safe else " (refused)") for f in options))
    _write_cache(path, key, choice.name)
    return choice


def _percent(error: float) -> str:
    return "not finite" if error == float("inf") else "over 100%" if error > 1 else f"{100 * error:.2g}%"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, value: str) -> None:
    """Add one entry, atomically (another run may read the file at the same time); a cache that cannot be
    written costs a re-measurement next time, never the run."""
    try:
        data = _read_cache(path)
        data[key] = value
        write_text_atomically(path, json.dumps(data, indent=1))
    except OSError as err:
        log.warning("could not write the step-format cache %s: %s", path, err)
