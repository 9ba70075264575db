"""Long synthetic "match" recordings with annotated events: the worked example for segment lists.

Each recording is a sequence of events (a clip of one of the demo's motion classes, see
videoft.data.synthetic) separated by idle stretches (a scene with no ball, 1-3 s), like a long
recording of which an analyst annotated the actions. Written: `recordings/rec_NNN.mp4` and two
events tables `video,label,start,end` (seconds): `events_train.csv` for the first recordings and
`events_test.csv` for the held-out ones, as a team annotating some matches for testing would.
Deterministic for a given seed; only numpy, av and the standard library.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from videoft.data.synthetic import CLASSES, FPS, render_clip, render_idle, write_video

IDLE_SECONDS = (1.0, 3.0)
MARKER = ".complete"


def render_recording(rng: np.random.Generator, *, num_events: int, width: int,
                     height: int) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Frames [T, H, W, 3] uint8 of one recording and its events (label, start s, end s)."""
    parts, events, t = [], [], 0
    for _ in range(num_events):
        idle = render_idle(rng, width, height, int(round(rng.uniform(*IDLE_SECONDS) * FPS)))
        parts.append(idle)
        t += len(idle)
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        clip = render_clip(cls, rng, width, height)
        parts.append(clip)
        events.append((cls, t / FPS, (t + len(clip)) / FPS))
        t += len(clip)
    parts.append(render_idle(rng, width, height, int(round(rng.uniform(*IDLE_SECONDS) * FPS))))
    return np.concatenate(parts), events


def generate_recordings(out: str | Path, *, train: int = 16, test: int = 4, events_per_recording: int = 30,
                        seed: int = 0, width: int = 80, height: int = 60) -> Path:
    """Write the recordings and their events tables to `out` (nothing is rewritten when complete)."""
    out = Path(out)
    params = {"train": train, "test": test, "events_per_recording": events_per_recording, "seed": seed,
              "width": width, "height": height, "fps": FPS, "version": 1}
    if (out / MARKER).is_file() and json.loads((out / MARKER).read_text()) == params:
        return out
    shutil.rmtree(out / "recordings", ignore_errors=True)
    (out / "recordings").mkdir(parents=True)
    tables = {"train": [], "test": []}
    for r in range(train + test):
        rng = np.random.default_rng([seed, 7, r])
        frames, events = render_recording(rng, num_events=events_per_recording, width=width, height=height)
        name = f"recordings/rec_{r:03d}.mp4"
        write_video(out / name, frames, fps=FPS)
        tables["train" if r < train else "test"] += [(name, cls, start, end) for cls, start, end in events]
    for split, rows in tables.items():
        with open(out / f"events_{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["video", "label", "start", "end"])
            writer.writerows((v, cls, f"{a:.2f}", f"{b:.2f}") for v, cls, a, b in rows)
    (out / MARKER).write_text(json.dumps(params))
    return out
