"""Annotation converters: events tables (spans or single times), SoccerNet JSON, background gaps,
and datasets/events_to_list.py end to end into load_splits."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from videoft.data.clip_indices import Span
from videoft.data.dataset import load_splits, read_list_file
from videoft.data.events import (
    Event,
    background_events,
    parse_game_time,
    read_events_table,
    read_soccernet_labels,
    window_span,
    write_segment_list,
)

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"videoft_dataset_{name}", REPO / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_events_table_with_spans(tmp_path):
    (tmp_path / "events.csv").write_text("Video,Label,Start,End\nmatch.mp4,serve,12.5,15\n"
                                         "/abs/other.mp4,smash,01:02,1:03.5\n")
    assert read_events_table(tmp_path / "events.csv") == [
        Event(str(tmp_path / "match.mp4"), "serve", 12.5, 15.0), Event("/abs/other.mp4", "smash", 62.0, 63.5)]
    # other column names, another videos root
    (tmp_path / "other.csv").write_text("file,class,start_time,end_time\na.mp4,x,1,2\n")
    assert read_events_table(tmp_path / "other.csv", videos_root="/videos") == [Event("/videos/a.mp4", "x", 1.0, 2.0)]


def test_events_table_with_single_times(tmp_path):
    (tmp_path / "spots.csv").write_text("video,label,time\nm.mp4,goal,00:10\nm.mp4,corner,0.5\n")
    events = read_events_table(tmp_path / "spots.csv", window=(1.0, 2.0))
    assert events == [Event(str(tmp_path / "m.mp4"), "goal", 9.0, 12.0),
                      Event(str(tmp_path / "m.mp4"), "corner", 0.0, 2.5)]  # clipped at the start
    with pytest.raises(ValueError, match="need a window"):
        read_events_table(tmp_path / "spots.csv")


@pytest.mark.parametrize("text,match", [
    ("video,start,end\nm.mp4,1,2\n", "label column"),
    ("video,label\nm.mp4,x\n", "start,end columns or a time column"),
    ("video,label,start,end\nm.mp4,x,1,2\nm.mp4,x,5,3\n", r"events\.csv:3: start 5 s must be"),
    ("video,label,start,end\nm.mp4,x,10f,20f\n", r"events\.csv:2: .*not frames"),
    ("video,label,start,end\nm.mp4,x,1\n", r"events\.csv:2"),
])
def test_bad_events_table_names_file_and_line(tmp_path, text, match):
    (tmp_path / "events.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_events_table(tmp_path / "events.csv")


def test_window_span():
    assert window_span(10.0, (1.0, 2.0)) == (9.0, 12.0)
    with pytest.raises(ValueError):
        window_span(10.0, (0.0, 0.0))


def test_soccernet_labels(tmp_path):
    game = tmp_path / "england_epl" / "2015-2016" / "2015-08-08 - 19-30 Chelsea 2 - 2 Swansea"
    game.mkdir(parents=True)
    (game / "Labels-v2.json").write_text(json.dumps({"UrlLocal": "england_epl/...", "annotations": [
        {"gameTime": "1 - 05:32", "label": "Goal", "position": "332100", "team": "home", "visibility": "visible"},
        {"gameTime": "2 - 44:59", "label": "Corner", "team": "away", "visibility": "visible"},  # no position
    ]}))
    events = read_soccernet_labels(game / "Labels-v2.json", window=(1.0, 2.0))
    assert events == [Event(str(game / "1_224p.mkv"), "Goal", 331.1, 334.1),      # position: 332.1 s
                      Event(str(game / "2_224p.mkv"), "Corner", 2698.0, 2701.0)]  # gameTime 44:59
    assert read_soccernet_labels(game / "Labels-v2.json", window=(0, 1), video_pattern="{half}_720p.mkv")[0].video \
        == str(game / "1_720p.mkv")
    assert parse_game_time("1 - 00:07") == (1, 7.0)
    (game / "bad.json").write_text(json.dumps({"annotations": [{"gameTime": "05:32", "label": "Goal"}]}))
    with pytest.raises(ValueError, match="annotation 0: gameTime '05:32'"):
        read_soccernet_labels(game / "bad.json", window=(1, 1))
    (game / "nothing.json").write_text("[]")
    with pytest.raises(ValueError, match="no 'annotations' list"):
        read_soccernet_labels(game / "nothing.json", window=(1, 1))


def test_background_from_gaps():
    events = [Event("m.mp4", "goal", 10.0, 12.0), Event("m.mp4", "foul", 13.0, 14.0)]
    bg = background_events(events, {"m.mp4": 24.0}, label="none", length=3.0, margin=1.0)
    # free: [0, 9) -> 0-3, 3-6, 6-9; [15, 24) -> 15-18, 18-21, 21-24
    assert [(e.start, e.end) for e in bg] == [(0, 3), (3, 6), (6, 9), (15, 18), (18, 21), (21, 24)]
    assert all(e.label == "none" and e.video == "m.mp4" for e in bg)
    spread = background_events(events, {"m.mp4": 24.0}, label="none", length=3.0, max_per_video=2)
    assert [(e.start, e.end) for e in spread] == [(0, 3), (15, 18)]


def test_written_list_loads_as_segments(tmp_path):
    events = [Event(str(tmp_path / "videos" / "m1.mp4"), "goal", 1.0, 3.0),
              Event(str(tmp_path / "videos" / "m1.mp4"), "foul", 5.0, 6.5),
              Event(str(tmp_path / "videos" / "m2.mp4"), "goal", 0.0, 2.0)]
    out = tmp_path / "lists" / "events.csv"
    assert write_segment_list(events, out) == 3
    assert out.read_text().splitlines()[:2] == ["path,label,start,end", "../videos/m1.mp4,goal,1.000,3.000"]
    rows = read_list_file(out)
    assert [(Path(p).resolve(), label, span) for p, label, span in rows][0] == \
        ((tmp_path / "videos" / "m1.mp4").resolve(), "goal", Span(1.0, 3.0))
    splits, classes = load_splits(out, val_fraction=0.0)
    assert classes == ["foul", "goal"] and len(splits["train"]) == 3


def test_events_to_list_script(tmp_path, make_video, capsys):
    video = make_video(tmp_path / "rec.mp4", num_frames=250, fps=25)  # 10 s
    (tmp_path / "spots.csv").write_text("video,label,time\nrec.mp4,goal,3\nrec.mp4,corner,7.5\nrec.mp4,foul,9\n")
    script = load_script("events_to_list")
    out = tmp_path / "out" / "list.csv"
    code = script.main([str(tmp_path / "spots.csv"), "--window", "0.5", "1", "--labels", "goal,corner",
                        "--background", "none", "--background-length", "1", "--background-margin", "0.5",
                        "--out", str(out)])
    assert code == 0
    rows = read_list_file(out)
    assert {(label, span.start, span.end) for p, label, span in rows if label != "none"} == \
        {("goal", 2.5, 4.0), ("corner", 7.0, 8.5)}  # the foul was filtered out
    background = sorted((span.start, span.end) for _, label, span in rows if label == "none")
    # the gaps of the 10 s video, clear of every event (also the foul at 9 s that was left out)
    assert background == [(0.0, 1.0), (1.0, 2.0), (4.5, 5.5), (5.5, 6.5)]
    assert all(Path(p).resolve() == video.resolve() for p, _, _ in rows)
    assert "6 segments of 1 recordings" in capsys.readouterr().out
    # SoccerNet needs a window; a missing video for background is named
    assert script.main(["--soccernet", str(tmp_path / "x.json"), "--out", str(out)]) == 2
    (tmp_path / "gone.csv").write_text("video,label,start,end\nmissing.mp4,goal,1,2\n")
    assert script.main([str(tmp_path / "gone.csv"), "--background", "none", "--out", str(out)]) == 2
    assert "missing.mp4: file does not exist" in capsys.readouterr().err
