"""End to end vs compute only: the training step fed by the real loader, against the same step on batches in memory.

Both run in one process with the same model, batch, optimizer and threads (FineTuneRecipe, as
tools/train.py builds them); the in-memory batches are the loader's own, collected beforehand. The
ratio is how much of the compute speed the data pipeline lets through.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
SHORT_SIDE = 72  # the short side end_to_end trains at (prepare copies for it at this size)


def end_to_end(data: str | Path, *, steps: int = 20, repeats: int = 3, overrides: tuple[str, ...] = (),
               device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """clips/s of tools/train.py's epoch loop on the real loader and on in-memory batches (median, min, max).
    On CUDA the in-memory batches are the loader's pinned ones, copied to the GPU at every step as in training."""
    from videoft.config import load_config
    from videoft.engine.autotune import StepFormat
    from videoft.engine.distributed import DistInfo
    from videoft.engine.train import StepOptions, train_one_epoch
    from videoft.recipe import FineTuneRecipe

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(REPO / "configs" / "demo.yaml", [
            f"data.root={data}", f"out_dir={out}", "model.backbone=s3d", "data.clip_len=8", "data.crop_size=64",
            f"data.short_side={SHORT_SIDE}", "data.scale_jitter=[1.0,1.25]", "data.batch_size=8", "data.num_workers=2",
            "optim.name=adamw", "train.threads=2", "data.val_fraction=0.0", "train.precise_bn_batches=0",
            *overrides])
        recipe = FineTuneRecipe(cfg, DistInfo(rank=0, local_rank=0, world_size=1, device=device),
                                Path(out))
        recipe.setup()
        loader = recipe.train_loader
        opts = StepOptions(**{**recipe.step_options.__dict__, "max_steps": steps})

        def epoch(source, e: int) -> float:
            if hasattr(source, "sampler"):
                source.sampler.set_epoch(e)
            result = train_one_epoch(recipe.model, source, recipe.optimizer, device=device, opts=opts,
                                     num_classes=len(recipe.classes), step=0, lr_at=lambda s: 1e-4,
                                     show_progress=False)
            return result.clips_per_second

        epoch(loader, 0)  # warm-up: workers start, caches fill
        in_memory = [b for _, b in zip(range(steps), loader)]
        epoch(in_memory, 0)
        pipeline, compute = [], []
        for r in range(repeats):  # alternate, so machine load hits both alike
            pipeline.append(epoch(loader, r + 1))
            compute.append(epoch(in_memory, r + 1))
        step_format = StepFormat(recipe.amp_dtype, recipe.channels_last).name
    return {"end_to_end": _stats(pipeline), "compute_only": _stats(compute), "step_format": step_format,
            "ratio": statistics.median(pipeline) / statistics.median(compute)}


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_speed(*, backbone: str = "x3d_xs", clip_len: int = 8, crop: int = 64, batch: int = 8,
               repeats: int = 5) -> tuple[dict[str, float], dict[str, float]]:
    """Training-step clips/s with everything trainable and with all but the last stage and the head frozen."""
    from videoft.models.backbones import get_backbone_spec
    from videoft.models.classifier import build_classifier
    from videoft.models.freezing import freeze_stages, param_groups

    spec = get_backbone_spec(backbone)
    x, y = torch.randn(batch, 3, clip_len, crop, crop), torch.randint(0, 10, (batch,))
    out = []
    for frozen in (0, len(spec.stages) - 1):
        torch.manual_seed(0)
        model = build_classifier(backbone, 10, clip_len=clip_len, crop_size=crop, dropout=0.0)
        freeze_stages(model, spec, frozen)
        opt = torch.optim.SGD(param_groups(model, spec, head_lr=0.01, backbone_lr=0.01, weight_decay=1e-4),
                              lr=0.01, momentum=0.9)
        model.train()

        def step(model=model, opt=opt):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        step()  # warm-up
        out.append(_stats([batch / _timed(step) for _ in range(repeats)]))
    return out[0], out[1]
