#!/usr/bin/env python
"""Scale benchmarks for multi-process runs, each against the previous implementation in the same run.

    python tools/benchmark_scale.py memory --videos 20000 --views 10 --classes 400      # peak RSS per rank
    python tools/benchmark_scale.py workers --epochs 6                                  # per-epoch worker start-up

memory: torchrun with N gloo processes on generated predictions and features (no videos). The
evaluation path is videoft's `predict` on a stand-in model; the baseline is the code it replaced
(every rank all-gathers every rank's predictions). The feature cache path is videoft's shard
writer and FeatureStore, read through once as an epoch of head training does; the baseline
all-gathers every rank's features into every rank's memory. Prints each rank's peak RSS
(VmHWM) and, while the result is still held, its anonymous and file-backed (page cache, shared
between the ranks of a machine, reclaimable) resident memory.
workers: a training pass and a validation pass per epoch over a small generated dataset,
DataLoader workers spawned (as on CUDA), with workers re-created every epoch (the previous
behaviour) and with persistent workers; checks both give the same batches.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def memory_status() -> dict[str, float]:
    """This process's VmHWM (peak), VmRSS, RssAnon and RssFile in MB (Linux /proc)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def fake_batches(args, rank: int, world: int, width: int):
    """Eval-style batches of this rank's shard (videos rank, rank + world, ...): [B, V, 1, 1, 1, 1] inputs."""
    mine = list(range(rank, args.videos, world))
    for start in range(0, len(mine), args.batch):
        idx = mine[start:start + args.batch]
        yield {"video": torch.rand(len(idx), args.views, 1, 1, 1, 1), "index": torch.tensor(idx),
               "label": torch.tensor(idx) % width, "valid": torch.ones(len(idx), dtype=torch.bool),
               "frame_indices": [[[0]] * args.views] * len(idx), "failures": []}


def predict_before(model, loader, *, num_views: int) -> object:
    """The replaced merge (commit 7b2772d): every rank all-gathers every rank's {index: (label, probs, frames)}."""
    import torch.distributed as dist

    from videoft.engine.evaluate import forward_views

    local = {}
    for batch in loader:
        probs = forward_views(model, batch["video"], device=torch.device("cpu")).softmax(-1).numpy()
        for k in range(len(probs)):
            local[int(batch["index"][k])] = (int(batch["label"][k]), probs[k], batch["frame_indices"][k])
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (local, []))
    merged = {}
    for part, _ in parts:
        merged.update(part)
    order = sorted(merged)
    return float(np.stack([merged[i][1] for i in order]).sum(dtype=np.float64)), memory_status()


def features_before(backbone, loader) -> int:
    """The replaced cache: every rank all-gathers every rank's {index: features [V, D]}, then reads them all."""
    import torch.distributed as dist

    from videoft.engine.evaluate import forward_views

    feats = {}
    for batch in loader:
        out = forward_views(backbone, batch["video"], device=torch.device("cpu"))
        for k, idx in enumerate(batch["index"].tolist()):
            feats[idx] = out[k]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (feats, []))
    merged = {}
    for part, _ in parts:
        merged.update(part)
    checksum = sum(float(merged[i].double().sum()) for i in range(len(merged)))  # one epoch reads every video
    return checksum, memory_status()


def features_after(backbone, loader, args, rank: int, world: int) -> int:
    """videoft's cache: this rank's shard written batch by batch, every shard opened (RAM or mmap), read once."""
    from videoft.engine.distributed import barrier
    from videoft.engine.features import FeatureStore, write_feature_shard

    paths = [Path(args.cache_dir) / f"rank{r:05d}" for r in range(world)]
    write_feature_shard(backbone, loader, paths[rank], num_videos=len(range(rank, args.videos, world)),
                        device=torch.device("cpu"), show_progress=False)
    barrier()
    store = FeatureStore.open(paths, args.videos, ram_limit_bytes=args.ram_limit_mb * 2**20)
    checksum = sum(float(store.get(i).double().sum()) for i in range(args.videos))
    return checksum, memory_status()


