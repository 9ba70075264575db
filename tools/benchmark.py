#!/usr/bin/env python
"""Speed and memory benchmarks, each figure a ratio against a baseline measured in the same run.

    python tools/benchmark.py                                   # the suite on generated videos (minutes)
    python tools/benchmark.py --data ../shared/data/ucf101-mini # the suite on real files (+ generated HD)
    python tools/benchmark.py --quick                           # every figure, tiny sizes (CI, < 1 min)
    python tools/benchmark.py step --backbone x3d_xs --clip-len 8 --crop 64   # frozen vs full train step
    python tools/benchmark.py ddp --data data/demo              # 1 vs 2 processes, clips/s
    python tools/benchmark.py watchdog --videos ../shared/data/ucf101-mini    # decode time limit's cost

The suite (videoft.bench.suite) prints a table, ratios first, and writes benchmark.json (--out):
training and 10-clip evaluation sampling against pytorchvideo's LabeledVideoDataset (decord, same
span, resize, crop) and against the decode lower bound (PyAV from the preceding keyframe exactly
to the last needed frame); raw files against each tools/prepare.py format, with disk size; worker
RSS over >= 2,000 clips against pytorchvideo's, evaluation against training; tools/train.py's
epoch loop end to end against the same step on in-memory batches; frozen against full step.
Videos: generated 320x240 and 1280x720 H.264, one keyframe every 250 frames (long GOP) and every
16 (short), or with --data a class folder of real files in place of the 320x240 ones.
step: a training step with everything trainable against one with the first stages frozen.
ddp: tools/train.py for a fixed number of steps with 1 process, then torchrun with 2 (gloo, CPU).
watchdog: the training loader (random 16x2 clips, short side 128, crop 112, batch 8) decoding in
the DataLoader workers, against the same loader decoding in a killable child per worker
(data.decode_timeout); the two alternate, each epoch timed whole (worker start-up included).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from videoft.errors import report_user_errors

REPO = Path(__file__).resolve().parents[1]


def bench_suite(args) -> dict:
    from videoft.bench.sampling import Setup
    from videoft.bench.suite import SuiteOptions, format_table, run_suite

    opts = SuiteOptions.quick() if args.quick else SuiteOptions(repeats=args.repeats, num_videos=args.num_videos,
                                                                hd_videos=args.hd_videos, rss_clips=args.rss_clips)
    if args.formats:
        opts = SuiteOptions(**{**opts.__dict__, "formats": tuple(args.formats.split(","))})
    setup = Setup(batch=2, clip_len=8) if args.quick else Setup()  # quick: enough batches from a few videos
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        result = run_suite(args.data, Path(work), opts, setup,
                           partial=lambda r: Path(args.out).write_text(json.dumps(r, indent=1)))
    print(format_table(result))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"written: {args.out}")
    return result


def bench_step(args) -> dict:
    from videoft.models.backbones import get_backbone_spec
    from videoft.models.classifier import build_classifier
    from videoft.models.freezing import freeze_stages, param_groups

    torch.set_num_threads(args.threads)
    spec = get_backbone_spec(args.backbone)
    x = torch.randn(args.batch, 3, args.clip_len, args.crop, args.crop)
    y = torch.randint(0, 10, (args.batch,))
    results = {}
    n = len(spec.stages)
    for label, frozen in (("full", 0), (f"frozen_{args.frozen}_of_{n}", args.frozen)):
        torch.manual_seed(0)
        model = build_classifier(args.backbone, 10, clip_len=args.clip_len, crop_size=args.crop, dropout=0.0)
        freeze_stages(model, spec, frozen)
        opt = torch.optim.SGD(param_groups(model, spec, head_lr=0.01, backbone_lr=0.01, weight_decay=1e-4),
                              lr=0.01, momentum=0.9)
        model.train()
        times = []
        for i in range(args.steps + 2):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:  # skip warm-up steps
                times.append(time.perf_counter() - t0)
        results[label] = args.batch / statistics.median(times)
    frozen_label = f"frozen_{args.frozen}_of_{n}"
    results["speedup"] = results[frozen_label] / results["full"]
    print(f"train step, {args.backbone} {args.clip_len}x{args.crop}x{args.crop}, batch {args.batch}, "
          f"{args.threads} thread(s), median of {args.steps}:")
    print(f"  baseline  everything trainable      {results['full']:7.2f} clips/s")
    print(f"  frozen    first {args.frozen} of {n} stages       {results[frozen_label]:7.2f} clips/s")
    print(f"  ratio                               {results['speedup']:7.2f}x")
    return results


def bench_ddp(args) -> dict:
    common = [str(REPO / "tools" / "train.py"), str(REPO / "configs" / "demo.yaml"), f"data.root={args.data}",
              "train.epochs=1", f"train.max_steps_per_epoch={args.steps}", f"data.batch_size={args.batch}",
              "data.num_workers=1", "data.val_fraction=0", "data.eval_clips=1"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            out = Path(tmp) / f"p{nproc}"
            launcher = [sys.executable] if nproc == 1 else [
                sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port=29533"]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // nproc))}
            threads = f"train.threads={max(1, args.threads // nproc)}"
            proc = subprocess.run(launcher + common + [f"out_dir={out}", threads],
                                  capture_output=True, text=True, env=env, cwd=REPO)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
            results[f"{nproc}_process"] = row["clips_per_s"]
    results["ratio"] = results["2_process"] / results["1_process"]
    print(f"training clips/s (demo config, {args.steps} steps, global batch {args.batch}, {args.threads} cores):")
    print(f"  1 process                           {results['1_process']:7.2f} clips/s")
    print(f"  2 processes (torchrun, gloo)        {results['2_process']:7.2f} clips/s")
    print(f"  ratio                               {results['ratio']:7.2f}x")
    return results


def bench_watchdog(args) -> dict:
    from videoft.data.dataset import VideoSample
    from videoft.data.loaders import build_train_loader
    from videoft.data.transforms import Preprocessing

    videos = sorted(p for p in Path(args.videos).rglob("*") if p.suffix.lower() in (".mp4", ".avi", ".mkv"))
    videos = random.Random(0).sample(videos, min(args.num_videos, len(videos)))
    samples = [VideoSample(str(v), 0) for v in videos]
    pre = Preprocessing(16, 2, 112, 128, (0.45,) * 3, (0.225,) * 3)
    loaders = {name: build_train_loader(samples, pre, batch_size=8, num_workers=args.workers, seed=0,
                                        decode_timeout=timeout)
               for name, timeout in (("in_worker", None), ("decode_child", 60.0))}
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for epoch in range(args.repeats + 1):  # epoch 0 warms the file cache
        for name, loader in loaders.items():
            loader.sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            clips = sum(len(batch["label"]) for batch in loader)
            if epoch:
                times[name].append(clips / (time.perf_counter() - t0))
    results = {name: statistics.median(v) for name, v in times.items()}
    results["ratio"] = results["decode_child"] / results["in_worker"]
    print(f"training loader, {len(samples)} videos, {args.workers} workers, median of {args.repeats} epochs:")
    print(f"  baseline  decode in the worker      {results['in_worker']:7.1f} clips/s")
    print(f"  watchdog  decode in a child         {results['decode_child']:7.1f} clips/s")
    print(f"  ratio                               {results['ratio']:7.2f}x")
    return results


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("suite", help="the default: every figure (see above)")
    d.add_argument("--data", help="a class folder of real videos (in place of the generated 320x240 ones)")
    d.add_argument("--quick", action="store_true", help="tiny sizes, one repetition: checks every figure is made")
    d.add_argument("--repeats", type=int, default=3)
    d.add_argument("--formats", help="comma-separated prepare formats (default: all)")
    d.add_argument("--num-videos", type=int, default=48, help="videos per 320x240 (or --data) dataset")
    d.add_argument("--hd-videos", type=int, default=16, help="videos per generated 1280x720 dataset")
    d.add_argument("--rss-clips", type=int, default=2000, help="clips over which worker memory is followed")
    d.add_argument("--out", default="benchmark.json")
    d.add_argument("--work", help="folder for generated and prepared videos (default: the system temp folder)")
    s = sub.add_parser("step")
    s.add_argument("--backbone", default="x3d_xs")
    s.add_argument("--clip-len", type=int, default=8)
    s.add_argument("--crop", type=int, default=64)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--frozen", type=int, default=4, help="stages frozen in the compared run")
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--threads", type=int, default=2)
    g = sub.add_parser("ddp")
    g.add_argument("--data", default=str(REPO / "data" / "demo"))
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--threads", type=int, default=2)
    w = sub.add_parser("watchdog")
    w.add_argument("--videos", default=str(REPO / "data" / "demo"))
    w.add_argument("--num-videos", type=int, default=96)
    w.add_argument("--workers", type=int, default=2)
    w.add_argument("--repeats", type=int, default=5)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["suite", *argv]
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    np.random.seed(0)
    {"suite": bench_suite, "step": bench_step, "ddp": bench_ddp, "watchdog": bench_watchdog}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
