#!/usr/bin/env python
"""What the CPU test suite cannot show, checked on a GPU in one command (`make gpu-check`).

    python tools/gpu_check.py                      # needs CUDA; without it, says so and exits 0
    python tools/gpu_check.py --work-dir /tmp/gc --keep
    python tools/gpu_check.py --cpu-rehearsal      # the same steps on the CPU with gloo (tests the script itself)
    python tools/gpu_check.py --only feeding --feeding-data DIR   # one check; the loader fed by real videos

The checks, in order; a failure is reported and the others still run; the exit status is 1 if
any failed, and a summary table ends the output:

  environment        torch, CUDA, cuDNN and NCCL versions; the GPU; bf16 support
  demo data          a small generated dataset (tools/make_demo_dataset.py)
  bf16 channels_last tools/train.py for a few steps with bf16 autocast and channels_last_3d: finite loss
                     (the CPU rehearsal trains in fp32, see Context.amp)
  torchrun epoch     torchrun --nproc_per_node 1 tools/train.py: a whole epoch with validation and
                     checkpoints under NCCL (the process group and DDP of an 8-GPU run, on one GPU)
  resume             the same run continued from its last.pt for a second epoch
  evaluate           torchrun --nproc_per_node 1 tools/evaluate.py on best.pt, under NCCL
  export             tools/export.py best.pt to ONNX and TorchScript (logits checked against PyTorch)
  throughput         clips/s and peak GPU memory of bf16 + channels_last training steps, one small
                     (x3d_xs) and one mid-size (slow_r50) backbone at their own clip geometry
  feeding            does the loader keep the GPU fed? tools/train.py's epoch loop (X3D-S 13x160x160, bf16,
                     16 frames x 320x240 H.264 sources) end to end against the same steps on batches in
                     memory, from the raw files and from tools/prepare.py copies (h264, jpeg, uint8)
  step formats       training-step clips/s of fp32, bf16 and bf16 + channels_last_3d, with cuDNN's
                     autotuner (cudnn.benchmark) off and on, per zoo backbone at its own geometry, and
                     each format's gradient error against fp32's (what `train.amp`/`channels_last: auto`
                     measures on a GPU; the figures behind it)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = ("no CUDA device is visible to torch: the GPU check needs one, so nothing was run "
           "(`--cpu-rehearsal` runs the same steps on the CPU)")


class CheckFailed(RuntimeError):
    """A check's expectation was not met (the message says which)."""


@dataclass
class Context:
    """Where a check run writes, and what it runs on."""

    work: Path
    cuda: bool
    sizes: dict = field(default_factory=dict)
    feeding_data: Path | None = None  # a class folder of real videos for the feeding check (default: generated)

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def run_dir(self) -> Path:
        return self.work / "torchrun"

    @property
    def backend(self) -> str:
        return "nccl" if self.cuda else "gloo"

    @property
    def amp(self) -> str:
        """bf16 on the GPU; fp32 in the CPU rehearsal (bf16 autocast on a CPU gave NaN gradients on the tiny
        random-initialised models a rehearsal trains, from one run to the next)."""
        return "bf16" if self.cuda else "off"


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    detail: str


GPU_SIZES = {"per_class": (16, 4, 4), "frame": (160, 120), "overrides": ["data.num_workers=4"],
             "throughput": [("x3d_xs", None, None, 16), ("slow_r50", None, None, 8)], "steps": 20, "warmup": 3,
             "feeding": {"videos": 32, "frames": 150, "width": 320, "height": 240, "steps": 20, "repeats": 2,
                         "formats": ("h264", "jpeg", "uint8"), "workers": max(1, (os.cpu_count() or 2) - 2),
                         "short_side": 182, "batch": 32,
                         "overrides": ["model.backbone=x3d_s", "data.clip_len=13", "data.frame_stride=6",
                                       "data.crop_size=160"]},
             "step_formats": [("x3d_s", 16), ("r2plus1d_18", 16), ("s3d", 8), ("slow_r50", 8), ("mvit_base_16x4", 4)],
             "format_steps": 10}