def memory_worker(args) -> None:
    """One torchrun rank of `memory`: run one implementation, print its memory as a JSON line."""
    from videoft.engine.distributed import cleanup_distributed, setup_distributed
    from videoft.engine.evaluate import predict

    dist = setup_distributed("cpu")
    torch.manual_seed(0)
    width = args.classes if args.what == "predict" else args.dim
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, width)).eval()
    before = memory_status()
    loader = fake_batches(args, dist.rank, dist.world_size, width)
    with torch.no_grad():
        if args.what == "predict" and args.impl == "before":
            checksum, held = predict_before(model, loader, num_views=args.views)
        elif args.what == "predict":
            pred = predict(model, loader, device=dist.device, num_clips=args.views, num_crops=1, show_progress=False)
            checksum, held = None if pred is None else float(pred.view_probs.sum(dtype=np.float64)), memory_status()
        elif args.impl == "before":
            checksum, held = features_before(model, loader)
        else:
            checksum, held = features_after(model, loader, args, dist.rank, dist.world_size)
    held["VmHWM"] = memory_status()["VmHWM"]  # the peak over the whole run
    print("MEMORY " + json.dumps({"rank": dist.rank, "start": before, "end": held, "checksum": checksum}),
          flush=True)
    cleanup_distributed()


def bench_memory(args) -> dict:
    pred_mb = args.videos * args.views * args.classes * 4 / 2**20
    feat_mb = args.feature_videos * args.feature_views * args.dim * 4 / 2**20
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        pv, fv = (args.videos, args.views), (args.feature_videos, args.feature_views)
        runs = [("predict", "before", pv, {}), ("predict", "after", pv, {}), ("features", "before", fv, {}),
                ("features", "after", fv, {"ram": args.ram_limit_mb}), ("features", "after", fv, {"ram": 0})]
        for what, impl, (videos, views), extra in runs:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
                   f"--master_port={args.port}", __file__, "_memory_worker", "--what", what, "--impl", impl,
                   "--videos", str(videos), "--views", str(views), "--classes", str(args.classes),
                   "--dim", str(args.dim), "--batch", str(args.batch), "--cache-dir", str(Path(tmp) / what),
                   "--ram-limit-mb", str(extra.get("ram", args.ram_limit_mb))]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            ranks = sorted((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("MEMORY ")),
                           key=lambda r: r["rank"])
            label = f"{what} {impl}" + (f" (cache {'mmap' if extra['ram'] == 0 else 'in RAM'})" if extra else "")
            rows.append((label, ranks))
    print(f"peak memory per rank, {args.nproc} gloo processes: predictions {args.videos} videos x {args.views} views "
          f"x {args.classes} classes ({pred_mb:.0f} MB float32); features {args.feature_videos} videos x "
          f"{args.feature_views} views x {args.dim} ({feat_mb:.0f} MB)")
    print(f"  {'':34s} {'peak RSS per rank (MB)':>24s} {'growth over start':>20s} {'rank 0 anon/file':>21s}")
    for label, ranks in rows:
        peaks = " / ".join(f"{r['end']['VmHWM']:.0f}" for r in ranks)
        growth = " / ".join(f"{r['end']['VmHWM'] - r['start']['VmRSS']:.0f}" for r in ranks)
        end = f"{ranks[0]['end']['RssAnon']:.0f} / {ranks[0]['end']['RssFile']:.0f}"
        print(f"  {label:34s} {peaks:>24s} {growth:>20s} {end:>21s}")
    sums = {label: ranks[0]["checksum"] for label, ranks in rows}
    same = len({round(v, 3) for k, v in sums.items() if k.startswith("predict")}) == 1 and \
        len({round(v, 3) for k, v in sums.items() if k.startswith("features")}) == 1
    print(f"  same results (checksums on rank 0) {same}")
    if not same:
        raise RuntimeError(f"the implementations disagree: {sums}")
    return {label: ranks for label, ranks in rows}


