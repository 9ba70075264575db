#!/usr/bin/env python
"""Evaluate a checkpoint per class: clip- and video-level accuracy, confusion matrix, HTML report.

    python tools/evaluate.py runs/demo/best.pt --data data/demo --split test --out runs/demo/eval
    torchrun --nproc_per_node 2 tools/evaluate.py CKPT --data DIR --clips 5 --crops 3
    python tools/evaluate.py runs/rgb/last.pt runs/residual/last.pt --data DIR   # late fusion of two models

Everything about the model (backbone, clip geometry, normalisation, class names) comes from
the checkpoint. The data's classes are matched by name. Under torchrun each video is
evaluated exactly once and the report equals the single-process one. report.html ends with a
gallery of the mistakes (and of the least confident correct videos): a strip of the frames the
model saw for each, capped (--gallery-per-pair, --gallery-max, --gallery-correct, --no-gallery).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from videoft.choices import DECODERS, EVAL_CROPS
from videoft.data.dataset import SPLIT_NAMES, VideoSample, load_splits
from videoft.data.decode import VideoDecodeError
from videoft.data.loaders import build_eval_loader
from videoft.data.thumbnails import STRIP_HEIGHT, STRIP_MAX_FRAMES, read_strip
from videoft.engine.distributed import cleanup_distributed, setup_distributed
from videoft.engine.evaluate import Predictions, fuse_predictions, predict, summarize
from videoft.engine.gallery import GalleryCaps, GalleryItem, render_gallery, select_gallery
from videoft.engine.report import format_summary, write_report
from videoft.errors import DataError, report_user_errors
from videoft.inference import load_model, resolve_device
from videoft.progress import progress

log = logging.getLogger("videoft")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="+", help="a videoft checkpoint (best.pt / last.pt); several (same classes): "
                   "their view probabilities are averaged (late fusion, e.g. of an rgb and a model.input=residual "
                   "run), each model with its own clip geometry, the same --clips and --crops")
    p.add_argument("--data", required=True, help="class folder, split folders, or a list file")
    p.add_argument("--split", default="test", help="split folder to evaluate (default: test); in a folder "
                   "without split sub-folders, the checkpoint's run's split of it (its splits.json); a list file, "
                   "or a folder the run never saw, is evaluated whole")
    p.add_argument("--clips", type=int, default=None, help="temporal clips per video (default: the run's eval_clips)")
    p.add_argument("--crops", type=int, choices=EVAL_CROPS, default=1, help="spatial crops per clip")
    p.add_argument("--out", default=None, help="report folder (default: next to the checkpoint, eval-<split>)")
    p.add_argument("--batch-size", type=int, default=4, help="videos per batch (all their views go together)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--decoder", choices=DECODERS, default="auto")
    p.add_argument("--decode-timeout", type=float, default=60.0,
                   help="seconds a video may take to decode before it is abandoned and reported (0: no limit)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0: off)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    caps = GalleryCaps()
    p.add_argument("--gallery-per-pair", type=int, default=caps.per_pair,
                   help="report.html: misclassified videos shown per true/predicted pair")
    p.add_argument("--gallery-max", type=int, default=caps.max_mistakes, help="report.html: mistakes shown in all")
    p.add_argument("--gallery-correct", type=int, default=caps.correct_per_class,
                   help="report.html: least confident correct videos shown per class")
    p.add_argument("--no-gallery", action="store_true", help="report.html without thumbnails")
    p.add_argument("--online", action="store_true", help="a train.ema_decay run's trained weights (kept in its "
                   "checkpoints beside their average, with the BatchNorm statistics its validation gave them) "
                   "instead of the average: does the average pay on this data?")
    args = p.parse_args(argv)
    bad = [f"--{k.replace('_', '-')} must be >= {low}, got {v}" for k, low, v in
           (("clips", 1, args.clips), ("batch_size", 1, args.batch_size), ("workers", 0, args.workers),
            ("bootstrap", 0, args.bootstrap), ("decode_timeout", 0, args.decode_timeout),
            ("gallery_per_pair", 0, args.gallery_per_pair), ("gallery_max", 0, args.gallery_max),
            ("gallery_correct", 0, args.gallery_correct))
           if v is not None and v < low]
    if bad:
        p.error("; ".join(bad))
    return args


def select_split(splits: dict, split: str, data: str) -> list:
    """The requested split; a plain class folder or a list file (one pool) is evaluated whole."""
    if splits.get(split):
        return splits[split]
    if Path(data).is_file() or not any((Path(data) / s).is_dir() for s in SPLIT_NAMES):
        return splits.get("train", [])
    raise DataError(f"{data}: no '{split}' split (available: {[k for k, v in splits.items() if v]})")


def read_samples(data: str, split: str, classes: list[str], run_splits: Path | None = None) -> list[VideoSample]:
    """The videos to evaluate, labelled with the checkpoint's class indices (matched by name).

    A folder without split folders is one pool: the run that trained on it split it itself and wrote
    the split in `run_splits` (its splits.json), which then decides what `split` means in that pool."""
    split_dir = Path(data) / split
    if split_dir.is_dir():  # read only the split evaluated: other splits may hold other classes
        samples = load_splits(split_dir, val_fraction=0.0, classes=classes)[0]["train"]
    else:
        splits, _ = load_splits(data, val_fraction=0.0, test_fraction=0.0, classes=classes)
        samples = select_split(splits, split, data)
        if not splits.get(split) and run_splits is not None and run_splits.is_file():
            samples = held_out(samples, split, data, run_splits)
    if not samples:
        raise DataError(f"{data}: no videos to evaluate")
    return samples


def _key(described: str) -> str:
    """A splits.json entry ('path' or 'path [span]') compared by real path, whatever folder it was written from."""
    path, sep, span = described.partition(" [")
    return os.path.realpath(path) + sep + span


def held_out(pool: list[VideoSample], split: str, data: str, run_splits: Path) -> list[VideoSample]:
    """The pool's videos in the run's `split`; refuses to score videos the run trained or validated on."""
    saved = {name: {_key(d) for d in described} for name, described in json.loads(run_splits.read_text()).items()}
    mine = [s for s in pool if _key(s.describe()) in saved.get(split, set())]
    if mine:
        log.info("%s has no split folders: evaluating the %d videos of the run's %s split (%s)",
                 data, len(mine), split, run_splits)
        return mine
    seen = [s for s in pool if _key(s.describe()) in saved.get("train", set()) | saved.get("val", set())]
    if seen:
        raise DataError(f"{data}: no '{split}' split here, and {len(seen)} of its {len(pool)} videos trained or "
                        f"validated this model (see {run_splits}): their score would overstate accuracy. Evaluate "
                        f"held-out videos (a test/ folder, or data.test_fraction when training), or --split val "
                        f"for the run's validation videos")
    return pool


def build_report(args: argparse.Namespace, pred: Predictions, samples: list[VideoSample], classes: list[str],
                 views: dict) -> tuple[dict, list[dict]]:
    """report.json's content and the per-video predictions (see videoft.engine.report.REPORT_KEYS)."""
    metrics = summarize(pred, classes, n_boot=args.bootstrap)
    report = {
        "checkpoint": " + ".join(args.checkpoint) + (" (late fusion: the mean of their probabilities)"
                                                     if len(args.checkpoint) > 1 else "")
        + (" (--online: the trained weights, not their average)" if args.online else ""),
        "data": str(args.data), "split": args.split,
        "num_videos": len(pred.indices), "num_failed": len(pred.failures),
        "failed": [{"path": p, "reason": r} for p, r in pred.failures],
        "clip_level": metrics["clip_level"], "video_level": metrics["video_level"],
        "views": views, "class_names": classes,
        "per_video": [{"path": samples[i].path, "label": samples[i].label, "class": classes[samples[i].label],
                       "frame_indices": fi, "crops": args.crops,
                       **({"span": samples[i].span.describe()} if samples[i].span else {})}
                      for i, fi in zip(pred.indices, pred.frame_indices)],
    }
    video_pred = pred.video_probs.argmax(1)
    predictions = [{"video": samples[i].describe(), "true": classes[int(t)], "predicted": classes[int(p)],
                    "confidence": round(float(pred.video_probs[k, p]), 6)}
                   for k, (i, t, p) in enumerate(zip(pred.indices, pred.labels, video_pred))]
    return report, predictions


