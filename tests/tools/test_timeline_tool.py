"""Timeline scoring end to end: tools/infer.py --window --annotations and tools/evaluate_timeline.py on
a 6 s video (bravo-grey for 3 s, then delta-grey) and the controlled checkpoint (tool_helpers.py)."""
from __future__ import annotations

import json

import pytest

from .tool_helpers import BRIGHTNESS, load_tool, write_grey_video


@pytest.fixture(scope="module")
def match(tmp_path_factory):
    root = tmp_path_factory.mktemp("timeline")
    video = write_grey_video(root / "match.mp4", [BRIGHTNESS["bravo"]] * 75 + [BRIGHTNESS["delta"]] * 75)
    # bravo and delta as predicted; a charlie event the model cannot find; a delta far off in time
    (root / "events.csv").write_text("video,label,start,end\nmatch.mp4,bravo,0,3\nmatch.mp4,delta,3.2,6\n"
                                     "match.mp4,charlie,1,2\n")
    (root / "shifted.csv").write_text("video,label,start,end\nmatch.mp4,bravo,0,3\nmatch.mp4,delta,5,6\n")
    return video, root


def _rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.split()}


def test_infer_scores_its_timeline_against_annotations(controlled_checkpoint, match, capsys):
    video, root = match
    rc = load_tool("infer").main([str(controlled_checkpoint), str(video), "--window", "1", "--stride", "1",
                                  "--annotations", str(root / "events.csv"), "--csv", str(root / "timeline.csv")])
    out = capsys.readouterr().out
    assert rc == 0
    rows = _rows(out)
    # predicted segments: bravo 0-3, delta 3-6. bravo IoU 1, delta IoU 2.8/3; charlie missed
    assert rows["bravo"] == ["1", "1", "1", "100.0%", "100.0%", "100.0%"]
    assert rows["delta"] == ["1", "1", "1", "100.0%", "100.0%", "100.0%"]
    assert rows["charlie"] == ["1", "0", "0", "-", "0.0%", "-"]
    assert rows["all"] == ["3", "2", "2", "100.0%", "66.7%", "80.0%"]
    assert "IoU >= 0.5, 1 video(s)" in out


def test_evaluate_timeline_tool_on_the_saved_csv(controlled_checkpoint, match, capsys):
    video, root = match
    load_tool("infer").main([str(controlled_checkpoint), str(video), "--window", "1", "--stride", "1",
                             "--csv", str(root / "timeline.csv")])
    capsys.readouterr()
    tool = load_tool("evaluate_timeline")
    # delta annotated at 5-6: IoU with the predicted 3-6 is 1/3 -> no match at 0.5, a match at 0.3
    assert tool.main([str(root / "timeline.csv"), "--annotations", str(root / "shifted.csv"), "--iou", "0.5",
                      "--json", str(root / "scores.json")]) == 0
    assert _rows(capsys.readouterr().out)["delta"] == ["1", "1", "0", "0.0%", "0.0%", "0.0%"]
    saved = json.loads((root / "scores.json").read_text())
    assert saved["overall"]["matched"] == 1 and saved["iou_threshold"] == 0.5
    assert tool.main([str(root / "timeline.csv"), "--annotations", str(root / "shifted.csv"), "--iou", "0.3"]) == 0
    assert _rows(capsys.readouterr().out)["delta"][2] == "1"
    # ignoring a class removes it from both sides
    assert tool.main([str(root / "timeline.csv"), "--annotations", str(root / "events.csv"),
                      "--ignore", "charlie"]) == 0
    assert "charlie" not in _rows(capsys.readouterr().out)


def test_evaluate_timeline_tool_errors(match, capsys, tmp_path):
    _, root = match
    tool = load_tool("evaluate_timeline")
    (tmp_path / "t.csv").write_text("video,start,end,label,probability\nother.mp4,0,1,bravo,0.9\n")
    assert tool.main([str(tmp_path / "t.csv"), "--annotations", str(root / "events.csv")]) == 1
    captured = capsys.readouterr()
    assert "no video is both in the timeline and in the annotations" in captured.err
    assert "not scored (predicted only): other.mp4" in captured.out
    assert tool.main([str(tmp_path / "missing.csv"), "--annotations", str(root / "events.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
