"""tools/benchmark.py's suite: every figure a ratio of two contenders measured in the same run.

Figures (median of repetitions, with min and max): training and 10-clip evaluation sampling against
pytorchvideo and the decode lower bound; raw files against each prepared format (with disk size);
worker memory over many clips against pytorchvideo's; end to end against compute only; a frozen
against a full training step. Generated videos by default (320x240 and 1280x720, long and short
GOP); real ones with `--data DIR`.
"""
from __future__ import annotations

import logging
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from videoft.bench import sampling
from videoft.bench.e2e import SHORT_SIDE as E2E_SHORT_SIDE
from videoft.bench.sampling import Setup
from videoft.data.dataset import VideoSample, scan_class_folder
from videoft.data.prepare import PrepareParams
from videoft.data.prepare_dataset import prepare_dataset

log = logging.getLogger("videoft")


@dataclass(frozen=True)
class SuiteOptions:
    """How big the run is (`quick`: seconds, for CI; every figure still produced)."""

    repeats: int = 3
    num_videos: int = 48           # per dataset, sampled from --data or generated
    hd_videos: int = 16
    hd_eval_videos: int = 4        # HD 10-clip evaluation: pytorchvideo decodes every frame of each window set
    frames: int = 150              # generated videos: frames each (25 fps)
    rss_clips: int = 2000
    e2e_steps: int = 20
    formats: tuple[str, ...] = ("h264", "mjpeg", "jpeg", "uint8")
    step_repeats: int = 5
    gops: tuple[int, ...] = (250, 16)  # generated videos: frames between keyframes (long, short)
    prepared_pass_clips: int = 384  # raw vs prepared: clips per timed pass (prepared loaders run at 500+ clips/s)
    # training sampling (against pytorchvideo and the decode lower bound): clips per timed pass. 32 (4 batches,
    # timed from the first: 3) flattered videoft on HD: 0.78x of the lower bound at GOP 16, 0.73x with 96
    sampling_pass_clips: int = 96
    # (backbone, clip_len, crop) for the CPU step-format figure (train.amp / train.channels_last = auto)
    step_models: tuple[tuple[str, int, int], ...] = (("s3d", 8, 64), ("x3d_xs", 4, 160), ("r2plus1d_18", 8, 64))

    @classmethod
    def quick(cls) -> SuiteOptions:
        return cls(repeats=1, num_videos=6, hd_videos=4, hd_eval_videos=1, frames=24, rss_clips=12, e2e_steps=2,
                   step_repeats=1, gops=(16,), prepared_pass_clips=0, sampling_pass_clips=0,
                   step_models=(("x3d_xs", 2, 32),))


