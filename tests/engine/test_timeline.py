"""Timeline scoring: temporal IoU, matching, per-class precision/recall on hand-computed cases."""
from __future__ import annotations

import pytest

from videoft.engine.timeline import (
    Segment,
    align_videos,
    evaluate_timeline,
    format_timeline_scores,
    match_segments,
    merge_segments,
    read_timeline_csv,
    temporal_iou,
)


def S(start, end, label, p=1.0):  # noqa: N802 - reads like a table below
    return Segment(start, end, label, p)


def test_temporal_iou():
    assert temporal_iou(S(0, 10, "a"), S(0, 10, "a")) == 1.0
    assert temporal_iou(S(0, 10, "a"), S(5, 15, "a")) == pytest.approx(5 / 15)
    assert temporal_iou(S(0, 4, "a"), S(1, 2, "a")) == pytest.approx(1 / 4)  # one inside the other
    assert temporal_iou(S(0, 4, "a"), S(4, 8, "a")) == 0.0  # touching
    assert temporal_iou(S(0, 4, "a"), S(6, 8, "a")) == 0.0


def test_match_is_one_to_one_same_label_most_probable_first():
    annotated = [S(0, 10, "goal"), S(20, 30, "goal"), S(40, 50, "corner")]
    predicted = [S(1, 11, "goal", 0.6),      # IoU 9/11 with goal 0-10
                 S(0, 9, "goal", 0.9),       # IoU 0.9 with goal 0-10: more probable, takes it first
                 S(21, 29, "goal", 0.5),     # IoU 0.8 with goal 20-30
                 S(40, 50, "goal", 0.99)]    # the corner's span, wrong label: no match
    matches = match_segments(predicted, annotated, 0.5)
    assert sorted((i, j) for i, j, _ in matches) == [(1, 0), (2, 1)]
    assert dict(((i, j), iou) for i, j, iou in matches)[(1, 0)] == pytest.approx(0.9)
    # prediction 0 found its best annotation taken and no other above the threshold: unmatched


def test_threshold_decides():
    annotated = [S(0, 10, "goal")]
    predicted = [S(5, 15, "goal")]  # IoU 1/3
    assert match_segments(predicted, annotated, 0.3)
    assert not match_segments(predicted, annotated, 0.5)


def test_evaluate_timeline_hand_computed():
    annotated = {
        "m1.mp4": [S(0, 10, "goal"), S(20, 30, "goal"), S(40, 50, "corner"), S(60, 70, "foul")],
        "m2.mp4": [S(5, 10, "corner"), S(12, 20, "background")],
        "only_annotated.mp4": [S(0, 5, "goal")],
    }
    predicted = {
        "m1.mp4": [S(0, 9, "goal", 0.9),        # TP goal (IoU 0.9)
                   S(25, 40, "goal", 0.8),      # IoU 5/20 = 0.25 with goal 20-30: FP
                   S(41, 49, "corner", 0.7),    # TP corner (IoU 0.8)
                   S(80, 90, "foul", 0.4)],     # FP foul (no overlap); foul 60-70 missed
        "m2.mp4": [S(0, 8, "corner", 0.3),      # IoU 3/10: FP at 0.5
                   S(12, 20, "background", 0.9)],
        "only_predicted.mp4": [S(0, 5, "goal")],
    }
    r = evaluate_timeline(predicted, annotated, iou_threshold=0.5, ignore_labels=["background"])
    assert r["videos"] == ["m1.mp4", "m2.mp4"]
    rows = {c["class"]: c for c in r["per_class"]}
    assert set(rows) == {"goal", "corner", "foul"}  # background ignored on both sides
    assert (rows["goal"]["annotated"], rows["goal"]["predicted"], rows["goal"]["matched"]) == (2, 2, 1)
    assert rows["goal"]["precision"] == 0.5 and rows["goal"]["recall"] == 0.5 and rows["goal"]["f1"] == 0.5
    assert (rows["corner"]["annotated"], rows["corner"]["predicted"], rows["corner"]["matched"]) == (2, 2, 1)
    assert (rows["foul"]["precision"], rows["foul"]["recall"], rows["foul"]["f1"]) == (0.0, 0.0, 0.0)
    assert (r["overall"]["annotated"], r["overall"]["predicted"], r["overall"]["matched"]) == (5, 5, 2)
    assert r["overall"]["precision"] == pytest.approx(0.4) and r["overall"]["recall"] == pytest.approx(0.4)
    assert r["mean_recall"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert r["unmatched_videos"] == {"predicted_only": ["only_predicted.mp4"], "annotated_only": ["only_annotated.mp4"]}
    # at IoU 0.25 the second goal and the m2 corner match too
    low = {c["class"]: c for c in evaluate_timeline(predicted, annotated, iou_threshold=0.25,
                                                    ignore_labels=["background"])["per_class"]}
    assert low["goal"]["matched"] == 2 and low["corner"]["matched"] == 2
    # dropping predictions under 0.5 removes the foul FP and the low corner
    high = {c["class"]: c for c in evaluate_timeline(predicted, annotated, min_probability=0.5,
                                                     ignore_labels=["background"])["per_class"]}
    assert high["foul"]["predicted"] == 0 and high["foul"]["precision"] is None and high["corner"]["predicted"] == 1
    text = format_timeline_scores(r)
    assert "goal" in text and "50.0%" in text and "IoU >= 0.5" in text


def test_bad_threshold_is_value_error():
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_timeline({}, {}, iou_threshold=0)


def test_timeline_csv_is_merged_into_segments(tmp_path):
    (tmp_path / "t.csv").write_text(
        "video,start,end,label,probability\n"
        "m.mp4,0,2,goal,0.8\nm.mp4,1,3,goal,0.6\nm.mp4,2,4,foul,0.5\nn.mp4,0,2,goal,0.9\n")
    got = read_timeline_csv(tmp_path / "t.csv")
    assert got["m.mp4"] == [S(0, 3, "goal", pytest.approx(0.7)), S(2, 4, "foul", 0.5)]
    assert got["n.mp4"] == [S(0, 2, "goal", 0.9)]
    assert merge_segments([{"start": 0, "end": 2, "label": "a", "probability": 1.0}]) == [S(0, 2, "a")]
    (tmp_path / "bad.csv").write_text("video,start,label\nm.mp4,0,goal\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_timeline_csv(tmp_path / "bad.csv")


def test_align_videos_by_path_then_unique_name(tmp_path):
    annotated = {str(tmp_path / "a" / "match.mp4"): [], str(tmp_path / "b" / "half.mp4"): [],
                 str(tmp_path / "c" / "half.mp4"): []}
    predicted = {str(tmp_path / "a" / "." / "match.mp4"): [S(0, 1, "x")], "elsewhere/match.mp4": [S(1, 2, "x")],
                 "half.mp4": [S(2, 3, "x")]}
    aligned = align_videos(predicted, annotated)
    # the exact path wins over the same name elsewhere; half.mp4 is ambiguous and stays unmatched
    assert aligned == {str(tmp_path / "a" / "match.mp4"): [S(0, 1, "x")], "elsewhere/match.mp4": [S(1, 2, "x")],
                       "half.mp4": [S(2, 3, "x")]}
    assert align_videos({"x/match.mp4": [S(0, 1, "x")]}, annotated) == {str(tmp_path / "a" / "match.mp4"):
                                                                       [S(0, 1, "x")]}