CPU_SIZES = {"per_class": (3, 2, 2), "frame": (64, 48),
             "overrides": ["model.backbone=x3d_xs", "data.clip_len=4", "data.crop_size=32", "data.short_side=40",
                           "data.batch_size=4", "data.num_workers=0", "data.eval_clips=2", "train.threads=1"],
             "throughput": [("x3d_xs", 4, 32, 2), ("s3d", 8, 32, 2)], "steps": 2, "warmup": 1,
             "feeding": {"videos": 4, "frames": 24, "width": 64, "height": 48, "steps": 2, "repeats": 1,
                         "formats": ("h264", "uint8"), "workers": 1, "short_side": 40, "batch": 2,
                         "overrides": ["model.backbone=x3d_xs", "data.clip_len=4", "data.frame_stride=2",
                                       "data.crop_size=32"]},
             "step_formats": [("x3d_xs", 2)], "step_geometry": (4, 32), "format_steps": 1}


def run(cmd: list[str], ctx: Context, *, timeout: int = 300) -> subprocess.CompletedProcess:
    """A tool as users run it; a non-zero exit is a failure carrying the end of its output."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    if not ctx.cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a rehearsal stays on the CPU even where a GPU exists
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise CheckFailed(f"exit {proc.returncode}: {' '.join(cmd[1:4])} ...\n{(proc.stdout + proc.stderr)[-2500:]}")
    return proc


def torchrun(args: list[str]) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(port), *args]


def train_cmd(ctx: Context, out: Path, *extra: str) -> list[str]:
    return ["tools/train.py", "configs/demo.yaml", f"data.root={ctx.data}", f"out_dir={out}",
            *ctx.sizes["overrides"], *extra]


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def check_environment(ctx: Context) -> str:
    if not ctx.cuda:
        return f"CPU rehearsal, torch {torch.__version__}"
    props = torch.cuda.get_device_properties(0)
    try:
        import torch.cuda.nccl as nccl_module

        version = nccl_module.version()  # (major, minor, patch); an int in some builds
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except (ImportError, RuntimeError, AttributeError):
        nccl = "unknown"
    return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}), "
            f"{torch.cuda.device_count()} visible; torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}; bf16 {torch.cuda.is_bf16_supported()}")


def check_demo_data(ctx: Context) -> str:
    train, val, test = ctx.sizes["per_class"]
    width, height = ctx.sizes["frame"]
    run([sys.executable, "tools/make_demo_dataset.py", "--out", str(ctx.data), "--train-per-class", str(train),
         "--val-per-class", str(val), "--test-per-class", str(test), "--width", str(width), "--height",
         str(height)], ctx)
    return f"{4 * (train + val + test)} videos at {width}x{height} in {ctx.data}"


def check_bf16_channels_last(ctx: Context) -> str:
    out = ctx.work / "bf16"
    # quoted: YAML reads a bare `off` as false
    run([sys.executable, *train_cmd(ctx, out, f"train.amp='{ctx.amp}'", "train.channels_last=true", "train.epochs=1",
                                    "train.max_steps_per_epoch=5")], ctx)
    log = (out / "train.log").read_text()
    precision = "torch.bfloat16 autocast" if ctx.amp == "bf16" else "fp32"
    expect(f"precision: {precision}, channels_last_3d" in log, f"train.log does not report {precision} + channels_last")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    expect(math.isfinite(row["train_loss"]), f"train loss is {row['train_loss']}")
    return f"5 steps, train loss {row['train_loss']:.3f}, {row['clips_per_s']:.1f} clips/s"


def check_torchrun_epoch(ctx: Context) -> str:
    out = ctx.run_dir
    run(torchrun(train_cmd(ctx, out, "train.epochs=1")), ctx)
    log = (out / "train.log").read_text()
    expect(f"backend {ctx.backend}" in log, f"train.log does not say 'backend {ctx.backend}'")
    expect((out / "last.pt").is_file() and (out / "best.pt").is_file(), "last.pt / best.pt missing")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    expect("val_top1" in row, "no validation in the epoch")
    return (f"backend {ctx.backend}, {row['step']} steps, val top1 {row['val_top1']:.3f}, "
            f"{row['clips_per_s']:.1f} clips/s")


def check_resume(ctx: Context) -> str:
    proc = run(torchrun(train_cmd(ctx, ctx.run_dir, "train.epochs=2", "resume=auto")), ctx)
    expect("resumed from" in proc.stdout, "the run did not resume from last.pt")
    rows = [json.loads(line) for line in (ctx.run_dir / "metrics.jsonl").read_text().splitlines()]
    expect([r["epoch"] for r in rows] == [1, 2], f"epochs in metrics.jsonl: {[r['epoch'] for r in rows]}")
    return f"epoch 2 from last.pt, val top1 {rows[-1]['val_top1']:.3f}"


def check_evaluate(ctx: Context) -> str:
    out = ctx.work / "eval"
    proc = run(torchrun(["tools/evaluate.py", str(ctx.run_dir / "best.pt"), "--data", str(ctx.data), "--split",
                         "test", "--out", str(out), "--bootstrap", "100"]), ctx)
    expect(f"backend {ctx.backend}" in proc.stdout, f"evaluate did not run under {ctx.backend}")
    report = json.loads((out / "report.json").read_text())
    expect(report["num_videos"] > 0, "no video evaluated")
    return f"{report['num_videos']} videos, video top1 {report['video_level']['top1']:.3f}"


def check_export(ctx: Context) -> str:
    lines = []
    for fmt in ("onnx", "torchscript"):
        proc = run([sys.executable, "tools/export.py", str(ctx.run_dir / "best.pt"), "--format", fmt, "--out",
                    str(ctx.work / f"model.{fmt}")], ctx)
        lines.append(f"{fmt}: {proc.stdout.strip().splitlines()[-1]}")
    return "; ".join(lines)


def throughput(name: str, clip_len: int | None, crop: int | None, batch: int, steps: int, device: torch.device,
               amp_dtype: torch.dtype | None = torch.bfloat16, warmup: int = 3) -> tuple[float, float | None]:
    """Clips/s of `steps` channels_last training steps under `amp_dtype` autocast (after `warmup` steps),
    and the peak GPU memory (GiB)."""
    from videoft.engine.train import StepOptions, train_one_epoch
    from videoft.models.backbones import get_backbone_spec
    from videoft.models.classifier import build_classifier

    spec = get_backbone_spec(name)
    clip_len, crop = clip_len or spec.clip_len, crop or spec.crop_size
    model = build_classifier(name, 10, clip_len=clip_len, crop_size=crop).to(device)
    model = model.to(memory_format=torch.channels_last_3d)
    # LR 0: every step computes and applies its update, but random data cannot make the weights diverge
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    opts = StepOptions(amp_dtype=amp_dtype, channels_last=True)
    gen = torch.Generator().manual_seed(0)
    batches = [{"video": torch.randn(batch, 3, clip_len, crop, crop, generator=gen),
                "label": torch.randint(0, 10, (batch,), generator=gen), "valid": torch.ones(batch, dtype=torch.bool),
                "failures": []}]
    common = {"device": device, "opts": opts, "num_classes": 10, "step": 0, "lr_at": lambda s: 1.0,
              "show_progress": False}
    train_one_epoch(model, batches * warmup, optimizer, **common)  # warm-up: cuDNN algorithm search, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = train_one_epoch(model, batches * steps, optimizer, **common)  # .item() per step: synchronised
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return result.clips_per_second, peak


def check_throughput(ctx: Context) -> str:
    device = torch.device("cuda", 0) if ctx.cuda else torch.device("cpu")
    parts = []
    for name, clip_len, crop, batch in ctx.sizes["throughput"]:
        clips_s, peak = throughput(name, clip_len, crop, batch, ctx.sizes["steps"], device,
                                   torch.bfloat16 if ctx.amp == "bf16" else None, ctx.sizes["warmup"])
        memory = f"peak {peak:.2f} GiB" if peak is not None else "no GPU memory on the CPU"
        parts.append(f"{name} batch {batch}: {clips_s:.1f} clips/s, {memory}")
    return "; ".join(parts)


def _widen(folder: Path, view: Path, copies: int) -> Path:
    """A class-folder view of `folder` with every video linked `copies` times under its own name: an epoch of
    many steps from a few generated sources (each link is read as its own video)."""
    for class_dir in (d for d in folder.iterdir() if d.is_dir()):
        (view / class_dir.name).mkdir(parents=True, exist_ok=True)
        for video in class_dir.iterdir():
            stem, dot, suffix = video.name.partition(".")
            for k in range(copies):
                link = view / class_dir.name / f"{stem}_k{k:02d}{dot}{suffix}"
                if not link.exists():
                    link.symlink_to(video.resolve())
    return view


def check_feeding(ctx: Context) -> str:
    from videoft.bench.e2e import end_to_end
    from videoft.bench.suite import generate_videos
    from videoft.data.prepare import PrepareParams
    from videoft.data.prepare_dataset import prepare_dataset

    f = ctx.sizes["feeding"]
    root = ctx.work / "feeding"
    src = ctx.feeding_data or generate_videos(root / "src", f["videos"], width=f["width"], height=f["height"],
                                              gop=250, frames=f["frames"])
    videos = sum(1 for d in src.iterdir() if d.is_dir() for _ in d.iterdir())
    short, batch = f["short_side"], f["batch"]
    sources = {"raw": src}
    for fmt in f["formats"]:
        summary = prepare_dataset(src, root / fmt, PrepareParams(format=fmt, short_side=short),
                                  workers=os.cpu_count() or 1, show_progress=False)
        expect(not summary.failed, f"prepare {fmt}: {summary.failed}")
        sources[f"prepared {fmt}"] = root / fmt
    device = torch.device("cuda", 0) if ctx.cuda else torch.device("cpu")
    copies = math.ceil(f["steps"] * batch / videos) + 1
    lines, results = [], {}
    for label, folder in sources.items():
        view = _widen(folder, root / f"view-{label.split()[-1]}", copies)
        r = end_to_end(view, steps=f["steps"], repeats=f["repeats"], device=device,
                       overrides=(*f["overrides"], f"data.short_side={short}", f"data.batch_size={batch}",
                                  f"data.num_workers={f['workers']}"))
        results[label] = r
        lines.append(f"{label}: end to end {r['end_to_end']['median']:.0f} clips/s vs compute only "
                     f"{r['compute_only']['median']:.0f} ({r['ratio']:.2f}x; {r['step_format']})")
    (ctx.work / "feeding.json").write_text(json.dumps({"sizes": f, "results": results}, indent=1, default=str))
    return f"{f['workers']} workers, batch {batch}, {videos} source videos in {src}\n" + "\n".join(lines)


def check_step_formats(ctx: Context) -> str:
    from videoft.engine.autotune import StepFormat, gradient_error, measure_step
    from videoft.models.backbones import get_backbone_spec
    from videoft.models.classifier import build_classifier

    device = torch.device("cuda", 0) if ctx.cuda else torch.device("cpu")
    formats = [StepFormat(None, False), StepFormat(torch.bfloat16, False), StepFormat(torch.bfloat16, True)]
    lines, rows = [], []
    try:
        for name, batch in ctx.sizes["step_formats"]:
            spec = get_backbone_spec(name)
            clip_len, crop = ctx.sizes.get("step_geometry") or (spec.clip_len, spec.crop_size)
            model = build_classifier(name, 10, clip_len=clip_len, crop_size=crop, dropout=0.0).to(device)
            cells = []
            for autotuner in (False, True):
                torch.backends.cudnn.benchmark = autotuner
                runs = {fmt: measure_step(model, fmt, batch=batch, clip_len=clip_len, crop=crop, num_classes=10,
                                          steps=ctx.sizes["format_steps"]) for fmt in formats}
                for fmt, m in runs.items():
                    error = gradient_error(m.gradient, runs[formats[0]].gradient)
                    rows.append({"backbone": name, "clip": f"{clip_len}x{crop}x{crop}", "batch": batch,
                                 "format": fmt.name, "cudnn_benchmark": autotuner, "clips_s": batch / m.seconds,
                                 "gradient_error": error})
                    cells.append(f"{fmt.name}{' +bench' * autotuner} {batch / m.seconds:.0f}"
                                 + (f" ({100 * error:.2g}% off)" if fmt != formats[0] else ""))
            lines.append(f"{name} {clip_len}x{crop}x{crop} batch {batch}: " + ", ".join(cells))
            del model
            if ctx.cuda:
                torch.cuda.empty_cache()
    finally:
        torch.backends.cudnn.benchmark = False
    (ctx.work / "step_formats.json").write_text(json.dumps(rows, indent=1))
    return "clips/s per training step\n" + "\n".join(lines)


CHECKS: list[tuple[str, Callable[[Context], str]]] = [
    ("environment", check_environment), ("demo data", check_demo_data),
    ("bf16 channels_last", check_bf16_channels_last), ("torchrun epoch", check_torchrun_epoch),
    ("resume", check_resume), ("evaluate", check_evaluate), ("export", check_export),
    ("throughput", check_throughput), ("feeding", check_feeding), ("step formats", check_step_formats)]


def run_checks(checks: list[tuple[str, Callable[[Context], str]]], ctx: Context) -> list[Result]:
    """Every check in order, each timed; an exception fails that check only."""
    results = []
    for name, fn in checks:
        print(f"[gpu-check] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            ok, detail = True, fn(ctx)
        except Exception as err:  # a failed check is reported, the next one runs
            ok, detail = False, str(err) if isinstance(err, CheckFailed) else traceback.format_exc(limit=4)
        results.append(Result(name, ok, time.perf_counter() - t0, detail))
        print(f"[gpu-check] {name}: {'ok' if results[-1].ok else 'FAILED'}\n  {results[-1].detail}", flush=True)
    return results


def summary(results: list[Result]) -> str:
    """The table printed at the end: one line per check, failures' details below."""
    width = max(len(r.name) for r in results)
    lines = [f"{'check':<{width}}  status  seconds  result"]
    for r in results:
        first = r.detail.strip().splitlines()[0] if r.detail.strip() else ""
        lines.append(f"{r.name:<{width}}  {'ok' if r.ok else 'FAILED':<6}  {r.seconds:7.1f}  {first[:160]}")
    failed = [r for r in results if not r.ok]
    lines.append(f"{len(results) - len(failed)} of {len(results)} checks passed")
    return "\n".join(lines)


def exit_code(results: list[Result]) -> int:
    return 0 if results and all(r.ok for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=None, help="where runs and data go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--cpu-rehearsal", action="store_true", help="run the steps on the CPU with gloo, at tiny sizes")
    p.add_argument("--feeding-data", type=Path, default=None,
                   help="feeding check: a class folder of real videos (e.g. a copy of ucf101-mini) instead of "
                        "generated 320x240 clips")
    p.add_argument("--only", default=None, help="comma-separated check names to run (default: all); the later "
                   "checks need 'demo data' and 'torchrun epoch' before them")
    args = p.parse_args(argv)
    checks = CHECKS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        unknown = [w for w in wanted if w not in dict(CHECKS)]
        if unknown:
            p.error(f"unknown check(s) {unknown}; known: {', '.join(dict(CHECKS))}")
        checks = [c for c in CHECKS if c[0] in wanted]
    if not torch.cuda.is_available() and not args.cpu_rehearsal:
        print(NO_CUDA)
        return 0
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="videoft-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    cuda = not args.cpu_rehearsal
    results = run_checks(checks, Context(work, cuda, GPU_SIZES if cuda else CPU_SIZES, args.feeding_data))
    print("\n" + summary(results))
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder: {work}")
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