def generate_videos(root: Path, count: int, *, width: int, height: int, gop: int, frames: int) -> Path:
    """`count` H.264 clips in two class folders: a textured scene panning at a per-video speed (the encoder
    has real motion to code); `gop` frames between keyframes (250: one keyframe every 10 s, as
    broadcast and phone footage)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))  # blocky texture, compresses like real scenes
    for i in range(count):
        path = root / f"class{i % 2}" / f"v_class{i % 2}_g{i // 2:02d}_c01.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        dx, dy = 1 + i % 3, i % 2
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "preset": "veryfast",
                              "crf": "23"}
            for t in range(frames):
                frame = np.roll(texture, (t * dy, t * dx), axis=(0, 1))[:height, :width]
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
    return root


def _figure(name: str, ours: dict, baseline: dict, *, unit: str, goal: str = "", higher_is_better: bool = True,
            **extra: Any) -> dict[str, Any]:
    ratio = ours["median"] / baseline["median"] if baseline["median"] else float("nan")
    return {"figure": name, "ratio": ratio, "ours": ours, "baseline": baseline, "unit": unit, "goal": goal,
            "higher_is_better": higher_is_better, **extra}


def _samples(root: Path, count: int) -> list[VideoSample]:
    rows = scan_class_folder(root)
    classes = sorted({c for _, c in rows})
    rows = random.Random(0).sample(rows, min(count, len(rows)))
    return [VideoSample(p, classes.index(c)) for p, c in sorted(rows)]


def _enough(samples: list[VideoSample], s: Setup, min_clips: int = 0) -> list[VideoSample]:
    """The samples repeated until a pass holds at least four batches and `min_clips` clips (a pass is timed
    from its first batch: a pass of a few batches at hundreds of clips/s measures the loader's ramp-up)."""
    return samples * max(1, -(-max(4 * s.batch, min_clips) // len(samples)))


def sampling_figures(label: str, samples: list[VideoSample], s: Setup, opts: SuiteOptions,
                     eval_videos: int | None = None) -> list[dict]:
    """Training and evaluation sampling against pytorchvideo and the decode lower bound (evaluation on the
    first `eval_videos` videos: pytorchvideo decodes every frame of each 10-clip window set, slow on HD)."""
    r, train = opts.repeats, _enough(samples, s, opts.sampling_pass_clips)
    ours = sampling.clips_per_second(lambda: sampling.videoft_train(train, s), r)
    two = sampling.clips_per_second(lambda: sampling.videoft_train(train, s, train_clips=2), r, clips_per_item=2)
    ptv = sampling.clips_per_second(lambda: sampling.pytorchvideo_loader(train, s, train=True), r)
    bound = sampling.clips_per_second(lambda: sampling.lower_bound_loader(train, s), r)
    ev = samples[:eval_videos] * 2 if eval_videos else samples
    ours_eval = sampling.clips_per_second(lambda: sampling.videoft_eval(ev, s), r, clips_per_item=s.eval_clips)
    ptv_eval = sampling.clips_per_second(lambda: sampling.pytorchvideo_loader(ev, s, train=False), r)
    return [
        _figure(f"{label}: training sampling vs pytorchvideo", ours, ptv, unit="clips/s", goal=">= 1.3"),
        _figure(f"{label}: training sampling vs decode lower bound", ours, bound, unit="clips/s", goal=">= 0.8"),
        _figure(f"{label}: training sampling, 2 clips per video decode (data.train_clips=2) vs 1", two, ours,
                unit="clips/s"),
        _figure(f"{label}: 10-clip eval sampling vs pytorchvideo", ours_eval, ptv_eval, unit="clips/s",
                goal=">= 3"),
    ]


def prepared_figures(label: str, root: Path, samples: list[VideoSample], s: Setup, opts: SuiteOptions,
                     work: Path, goal: str) -> list[dict]:
    """Raw files against each prepared format: training sampling and disk size."""
    raw_bytes = sum(os.path.getsize(x.path) for x in samples)
    samples = _enough(samples, s, opts.prepared_pass_clips)
    raw = sampling.clips_per_second(lambda: sampling.videoft_train(samples, s), opts.repeats)
    out = []
    for fmt in opts.formats:
        dst = work / f"{root.name}-{fmt}"
        summary = prepare_dataset(root, dst, PrepareParams(format=fmt, short_side=s.short_side), workers=s.workers,
                                  show_progress=False)
        copies = [VideoSample(str(dst / Path(x.path).relative_to(root).with_suffix(
            ".mp4" if fmt == "h264" else ".avi" if fmt == "mjpeg" else ".frames")), x.label) for x in samples]
        rate = sampling.clips_per_second(lambda c=copies: sampling.videoft_train(c, s), opts.repeats)
        size = sum(_disk(Path(c.path)) for c in set(copies))
        out.append(_figure(f"{label}: prepared {fmt} vs raw, training sampling", rate, raw, unit="clips/s",
                           goal=goal, disk_ratio=size / raw_bytes, disk_mb=size / 1e6, raw_disk_mb=raw_bytes / 1e6,
                           prepare_s=summary.seconds))
    return out


def _disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def memory_figures(label: str, samples: list[VideoSample], s: Setup, opts: SuiteOptions) -> list[dict]:
    """Worker memory over >= rss_clips clips: training against pytorchvideo's, evaluation against training.
    Compared on USS (a forked worker's own memory); RSS, which also counts the pages shared with the
    process that forked it (and so grows with that process), is kept beside it."""
    ours = _fresh_process_memory("videoft_train", samples, s, opts.rss_clips)
    ptv = _fresh_process_memory("pytorchvideo_train", samples, s, opts.rss_clips)
    ours_eval = _fresh_process_memory("videoft_eval", samples, s, opts.rss_clips)

    def peak(m: dict) -> dict:
        return {"median": m["peak_uss_gb"], "min": m["first_tenth_gb"], "max": m["last_tenth_gb"]}
    return [
        _figure(f"{label}: worker USS, training vs pytorchvideo", peak(ours), peak(ptv), unit="GB (peak USS)",
                goal="<= 0.5", higher_is_better=False, growth=ours["growth"], baseline_growth=ptv["growth"],
                clips=ours["clips"], rss_gb=ours["peak_gb"], baseline_rss_gb=ptv["peak_gb"]),
        _figure(f"{label}: worker USS, 10-clip eval vs training", peak(ours_eval), peak(ours), unit="GB (peak USS)",
                goal="<= 1.0", higher_is_better=False, growth=ours_eval["growth"], clips=ours_eval["clips"],
                rss_gb=ours_eval["peak_gb"], baseline_rss_gb=ours["peak_gb"]),
        {"figure": f"{label}: worker USS growth over {ours['clips']} training clips (last / first tenth)",
         "ratio": ours["growth"], "unit": "", "goal": "<= 1.1", "higher_is_better": False,
         "ours": peak(ours), "baseline": peak(ours)},
    ]


def _fresh_process_memory(contender: str, samples: list[VideoSample], s: Setup, min_clips: int) -> dict:
    """sampling.worker_rss of one contender's loader, built in a new Python process: a forked worker's
    private memory grows with what its parent holds (Python's GC writes to every object it inherited), so
    each contender's workers are forked from a parent that built only that loader."""
    import json
    import subprocess
    import sys

    args = json.dumps({"contender": contender, "samples": [(x.path, x.label) for x in samples],
                       "setup": s.__dict__, "min_clips": min_clips})
    code = ("import json, sys; from videoft.bench.suite import _memory_main; "
            "print(json.dumps(_memory_main(json.loads(sys.stdin.read()))))")
    proc = subprocess.run([sys.executable, "-c", code], input=args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {contender} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_main(args: dict) -> dict:
    samples = [VideoSample(path, label) for path, label in args["samples"]]
    return _memory_of(args["contender"], samples, Setup(**args["setup"]), args["min_clips"])


def _memory_of(contender: str, samples: list[VideoSample], s: Setup, min_clips: int) -> dict:
    make, clips_per_item = {  # the loader, and the clips in each of its items
        "videoft_train": (lambda: sampling.videoft_train(samples, s), 1),
        "pytorchvideo_train": (lambda: sampling.pytorchvideo_loader(samples, s, train=True), 1),
        "videoft_eval": (lambda: sampling.videoft_eval(samples, s), s.eval_clips),
    }[contender]
    return sampling.worker_rss(make, min_clips, clips_per_item=clips_per_item)


def compute_figures(data: Path, prepared: dict[str, Path], opts: SuiteOptions, s: Setup) -> list[dict]:
    """End to end (raw and prepared) against compute only; frozen against full training step."""
    from videoft.bench.e2e import end_to_end, step_speed

    out = []
    for label, root in (("raw", data), *((f"prepared {fmt}", path) for fmt, path in prepared.items())):
        e2e = end_to_end(root, steps=opts.e2e_steps, repeats=opts.repeats, overrides=(f"data.batch_size={s.batch}",))
        out.append(_figure(f"end to end ({label}) vs compute only, S3D 8x64x64 batch {s.batch}", e2e["end_to_end"],
                           e2e["compute_only"], unit="clips/s", goal=">= 0.9", step_format=e2e["step_format"]))
    out += step_format_figures(opts)
    full, frozen = step_speed(repeats=opts.step_repeats, batch=s.batch)
    out.append(_figure("frozen (all but last stage + head) vs full training step, X3D-XS 8x64x64", frozen, full,
                       unit="clips/s"))
    return out


def step_format_figures(opts: SuiteOptions, batch: int = 8) -> list[dict]:
    """train.amp/channels_last = auto on this CPU: the training-step speed of the format the recipe picks (its
    own measurement, at batch 4, cache off) against the fastest fixed format whose gradient agrees with plain
    fp32's (timed here at `batch`); every format's speed and gradient error are kept in the figure."""
    import tempfile

    from videoft.engine.autotune import (
        GRADIENT_TOLERANCE,
        StepFormat,
        candidates,
        choose_step_format,
        cpu_has_native_bf16,
        gradient_error,
        measure_step,
    )
    from videoft.models.classifier import build_classifier

    out = []
    for backbone, clip_len, crop in opts.step_models:
        model = build_classifier(backbone, 10, clip_len=clip_len, crop_size=crop, dropout=0.0)
        options = candidates("auto", "auto", native_bf16=cpu_has_native_bf16())
        runs = {f: [measure_step(model, f, batch=batch, clip_len=clip_len, crop=crop, num_classes=10)
                    for _ in range(opts.step_repeats)] for f in options}
        speeds = {f: [batch / m.seconds for m in ms] for f, ms in runs.items()}
        errors = {f: gradient_error(runs[f][0].gradient, runs[StepFormat(None, False)][0].gradient) for f in options}
        with tempfile.TemporaryDirectory() as cache:  # a fresh choice, as on a first run
            choice = choose_step_format(model, amp_mode="auto", channels_last_mode="auto", backbone=backbone,
                                        batch=min(4, batch), clip_len=clip_len, crop=crop, num_classes=10,
                                        frozen_stages=0, cache_file=Path(cache) / "autotune.json")
        safe = [f for f in options if errors[f] <= GRADIENT_TOLERANCE.get(f.amp_dtype, 0.0)]
        best = max(safe, key=lambda f: statistics.median(speeds[f]))
        out.append(_figure(f"CPU step format auto ({choice.name}) vs best correct fixed ({best.name}), {backbone} "
                           f"{clip_len}x{crop}x{crop}", _stats(speeds[choice]), _stats(speeds[best]),
                           unit="clips/s", goal=">= 1.0",
                           fixed={f.name: {"clips_s": statistics.median(speeds[f]), "gradient_error": errors[f]}
                                  for f in options}))
    return out


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_suite(data: str | None, work: Path, opts: SuiteOptions, s: Setup = Setup(),
              partial: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """All figures; `data` (a class folder) replaces the generated 320x240 videos when given.
    `partial(result so far)` is called after each group of figures (a long run keeps what it measured)."""
    start = time.perf_counter()
    load = [os.getloadavg()[0]]
    datasets: list[tuple[str, Path, int, str]] = []
    if data:
        datasets.append((f"real ({Path(data).name})", Path(data), opts.num_videos, ">= 5"))
    else:
        for gop in opts.gops:
            root = generate_videos(work / f"sd-gop{gop}", opts.num_videos, width=320, height=240, gop=gop,
                                   frames=opts.frames)
            datasets.append((f"320x240 GOP {gop}", root, opts.num_videos, ">= 5"))
    for gop in opts.gops:
        root = generate_videos(work / f"hd-gop{gop}", opts.hd_videos, width=1280, height=720, gop=gop,
                               frames=opts.frames)
        datasets.append((f"1280x720 GOP {gop}", root, opts.hd_videos, ">= 10"))
    figures: list[dict] = []

    def result() -> dict[str, Any]:
        load.append(os.getloadavg()[0])
        out = {"figures": figures, "setup": s.__dict__, "options": opts.__dict__, "cpu": _cpu_name(),
               "seconds": time.perf_counter() - start, "cores": os.cpu_count(),
               "load_1min": {"median": statistics.median(load), "min": min(load), "max": max(load)}}
        if partial is not None:
            partial(out)
        return out
    for label, root, count, goal in datasets:
        samples = _samples(root, count)
        log.info("benchmark: %s (%d videos)", label, len(samples))
        figures += sampling_figures(label, samples, s, opts,
                                    eval_videos=opts.hd_eval_videos if "1280x720" in label else None)
        result()
        figures += prepared_figures(label, root, samples, s, opts, work, goal)
        result()
    first_label, first_root, first_count, _ = datasets[0]
    figures += memory_figures(first_label, _samples(first_root, first_count), s, opts)
    result()
    prepared = {}
    for fmt in ("h264", "jpeg"):  # copies at the short side end_to_end trains at, as a user would make them
        if fmt in opts.formats:
            prepared[fmt] = work / f"{first_root.name}-e2e-{fmt}"
            prepare_dataset(first_root, prepared[fmt], PrepareParams(format=fmt, short_side=E2E_SHORT_SIDE),
                            workers=s.workers, show_progress=False)
    figures += compute_figures(first_root, prepared, opts, s)
    return result()


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def format_table(result: dict[str, Any]) -> str:
    """The figures as a table, ratios first."""
    lines = [f"{'ratio':>7}  {'goal':>7}  {'figure':<72} {'ours (min-max)':>24}  {'baseline (min-max)':>24}  unit"]
    for f in result["figures"]:
        ours, base = f["ours"], f["baseline"]
        extra = f"  disk {f['disk_ratio']:.2f}x ({f['disk_mb']:.0f} MB)" if "disk_ratio" in f else ""
        lines.append(f"{f['ratio']:>6.2f}x  {f['goal']:>7}  {f['figure']:<72} "
                     f"{_cell(ours):>24}  {_cell(base):>24}  {f['unit']}{extra}")
    load = result["load_1min"]
    lines.append(f"({result['cores']} cores, {result['cpu']}; 1-min load {load['min']:.1f}-{load['max']:.1f} "
                 f"during the run; {result['seconds']:.0f} s)")
    return "\n".join(lines)


def _cell(stats: dict) -> str:
    return f"{stats['median']:.3g} ({stats['min']:.3g}-{stats['max']:.3g})"
