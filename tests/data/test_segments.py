"""Segments of long recordings as samples: span bounds, sampling inside spans, the recording split."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from tests.conftest import frame_value
from videoft.data.clip_indices import Span, eval_clip_indices, train_clip_indices
from videoft.data.dataset import VideoClipDataset, VideoSample, load_splits, read_list_file, recording_of, split_summary
from videoft.data.segments import audit_spans, parse_span, parse_time

FPS = 25


# ---------------------------------------------------------------------------- span bounds

@pytest.mark.parametrize("text,expected", [
    ("12.5", (12.5, False)), ("0", (0.0, False)), (".5", (0.5, False)), ("01:02.5", (62.5, False)),
    ("1:02:03", (3723.0, False)), ("300f", (300.0, True)), ("12F", (12.0, True)),
])
def test_parse_time(text, expected):
    assert parse_time(text) == expected


@pytest.mark.parametrize("start,end,match", [
    ("1.0", "30f", "both in seconds or both in frames"), ("abc", "2", "not a time"), ("3", "2", "start < end"),
    ("-1", "2", "not a time"),
])
def test_bad_span_is_value_error(start, end, match):
    with pytest.raises(ValueError, match=match):
        parse_span(start, end)


def test_span_frame_range_seconds_and_frames():
    # frames whose timestamps t / fps fall in [start, end): 1.0 s = frame 25 at 25 fps, end exclusive
    assert Span(1.0, 2.0).frame_range(FPS, 1000) == (25, 50)
    assert Span(1.01, 2.01).frame_range(FPS, 1000) == (26, 51)
    assert Span(0.1, 0.3).frame_range(29.97, 1000) == (3, 9)  # 0.1 * 29.97 = 2.997 -> frame 3 is the first inside
    assert Span(300, 375, in_frames=True).frame_range(FPS, 1000) == (300, 375)
    assert Span(30.0, 99.0).frame_range(FPS, 1000) == (750, 1000)  # end clipped to the last frame
    with pytest.raises(ValueError, match="starts after the end of the video"):
        Span(40.0, 41.0).frame_range(FPS, 1000)
    with pytest.raises(ValueError, match="starts after the end"):
        Span(1000, 1001, in_frames=True).frame_range(FPS, 1000)


# ---------------------------------------------------------------------------- sampling inside a span

def test_train_clips_stay_inside_the_span_and_cover_it():
    rng = random.Random(0)
    clips = [train_clip_indices(10_000, 4, 2, rng, span=(500, 540)) for _ in range(400)]
    assert all(500 <= i < 540 for c in clips for i in c)
    starts = Counter(c[0] for c in clips)
    assert min(starts) == 500 and max(starts) == 540 - 7  # every start whose clip (span 7) fits
    assert all(c == list(range(c[0], c[0] + 8, 2)) for c in clips)  # stride kept


def test_short_span_repeats_its_own_last_frame():
    clip = train_clip_indices(10_000, 4, 2, random.Random(0), span=(100, 103))
    assert clip == [100, 102, 102, 102]  # never frame 103 (outside the span)
    assert eval_clip_indices(10_000, 4, 2, 2, span=(100, 103)) == [[100, 102, 102, 102]] * 2


def test_eval_clips_spread_over_the_span():
    clips = eval_clip_indices(10_000, 4, 2, 3, span=(200, 300))
    assert clips[0][0] == 200 and clips[-1][-1] == 299  # first to last frame of the span
    assert clips[1][0] == 200 + round(93 / 2)  # the centre start (93 = last start whose clip fits)
    # without a span: the same spread over the whole video
    assert eval_clip_indices(100, 4, 2, 3) == [[i - 200 for i in c] for c in clips]


def test_span_outside_the_video_is_value_error():
    with pytest.raises(ValueError, match="not inside"):
        train_clip_indices(100, 4, 2, random.Random(0), span=(90, 120))


# ---------------------------------------------------------------------------- list files with spans

def test_list_file_with_spans(tmp_path):
    (tmp_path / "events.csv").write_text(
        "path,label,start,end\nmatch1.mp4,serve,12.5,15\nmatch1.mp4,smash,01:02,01:03.5\n"
        "match2.mp4,serve,300f,375f\nclip.mp4,smash\n")
    rows = read_list_file(tmp_path / "events.csv")
    assert rows == [(str(tmp_path / "match1.mp4"), "serve", Span(12.5, 15.0)),
                    (str(tmp_path / "match1.mp4"), "smash", Span(62.0, 63.5)),
                    (str(tmp_path / "match2.mp4"), "serve", Span(300, 375, in_frames=True)),
                    (str(tmp_path / "clip.mp4"), "smash", None)]  # a whole file, as before
    (tmp_path / "events.txt").write_text("my match 1.mp4 serve 12.5 15\nmy clip 2.mp4 smash\n")
    rows = read_list_file(tmp_path / "events.txt")
    assert rows == [(str(tmp_path / "my match 1.mp4"), "serve", Span(12.5, 15.0)),
                    (str(tmp_path / "my clip 2.mp4"), "smash", None)]


def test_bad_span_in_list_names_file_and_line(tmp_path):
    (tmp_path / "events.csv").write_text("a.mp4,serve,1,2\na.mp4,serve,5,4\n")
    with pytest.raises(ValueError, match=r"events\.csv:2: .*start < end"):
        read_list_file(tmp_path / "events.csv")
    (tmp_path / "three.csv").write_text("a.mp4,serve,1\n")
    with pytest.raises(ValueError, match=r"three\.csv:1"):
        read_list_file(tmp_path / "three.csv")


# ---------------------------------------------------------------------------- the recording is the group

def _events_list(tmp_path, num_recordings=12, seed=0) -> tuple:
    """A list of segments: every recording holds segments of several classes."""
    rng = random.Random(seed)
    lines = ["path,label,start,end"]
    for r in range(num_recordings):
        t = 0.0
        for _ in range(rng.randint(4, 9)):
            lines.append(f"rec{r:02d}.mp4,{rng.choice(['pass', 'shot', 'tackle'])},{t:.1f},{t + 2:.1f}")
            t += rng.uniform(3, 10)
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, len(lines) - 1


def test_segments_of_one_recording_stay_on_one_side(tmp_path):
    path, n = _events_list(tmp_path)
    splits, classes = load_splits(path, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert classes == ["pass", "shot", "tackle"]
    assert sum(len(v) for v in splits.values()) == n
    sides = {}
    for split, samples in splits.items():
        for s in samples:
            sides.setdefault(recording_of(s), set()).add(split)
    assert all(len(v) == 1 for v in sides.values()), sides  # never on two sides
    assert len(sides) == 12 and all(splits[k] for k in ("train", "val", "test"))
    # near the fractions (whole recordings move, so not exactly)
    assert 0.1 <= len(splits["val"]) / n <= 0.35 and 0.1 <= len(splits["test"]) / n <= 0.35
    again, _ = load_splits(path, val_fraction=0.2, test_fraction=0.2, seed=0)
    other, _ = load_splits(path, val_fraction=0.2, test_fraction=0.2, seed=5)
    assert again == splits and other != splits


def test_per_class_grouping_would_have_split_a_recording(tmp_path):
    """The rule matters: dealing recordings out class by class (the clip-folder rule) would put one
    recording on both sides; the recording split never does (checked above with the same data)."""
    from videoft.data.dataset import group_split

    path, _ = _events_list(tmp_path)
    rows = [VideoSample(p, ["pass", "shot", "tackle"].index(lbl)) for p, lbl, _ in read_list_file(path)]  # no spans
    per_class = group_split(rows, {"val": 0.2, "test": 0.2}, seed=0)
    sides = {}
    for split, samples in per_class.items():
        for s in samples:
            sides.setdefault(s.path, set()).add(split)
    assert any(len(v) > 1 for v in sides.values())


def test_split_summary_says_recordings_stay_together(tmp_path):
    path, _ = _events_list(tmp_path)
    splits, classes = load_splits(path, val_fraction=0.25, seed=1)
    text = split_summary(splits, classes)
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:-1]}
    assert [int(x) for x in rows["recordings"]] == [len({recording_of(s) for s in splits[k]}) for k in ("train", "val")]
    assert "all segments of one recording are on one side" in text.splitlines()[-1]


# ---------------------------------------------------------------------------- decoding segments of a real file

@pytest.fixture(scope="module")
def recording(make_video, tmp_path_factory):
    """A lossless 64x48 video, 150 frames at 25 fps (6 s); frame t holds frame_value(t)."""
    return make_video(tmp_path_factory.mktemp("rec") / "rec.mp4", num_frames=150, fps=FPS)


def _raw_dataset(samples, train, num_clips=1):
    return VideoClipDataset(samples, clip_len=4, stride=2, train=train, transform=lambda f: f, short_side=None,
                            num_clips=num_clips, backend="pyav")


def _frame_numbers(frames: torch.Tensor) -> list[int]:  # [T, H, W, C] uint8 -> the frame each one is
    values = frames[:, 0, 0, 0].tolist()
    return [next(t for t in range(150) if frame_value(t) == v) for v in values]


def test_train_item_of_a_segment_decodes_frames_inside_it(recording):
    ds = _raw_dataset([VideoSample(str(recording), 0, Span(2.0, 3.0))], train=True)  # frames 50..74
    for epoch in range(6):
        ds.set_epoch(epoch)
        frames = ds[0]["video"]
        got = _frame_numbers(frames)
        assert all(50 <= t < 75 for t in got), got
        assert got == list(range(got[0], got[0] + 8, 2))
        assert torch.all(frames == frames[:, :1, :1, :1])  # lossless: each frame uniform, exact value


def test_eval_item_of_a_segment_spreads_over_it(recording):
    item = _raw_dataset([VideoSample(str(recording), 1, Span(100, 130, in_frames=True))], train=False,
                        num_clips=3)[0]
    assert item["valid"] and item["frame_indices"] == [[100, 102, 104, 106], [112, 114, 116, 118],
                                                       [123, 125, 127, 129]]
    assert _frame_numbers(item["video"]) == [t for c in item["frame_indices"] for t in c]


def test_span_after_the_end_is_reported_and_skipped(recording):
    bad = VideoSample(str(recording), 0, Span(10.0, 12.0))  # the video is 6 s long
    good = VideoSample(str(recording), 1, Span(1.0, 2.0))
    item = _raw_dataset([bad, good], train=True)[0]
    assert item["index"] == 1 and item["label"] == 1
    ((path, reason),) = {tuple(f) for f in item["failures"]}
    assert path == str(recording) and "10-12 s starts after the end of the video (6.00 s)" in reason
    item = _raw_dataset([bad], train=False)[0]
    assert not item["valid"] and "starts after the end" in item["failures"][0][1]


def test_audit_spans_against_durations(recording, tmp_path):
    samples = [VideoSample(str(recording), 0, Span(1.0, 2.0)),   # fine
               VideoSample(str(recording), 0, Span(5.0, 7.5)),   # ends after the end: clipped
               VideoSample(str(recording), 0, Span(8.0, 9.0)),   # starts after the end
               VideoSample(str(tmp_path / "missing.mp4"), 0, Span(1.0, 2.0)),
               VideoSample(str(recording), 0)]                   # a whole file: nothing to check
    problems = audit_spans(samples)
    assert len(problems) == 3
    assert "5-7.5 s" in problems[0] and "clipped" in problems[0]
    assert "8-9 s starts after the end" in problems[1]
    assert "missing.mp4" in problems[2] and "does not exist" in problems[2]
