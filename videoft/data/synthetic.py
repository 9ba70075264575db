"""Deterministic synthetic "sports-like" action videos (the product's demo data).

Four classes that can only be told apart by *motion*:

* ``bounce`` - a ball drops onto the ground line and bounces straight up and
  down, periodically (vertical motion only).
* ``roll``   - a ball rolls along the ground line back and forth between two
  walls, its two-colour pattern rotating at the rate implied by rolling without
  slipping (angle = distance / r) (horizontal motion only).
* ``throw``  - a ball is tossed back and forth between a low and a high point on
  a slightly curved diagonal path, never touching the ground (horizontal and
  vertical motion). Its horizontal speed has the same distribution as
  ``roll``'s.
* ``spin``   - a ball rests on the ground line, (almost) in place, and spins
  fast; the two-colour halves make the rotation visible (no translation).

Everything a model could cheat with (background, ground height, ball colours,
radius, direction, length, noise level) is drawn from the same distributions
for every class, and every class is symmetric under horizontal flips
(direction is random), so training with random flips is safe. The moving
classes stay in the middle three quarters of the width, so a square centre
crop of the 4:3 frame keeps the ball in view.

Version 4 made the classes learnable from random initialisation within the
demo's CPU budget (about five minutes on two cores): brighter balls on darker
backgrounds, faster motion, pure vertical / horizontal / diagonal motion, spin
on the ground. Version 3 (hover-spins, parabolic throws, drifting bounces,
slower crossings) was not learned by X3D-XS, R3D-18 or S3D within that budget.
Version 5 draws the same frames but encodes them with x264's C code (``asm=0``):
with its assembly, the same frames gave different files from run to run.

Frames are drawn with numpy only and encoded to H.264 mp4 with PyAV. All random
draws of one video come from one ``numpy.random.default_rng`` seeded with
``(seed, split, class, index)``, so a dataset is bit-for-bit reproducible.

This module deliberately imports only numpy, av and the standard library so
it can be used by tools and tests without torch or decord.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CLASSES: tuple[str, ...] = ("bounce", "roll", "spin", "throw")  # sorted
SPLITS: tuple[str, ...] = ("train", "val", "test")
FPS = 25
MIN_FRAMES = 32
MAX_FRAMES = 64
BALL_RADIUS = (0.11, 0.17)  # fraction of the frame height
CROSS_FRAMES = (14.0, 22.0)  # frames a rolling/thrown ball takes from wall to wall
BOUNCE_FRAMES = (14.0, 24.0)  # frames per bounce (ground contact to ground contact)
COMPLETE_MARKER = ".complete"

_SPLIT_ID = {"train": 0, "val": 1, "test": 2}


# --------------------------------------------------------------------------- #
# Encoding
# --------------------------------------------------------------------------- #
def write_video(
    path: str | os.PathLike,
    frames_uint8_THWC: np.ndarray,
    fps: int = FPS,
    *,
    crf: int = 20,
    preset: str = "veryfast",
    gop: int = 16,
) -> None:
    """Encode ``frames`` (T, H, W, 3 uint8 RGB) to an H.264/yuv420p mp4 at ``path``.

    A short GOP (``gop`` frames, no scene-cut keyframes) keeps random-access
    seeking cheap for clip samplers; ``veryfast`` keeps encoding quick.
    H and W must be even (a yuv420p requirement).
    """
    frames = np.asarray(frames_uint8_THWC)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("cannot write a video with zero frames")
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even width and height, got {w}x{h}")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(int(fps), 1))
        stream.width = w
        stream.height = h
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, int(fps))
        stream.options = {
            "preset": preset,
            "crf": str(crf),
            "g": str(gop),
            "keyint_min": str(gop),
            "sc_threshold": "0",
            # One encoder thread: these frames are tiny, so x264's thread start-up
            # costs more than it saves; parallelism comes from encoding many files.
            "threads": "1",
            # x264's assembly gave different bytes (and pixels) for the same frames depending
            # on where the input buffers happened to lie in memory (about 1 file in 15 changed
            # between two runs); its C code is deterministic and fast enough at these sizes.
            "x264-params": "asm=0",
        }
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --------------------------------------------------------------------------- #
# Drawing
# --------------------------------------------------------------------------- #
def _background(rng: np.random.Generator, h: int, w: int, ground_y: int) -> np.ndarray:
    """A static (H, W, 3) float32 background: colour + gradient + blobs + texture + floor + line."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(15, 130, 3).astype(np.float32)  # darker than any ball (a lit ball on a pitch)
    img = np.broadcast_to(base, (h, w, 3)).copy()

    # Linear gradient in a random direction.
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ang) * (xx / w - 0.5) + np.sin(ang) * (yy / h - 0.5))[..., None]
    img += ramp * rng.uniform(-50, 50, 3).astype(np.float32)

    # Soft colour blobs (some ball-sized, so "a round thing" alone is not the ball).
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        s = rng.uniform(0.06, 0.3) * h
        amp = rng.uniform(-50, 50, 3).astype(np.float32)
        g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        img += g[..., None] * amp

    # Floor region below the ground line with a different tint, then the line itself.
    floor_tint = rng.uniform(-60, 60, 3).astype(np.float32)
    img[ground_y:] += floor_tint
    line_col = rng.uniform(0, 255, 3).astype(np.float32)
    thick = max(1, int(round(rng.uniform(0.012, 0.025) * h)))
    img[ground_y : ground_y + thick] = line_col

    # Static fine texture (low-res noise upsampled by repetition).
    cell = int(rng.integers(2, 6))
    tex = rng.normal(0, rng.uniform(2, 7), ((h + cell - 1) // cell, (w + cell - 1) // cell, 1))
    tex = np.repeat(np.repeat(tex, cell, 0), cell, 1)[:h, :w].astype(np.float32)
    img += tex
    return np.clip(img, 0, 255)


def _draw_ball(
    frame: np.ndarray,
    cx: float,
    cy: float,
    r: float,
    theta: float,
    col_a: np.ndarray,
    col_b: np.ndarray,
) -> None:
    """Draw an anti-aliased two-colour ball in place on an (H, W, 3) frame (int or float).

    The ball is split into two halves by a diameter at angle ``theta``; a thin
    dark band along the split makes the orientation readable even when the two
    colours are similar in luma.
    """
    h, w, _ = frame.shape
    x0, x1 = max(int(np.floor(cx - r - 1)), 0), min(int(np.ceil(cx + r + 2)), w)
    y0, y1 = max(int(np.floor(cy - r - 1)), 0), min(int(np.ceil(cy + r + 2)), h)
    if x0 >= x1 or y0 >= y1:
        return
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    d = np.sqrt(dx * dx + dy * dy)
    cover = np.clip(r + 0.5 - d, 0.0, 1.0)[..., None]
    proj = dx * np.cos(theta) + dy * np.sin(theta)  # signed distance to the split line
    side = np.clip(proj + 0.5, 0.0, 1.0)[..., None]
    ball = side * col_a + (1.0 - side) * col_b
    band = np.clip(1.5 - np.abs(proj) / max(r * 0.12, 0.6), 0.0, 1.0)[..., None]
    ball = ball * (1.0 - 0.6 * band)
    region = frame[y0:y1, x0:x1].astype(np.float32)
    region = region * (1.0 - cover) + cover * ball
    frame[y0:y1, x0:x1] = np.rint(region) if frame.dtype.kind in "iu" else region


def _trajectory(
    cls: str,
    rng: np.random.Generator,
    n: int,
    w: int,
    h: int,
    r: float,
    ground_y: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame ball centre (x, y) and pattern angle for one video of class ``cls``.

    Heights are fractions of ``avail`` (the free height above the resting
    position), and ``roll`` and ``throw`` share one crossing-speed law, so
    neither frame geometry nor speed alone identifies a class.
    """
    t = np.arange(n, dtype=np.float64)
    rest_y = ground_y - r  # centre height when the ball touches the ground
    avail = max(rest_y - (r + 2.0), 2.0)  # usable height above the resting position
    direction = 1.0 if rng.random() < 0.5 else -1.0
    theta0 = rng.uniform(0, 2 * np.pi)
    if cls == "bounce":
        return _bounce(rng, t, w, rest_y, avail, theta0)
    if cls in ("roll", "throw"):
        return _back_and_forth(cls, rng, t, w, r, rest_y, avail, direction, theta0)
    if cls == "spin":
        return _spin(rng, t, w, rest_y, direction, theta0)
    raise ValueError(f"unknown class {cls!r}")


def _bounce(rng: np.random.Generator, t: np.ndarray, w: int, rest_y: float, avail: float,
            theta0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Straight up and down at a fixed x, periodically touching the ground."""
    n = len(t)
    period = rng.uniform(BOUNCE_FRAMES[0], BOUNCE_FRAMES[1])
    height = rng.uniform(0.6, 0.95) * avail
    phase = rng.uniform(0, period)
    u = ((t + phase) % period) / period  # 0..1 within one bounce; ground at 0 and 1
    y = rest_y - height * 4.0 * u * (1.0 - u)
    x = np.full(n, rng.uniform(0.3, 0.7) * w)
    omega = rng.uniform(-0.05, 0.05)
    return x, y, theta0 + omega * t


def _back_and_forth(cls: str, rng: np.random.Generator, t: np.ndarray, w: int, r: float, rest_y: float,
                    avail: float, direction: float, theta0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """roll (on the ground) and throw (a diagonal in the air) between two walls, same speed law."""
    # The ball goes back and forth between two walls at 1/8 and 7/8 of the width
    # (a triangle wave), so it is in view in every frame and inside a square centre
    # crop: a clip that shows no ball would teach nothing.
    n = len(t)
    period = rng.uniform(CROSS_FRAMES[0], CROSS_FRAMES[1])
    phase = (t / period + rng.uniform(0, 2)) % 2.0
    u = np.where(phase < 1.0, phase, 2.0 - phase)  # 0..1..0 across the frame
    if direction < 0:
        u = 1.0 - u
    x = 0.125 * w + r + u * (0.75 * w - 2 * r)
    if cls == "roll":
        y = np.full(n, rest_y) + rng.normal(0, 0.15, n)
        return x, y, theta0 + x / r  # rolling without slipping
    high_y = rest_y - rng.uniform(0.8, 1.0) * avail
    low_y = rest_y - rng.uniform(0.1, 0.25) * avail  # the low end stays above the ground
    up = u if rng.random() < 0.5 else 1.0 - u  # which wall is the high one
    sag = rng.uniform(0.0, 0.15) * avail  # the path bows up a little, like a lob
    y = low_y + (high_y - low_y) * up - sag * 4.0 * u * (1.0 - u)
    return x, y, theta0 + rng.uniform(-0.08, 0.08) * t


def _spin(rng: np.random.Generator, t: np.ndarray, w: int, rest_y: float, direction: float,
          theta0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """On the ground, (almost) in place, spinning fast."""
    n = len(t)
    x = np.full(n, rng.uniform(0.3, 0.7) * w)
    y = np.full(n, rest_y)
    jit = rng.uniform(0.0, 0.6)
    x = x + rng.normal(0, jit, n)
    y = np.minimum(y + rng.normal(0, jit, n), rest_y)
    omega = direction * rng.uniform(0.35, 1.1)  # rad/frame; < pi/2, so < pi per step at stride 2
    return x, y, theta0 + omega * t


def render_clip(cls: str, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Render one random video of class ``cls`` as (T, H, W, 3) uint8 frames, 32 <= T <= 64."""
    n = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    ground_y = int(round(rng.uniform(0.68, 0.9) * height))
    bg = _background(rng, height, width, ground_y)
    r = float(rng.uniform(*BALL_RADIUS) * height)
    col_a = rng.uniform(200, 255, 3)  # a bright ball ...
    col_b = col_a * rng.uniform(0.35, 0.6)  # ... with a darker half, so spinning is visible
    x, y, ang = _trajectory(cls, rng, n, width, height, r, ground_y)

    # Sensor noise: per-pixel, per-frame, grey (same on all channels); uniform
    # integers are ~3x cheaper to draw than normals and look the same after x264.
    amp = int(rng.integers(0, 3))
    noise = rng.integers(-amp, amp + 1, (n, height, width, 1), dtype=np.int16)

    frames = np.empty((n, height, width, 3), dtype=np.int16)
    frames[:] = np.rint(bg).astype(np.int16)
    for i in range(n):
        _draw_ball(frames[i], float(x[i]), float(y[i]), r, float(ang[i]), col_a, col_b)
    frames += noise
    np.clip(frames, 0, 255, out=frames)
    return frames.astype(np.uint8)


def render_idle(rng: np.random.Generator, width: int, height: int, num_frames: int) -> np.ndarray:
    """A scene with no ball (the pause between actions of a long recording): (T, H, W, 3) uint8."""
    ground_y = int(round(rng.uniform(0.68, 0.9) * height))
    bg = np.rint(_background(rng, height, width, ground_y)).astype(np.int16)
    amp = int(rng.integers(0, 3))
    noise = rng.integers(-amp, amp + 1, (num_frames, height, width, 1), dtype=np.int16)
    return np.clip(bg[None] + noise, 0, 255).astype(np.uint8)


def clip_rng(seed: int, split: str, cls: str, index: int) -> np.random.Generator:
    """The generator for one video: independent streams per (seed, split, class, index)."""
    return np.random.default_rng([int(seed), _SPLIT_ID.get(split, 9), CLASSES.index(cls), int(index)])


# --------------------------------------------------------------------------- #
# Dataset
# --------------------------------------------------------------------------- #
def dataset_params(per_split_counts: Mapping[str, int], seed: int, width: int, height: int) -> dict:
    """The parameters recorded in the completion marker (and compared on reuse)."""
    return {
        "generator": "videoft.data.synthetic",
        "version": 5,
        "classes": list(CLASSES),
        "per_split_counts": {s: int(c) for s, c in per_split_counts.items()},
        "seed": int(seed),
        "width": int(width),
        "height": int(height),
        "fps": FPS,
    }


def read_marker(out: str | os.PathLike) -> dict | None:
    """The parameters of a complete dataset at ``out``, or None if it is not complete."""
    marker = Path(out) / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


_README = """# Synthetic demo dataset ("sports-like" ball actions)

Generated by `videoft.data.synthetic.generate_dataset` (CLI: `tools/make_demo_dataset.py`)
with seed {seed}, {width}x{height} pixels, {fps} fps, H.264 (libx264, yuv420p, GOP 16),
{lo}-{hi} frames per video. Counts per class: {counts}.

Classes differ only by **motion**; background (colour, gradient, blobs, texture,
ground-line height), ball colours, radius, start position, direction, length and
sensor noise are drawn from the same distributions for every class, and every class
is symmetric under horizontal flips.

| class  | motion |
|--------|--------|
| bounce | ball falls onto the ground line and bounces straight up and down (period 14-24 frames) |
| roll   | ball rolls along the ground line back and forth between two walls (14-22 frames wall to wall); its two-colour pattern turns at the rolling rate |
| spin   | ball rests on the ground line (almost) in place and spins fast (20-63 deg/frame) |
| throw  | ball is tossed back and forth on a slightly curved diagonal between a low and a high point (same speeds as roll), never touching the ground |

Layout: `{{train,val,test}}/<class>/<class>_NNNN.mp4`; `classes.txt` lists the classes.
The generator is deterministic: the same parameters give bit-identical files.

Every video has its own random look, so a model trained from scratch on few videos
memorises looks instead of learning motion; ~150 training videos per class let it
generalise. Clips of 8 frames at stride 2 (0.6 s) show every class's motion.
"""


def _write_one(path: str, seed: int, split: str, cls: str, index: int, width: int, height: int) -> None:
    """Render and encode one video (a top-level function so worker processes can run it)."""
    write_video(path, render_clip(cls, clip_rng(seed, split, cls, index), width, height), fps=FPS)


def generate_dataset(
    out: str | os.PathLike,
    *,
    per_split_counts: Mapping[str, int],
    seed: int = 0,
    width: int = 160,
    height: int = 120,
    overwrite: bool = False,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the synthetic dataset to ``out`` and return its path.

    Files go to a temporary sibling folder that is renamed to ``out`` only after
    everything (the ``.complete`` marker last) is written, so an interrupted run
    never leaves a half dataset that looks complete. If ``out`` already exists
    it is replaced when ``overwrite`` is true, else FileExistsError is raised.
    ``workers`` > 1 renders/encodes videos in that many spawned processes (the
    files are identical either way). ``progress(done, total)`` is called after
    each video if given.
    """
    out = Path(out)
    _check_arguments(out, per_split_counts, width, height, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would survive the rename; mkdir honours the umask.
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()
    try:
        jobs = [
            (split, cls, i)
            for split in SPLITS
            for cls in CLASSES
            for i in range(int(per_split_counts.get(split, 0)))
        ]
        for split in SPLITS:
            if int(per_split_counts.get(split, 0)) > 0:
                for cls in CLASSES:
                    (tmp / split / cls).mkdir(parents=True, exist_ok=True)
        tasks = [
            (str(tmp / split / cls / f"{cls}_{i:04d}.mp4"), int(seed), split, cls, i, width, height)
            for split, cls, i in jobs
        ]
        _run_tasks(tasks, workers, progress)
        _write_metadata(tmp, dataset_params(per_split_counts, seed, width, height))
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_arguments(out: Path, per_split_counts: Mapping[str, int], width: int, height: int,
                     overwrite: bool) -> None:
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError(f"width and height must be even and >= 16, got {width}x{height}")
    unknown = set(per_split_counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected a subset of {SPLITS}")
    if any(int(c) < 0 for c in per_split_counts.values()):
        raise ValueError("per-split counts must be >= 0")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")


def _run_tasks(tasks: list[tuple], workers: int, progress: Callable[[int, int], None] | None) -> None:
    """Render and encode every video, in `workers` spawned processes when > 1."""
    if workers > 1 and len(tasks) > 1:
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch/OpenMP threads exist
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx) as pool:
            futures = [pool.submit(_write_one, *task) for task in tasks]
            for done, fut in enumerate(as_completed(futures), 1):
                fut.result()
                if progress is not None:
                    progress(done, len(tasks))
    else:
        for done, task in enumerate(tasks, 1):
            _write_one(*task)
            if progress is not None:
                progress(done, len(tasks))


def _write_metadata(folder: Path, params: dict) -> None:
    """classes.txt, README.md, and the completion marker last."""
    (folder / "classes.txt").write_text("".join(c + "\n" for c in sorted(CLASSES)))
    (folder / "README.md").write_text(
        _README.format(
            seed=params["seed"], width=params["width"], height=params["height"], fps=FPS, lo=MIN_FRAMES,
            hi=MAX_FRAMES, counts=", ".join(f"{s} {params['per_split_counts'].get(s, 0)}" for s in SPLITS),
        )
    )
    (folder / COMPLETE_MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`, replacing whatever was there (the old folder is removed after the swap)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