def bench_workers(args) -> dict:
    from videoft.data.dataset import load_splits
    from videoft.data.loaders import build_eval_loader, build_train_loader
    from videoft.data.synthetic import generate_dataset
    from videoft.data.transforms import Preprocessing

    pre = Preprocessing(8, 2, 32, 36, (0.45, 0.45, 0.45), (0.225, 0.225, 0.225))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(args.data) if args.data else generate_dataset(
            Path(tmp) / "data", per_split_counts={"train": args.train_per_class, "val": 2}, width=64, height=48)
        splits, _ = load_splits(root, val_fraction=0.0)
        results, batches = {}, {}
        for persistent in (False, True):
            common = {"num_workers": args.workers, "persistent_workers": persistent, "start_method": "spawn",
                      "batch_size": 4}
            train = build_train_loader(splits["train"], pre, seed=0, **common)
            val = build_eval_loader(splits["val"], pre, num_clips=2, **common)
            times, seen = [], []
            for epoch in range(args.epochs):
                t0 = time.perf_counter()
                train.sampler.set_epoch(epoch)
                seen += [b["video"].sum().item() for b in train]
                seen += [b["video"].sum().item() for b in val]
                times.append(time.perf_counter() - t0)
            results["persistent" if persistent else "respawned"] = times
            batches[persistent] = seen
            del train, val  # shut the persistent workers down before the next measurement
    same = batches[False] == batches[True]
    respawn, keep = (statistics.median(results[k][1:]) for k in ("respawned", "persistent"))
    n_train, n_val = len(splits["train"]), len(splits["val"])
    print(f"per-epoch time, {args.workers} spawned workers, a training pass ({n_train} clips) and a validation pass "
          f"({n_val} videos x 2 clips) per epoch, median of epochs 2-{args.epochs}:")
    print(f"  workers re-created every epoch     {respawn:7.2f} s   (epoch 1: {results['respawned'][0]:.2f} s)")
    print(f"  persistent workers                 {keep:7.2f} s   (epoch 1: {results['persistent'][0]:.2f} s)")
    print(f"  overhead removed per epoch         {respawn - keep:7.2f} s   ({respawn / keep:.2f}x)")
    print(f"  same batches in both               {same}")
    if not same:
        raise RuntimeError("persistent workers changed the batches")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what_to_run", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--videos", type=int, default=20000)
    m.add_argument("--views", type=int, default=10, help="evaluation views per video (Kinetics protocol: 30)")
    m.add_argument("--classes", type=int, default=400)
    m.add_argument("--feature-videos", type=int, default=5000)
    m.add_argument("--feature-views", type=int, default=3)
    m.add_argument("--dim", type=int, default=2048, help="feature dimension")
    m.add_argument("--batch", type=int, default=8, help="videos per batch and rank")
    m.add_argument("--nproc", type=int, default=2)
    m.add_argument("--port", type=int, default=29541)
    m.add_argument("--ram-limit-mb", type=float, default=1024, help="feature cache in RAM below this size")
    m.add_argument("--tmp", default=None, help="folder for the feature cache (default: the system's)")
    w = sub.add_parser("_memory_worker")
    for name in ("--what", "--impl", "--cache-dir"):
        w.add_argument(name, required=True)
    for name in ("--videos", "--views", "--classes", "--dim", "--batch"):
        w.add_argument(name, type=int, required=True)
    w.add_argument("--ram-limit-mb", type=float, required=True)
    k = sub.add_parser("workers")
    k.add_argument("--data", default=None, help="a split folder (default: a small generated one)")
    k.add_argument("--train-per-class", type=int, default=4)
    k.add_argument("--workers", type=int, default=2)
    k.add_argument("--epochs", type=int, default=6)
    k.add_argument("--tmp", default=None)
    args = p.parse_args(argv)
    if args.what_to_run == "_memory_worker":
        memory_worker(args)
    else:
        {"memory": bench_memory, "workers": bench_workers}[args.what_to_run](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