def build_gallery(report: dict, predictions: list[dict], args: argparse.Namespace) -> str:
    """The report's gallery: mistakes and least confident correct videos, each with a strip of the
    frames the model saw (decoded again here, only for the videos shown)."""
    caps = GalleryCaps(per_pair=args.gallery_per_pair, max_mistakes=args.gallery_max,
                       correct_per_class=args.gallery_correct)
    mistakes, unsure = select_gallery(predictions, caps)
    items = {"mistake": [], "unsure": []}
    for kind, k in progress([("mistake", k) for k in mistakes] + [("unsure", k) for k in unsure],
                            desc="gallery"):
        p, video = predictions[k], report["per_video"][k]
        item = GalleryItem(kind, p["video"], p["true"], p["predicted"], p["confidence"])
        try:
            item.image, item.frames = read_strip(video["path"], video["frame_indices"], backend=args.decoder)
        except VideoDecodeError as err:
            item.note = err.reason
        items[kind].append(item)
    total = sum(p["true"] != p["predicted"] for p in predictions)
    note = (f"Each strip shows the centre frame of each clip the model saw (at most {STRIP_MAX_FRAMES} clips), "
            f"{STRIP_HEIGHT} px high; hover over a strip for its frame numbers.")
    return render_gallery(items["mistake"], items["unsure"], total_mistakes=total, caps=caps, strip_note=note)


