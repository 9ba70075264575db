"""tools/infer.py and videoft.inference: top-k predictions, sliding-window timelines, bad files.

Uses the controlled checkpoint (tool_helpers.py): a clip of bravo-grey is predicted bravo,
a clip of delta-grey delta, each with probability 1 / (1 + 3 e^-10).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from videoft.inference import Predictor, Segment, merge_segments

from .tool_helpers import BRIGHTNESS, CLASSES, CLIP_FRAMES, FPS, LOGIT_SCALE, load_tool, write_grey_video

ONE_HOT_PROB = 1 / (1 + 3 * math.exp(-LOGIT_SCALE))


@pytest.fixture(scope="module")
def infer():
    return load_tool("infer")


@pytest.fixture(scope="module")
def predictor(controlled_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(controlled_checkpoint)  # as documented: the default device


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """bravo / delta: 20 grey frames; long: 6 s at 25 fps, bravo for 3 s then delta; corrupt: text."""
    root = tmp_path_factory.mktemp("infer")
    (root / "corrupt.mp4").write_text("not a video at all\n")
    return {
        "bravo": write_grey_video(root / "bravo.mp4", [BRIGHTNESS["bravo"]] * 20),
        "delta": write_grey_video(root / "delta.mp4", [BRIGHTNESS["delta"]] * 20),
        "long": write_grey_video(root / "long.mp4", [BRIGHTNESS["bravo"]] * 75 + [BRIGHTNESS["delta"]] * 75),
        "corrupt": root / "corrupt.mp4",
    }


def test_predict_returns_sorted_topk(predictor, videos):
    result = predictor.predict(videos["bravo"], topk=3)
    labels, probs = zip(*result["top"])
    assert len(labels) == 3 and len(set(labels)) == 3 and set(labels) <= set(CLASSES)
    assert list(probs) == sorted(probs, reverse=True)
    assert sum(probs) <= 1 + 1e-6
    assert labels[0] == "bravo" and probs[0] == pytest.approx(ONE_HOT_PROB, abs=1e-4)
    assert result["frame_indices"] == CLIP_FRAMES  # the run's 3 eval clips over 20 frames
    assert result["num_frames"] == 20 and result["duration"] == pytest.approx(20 / FPS)
    everything = predictor.predict(videos["delta"], topk=10)["top"]  # k above the class count
    assert [label for label, _ in everything][0] == "delta" and len(everything) == len(CLASSES)
    assert sum(p for _, p in everything) == pytest.approx(1.0, abs=1e-5)


def test_timeline_windows_cover_the_video(infer, controlled_checkpoint, videos, capsys, tmp_path):
    table = tmp_path / "timeline.csv"
    rc = infer.main([str(controlled_checkpoint), str(videos["long"]), "--window", "1", "--stride", "0.5",
                     "--json", "--csv", str(table)])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert len(out) == 1  # one JSON object per file
    result = json.loads(out[0])
    windows = result["windows"]
    assert result["duration"] == pytest.approx(6.0)
    assert windows[0]["start"] == 0.0
    assert windows[-1]["end"] == pytest.approx(result["duration"])
    for prev, nxt in zip(windows, windows[1:]):
        assert prev["start"] < nxt["start"] <= prev["end"], (prev, nxt)  # moving forward, no gap
    assert all(w["end"] - w["start"] == pytest.approx(1.0) for w in windows)  # whole 1 s windows
    assert all(sum(p for _, p in w["top"]) <= 1 + 1e-6 for w in windows)
    # windows wholly inside one half are labelled by it
    assert all(w["label"] == "bravo" for w in windows if w["end"] <= 3.0)
    assert all(w["label"] == "delta" for w in windows if w["start"] >= 3.0)
    assert {w["label"] for w in windows if w["end"] <= 3.0} and {w["label"] for w in windows if w["start"] >= 3.0}
    segments = result["segments"]
    assert [s["label"] for s in segments] == ["bravo", "delta"]
    assert segments[0]["start"] == 0.0 and segments[-1]["end"] == pytest.approx(6.0)
    assert segments == [s.__dict__ for s in merge_segments(windows)]
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["start"]), float(r["end"]), r["label"]) for r in rows] == \
        [(w["start"], w["end"], w["label"]) for w in windows]


def test_timeline_of_a_video_shorter_than_the_window_is_one_window(predictor, videos):
    """20 frames (0.8 s), 1 s window, a hop of 1 frame: one window [0, 0.8], not a second partial one."""
    result = predictor.timeline(videos["bravo"], window=1.0, stride=1 / FPS)
    assert [(w["start"], w["end"]) for w in result["windows"]] == [(0.0, pytest.approx(0.8))]
    assert result["segments"][0]["label"] == "bravo"


def test_merge_segments_by_hand():
    def w(start, end, label, p):
        return {"start": start, "end": end, "label": label, "probability": p}

    windows = [w(0.0, 1.0, "a", 0.9), w(0.5, 1.5, "a", 0.7), w(1.0, 2.0, "b", 0.6), w(1.5, 2.5, "a", 0.8),
               w(2.0, 3.0, "a", 0.6), w(2.5, 3.5, "a", 0.4),
               w(4.0, 5.0, "a", 0.5)]  # a gap before this one: a new segment despite the same label
    segments = merge_segments(windows)
    assert [(s.start, s.end, s.label) for s in segments] == [
        (0.0, 1.5, "a"), (1.0, 2.0, "b"), (1.5, 3.5, "a"), (4.0, 5.0, "a")]
    assert [s.probability for s in segments] == pytest.approx([0.8, 0.6, 0.6, 0.5])  # window means
    assert merge_segments([]) == []
    assert merge_segments([w(0.0, 1.0, "x", 0.3)]) == [Segment(0.0, 1.0, "x", 0.3)]


def test_corrupt_file_among_several(infer, controlled_checkpoint, videos, capsys):
    files = [str(videos["bravo"]), str(videos["corrupt"]), str(videos["delta"])]
    rc = infer.main([str(controlled_checkpoint), *files, "--topk", "2"])
    captured = capsys.readouterr()
    assert rc == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and files[1] in errors[0] and "not a readable video" in errors[0]
    assert "Traceback" not in captured.err
    # the good files before and after the bad one still print their predictions
    assert f"{files[0]} (0.8 s)" in captured.out and f"{files[2]} (0.8 s)" in captured.out
    assert captured.out.index(files[0]) < captured.out.index(files[2])
    tops = [line.split() for line in captured.out.splitlines() if line.startswith("  ")]
    assert [t[1] for t in tops][::2] == ["bravo", "delta"]  # the top-1 of each good file


def test_json_emits_one_object_per_file(infer, controlled_checkpoint, videos, capsys):
    files = [str(videos["bravo"]), str(videos["corrupt"]), str(videos["delta"])]
    rc = infer.main([str(controlled_checkpoint), *files, "--json", "--topk", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    objects = [json.loads(line) for line in lines]
    assert [o["video"] for o in objects] == files  # in order, the bad one included
    assert "error" in objects[1] and "top" not in objects[1]
    assert [o["top"][0][0] for o in (objects[0], objects[2])] == ["bravo", "delta"]


def test_fuse_averages_the_models_probabilities_in_both_modes(infer, controlled_checkpoint, capsys, tmp_path):
    """--fuse: the controlled model takes charlie for alpha; a second model that knows charlie, surer of itself
    (logits 20 x one-hot), outweighs it in the mean of probabilities, per clip and per window."""
    from .tool_helpers import build_controlled_model, make_checkpoint

    sure = tmp_path / "sure.pt"
    make_checkpoint(build_controlled_model({c: c for c in CLASSES}, scale=20.0)).save(sure)
    video = write_grey_video(tmp_path / "charlie.mp4", [BRIGHTNESS["charlie"]] * 50)
    assert infer.main([str(controlled_checkpoint), str(video), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top"][0][0] == "alpha"
    assert infer.main([str(controlled_checkpoint), str(video), "--fuse", str(sure), "--json", "--topk", "2"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    charlie = (1 / (math.exp(10) + 3) + 1 / (1 + 3 * math.exp(-20))) / 2
    alpha = (ONE_HOT_PROB + 1 / (math.exp(20) + 3)) / 2
    assert top[0][0] == "charlie" and top[0][1] == pytest.approx(charlie, abs=1e-4)
    assert top[1][0] == "alpha" and top[1][1] == pytest.approx(alpha, abs=1e-4)
    assert infer.main([str(controlled_checkpoint), str(video), "--fuse", str(sure), "--json", "--window", "1"]) == 0
    windows = json.loads(capsys.readouterr().out)["windows"]
    assert len(windows) >= 2 and all(w["label"] == "charlie" for w in windows)
    assert all(w["probability"] == pytest.approx(charlie, abs=1e-4) for w in windows)
    other = tmp_path / "other.pt"
    ckpt = make_checkpoint(build_controlled_model())
    ckpt.classes = ["alpha", "bravo", "charlie", "echo"]
    ckpt.save(other)
    assert infer.main([str(controlled_checkpoint), str(video), "--fuse", str(other)]) == 2
    assert "only models of the same classes can be fused" in capsys.readouterr().err