def predict_each(args: argparse.Namespace, dist) -> tuple[list[Predictions | None], list, list[VideoSample], int]:
    """Every checkpoint's predictions of the same videos, one model at a time, each with its own preprocessing;
    (predictions (None off the main rank), checkpoints, videos, clips per video)."""
    parts, ckpts, samples, num_clips = [], [], None, args.clips
    for path in args.checkpoint:
        model, ckpt = load_model(path, dist.device, online=args.online)
        if ckpts and ckpt.classes != ckpts[0].classes:
            raise DataError(f"{path}: its classes {ckpt.classes} differ from {args.checkpoint[0]}'s "
                            f"{ckpts[0].classes}: only models of the same classes can be fused")
        num_clips = num_clips or ckpt.config.data.eval_clips
        mine = read_samples(args.data, args.split, ckpt.classes, Path(path).parent / "splits.json")
        if samples is not None and [s.describe() for s in mine] != [s.describe() for s in samples]:
            raise DataError(f"{args.data}: {path}'s run split it differently from {args.checkpoint[0]}'s: fuse "
                            f"models on a split folder (e.g. {args.data}/test) or on runs of the same split")
        samples = mine
        loader = build_eval_loader(samples, ckpt.preprocessing, num_clips=num_clips, num_crops=args.crops,
                                   batch_size=args.batch_size, num_workers=args.workers, rank=dist.rank,
                                   world_size=dist.world_size, device=dist.device, backend=args.decoder,
                                   decode_timeout=args.decode_timeout or None)
        log.info("evaluating %s on %d videos of %s (%s): %d clips x %d crops per video; %d process(es) on %s, %s",
                 path, len(samples), args.data, args.split, num_clips, args.crops, dist.world_size,
                 dist.device, f"backend {dist.backend}" if dist.backend else "no process group")
        parts.append(predict(model, loader, device=dist.device, num_clips=num_clips, num_crops=args.crops,
                             show_progress=dist.is_main))
        ckpts.append(ckpt)
        del model
    return parts, ckpts, samples, num_clips


def evaluate(args: argparse.Namespace, dist) -> Path | None:
    """Evaluate on every rank; rank 0 writes the report and returns its folder."""
    parts, ckpts, samples, num_clips = predict_each(args, dist)
    if not dist.is_main:
        return None
    pred, classes = fuse_predictions(parts), ckpts[0].classes
    if not pred.indices:
        raise DataError(f"none of the {len(samples)} videos could be decoded: "
                         + "; ".join(f"{p}: {r}" for p, r in pred.failures[:5]))
    geometry = [{k: v for k, v in c.preprocessing.as_dict().items() if k not in ("mean", "std")} for c in ckpts]
    views = {"clips": num_clips, "crops": args.crops, **geometry[0],
             **({"models": geometry} if len(ckpts) > 1 else {})}
    report, predictions = build_report(args, pred, samples, classes, views)
    out = Path(args.out) if args.out else Path(args.checkpoint[0]).parent / f"eval-{args.split}"
    gallery = "" if args.no_gallery else build_gallery(report, predictions, args)
    paths = write_report(out, report=report, class_names=classes, predictions=predictions, gallery_html=gallery)
    print(format_summary(report))
    if pred.failures:
        print(f"\n{len(pred.failures)} video(s) could not be decoded and are excluded (listed in report.json):")
        for p, r in pred.failures:
            print(f"  {p}: {r}")
    print(f"\nreport: {paths.get('report.html', out)}")
    return out


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    resolve_device(args.device)  # an unknown or absent device is a user error, before any process group
    dist = setup_distributed(args.device)
    logging.basicConfig(level=logging.INFO if dist.is_main else logging.WARNING,
                        format="%(levelname)s %(message)s", stream=sys.stdout)
    try:
        evaluate(args, dist)
        return 0
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
