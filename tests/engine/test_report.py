"""Report files: all written, PNGs valid, JSON round-trips and validates, HTML escapes names."""

from __future__ import annotations

import base64
import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from videoft.engine.metrics import compute_metrics
from videoft.engine.report import (
    REPORT_FILES,
    REPORT_KEYS,
    format_summary,
    validate_report,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_report(class_names: list[str], num_videos: int, *, clips: int = 2, crops: int = 1,
                seed: int = 0) -> tuple[dict, list[dict]]:
    """A complete report and predictions list, as tools/evaluate.py would build them."""
    rng = np.random.default_rng(seed)
    c, v = len(class_names), clips * crops
    labels = np.arange(num_videos) % c
    logits = rng.normal(size=(num_videos, v, c))
    logits[np.arange(num_videos), :, labels] += 2.0  # mostly right
    view_probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # [N, V, C]
    video_probs = view_probs.mean(1)  # [N, C], as Predictions.video_probs
    paths = [f"videos/{class_names[y]}/{i:04d}.mp4" for i, y in enumerate(labels)]
    report = {
        "checkpoint": "runs/demo/best.pt",
        "data": "videos/",
        "split": "val",
        "num_videos": num_videos,
        "num_failed": 1,
        "failed": [{"path": "videos/broken <1>.mp4", "reason": "no video stream"}],
        "clip_level": compute_metrics(view_probs.reshape(-1, c), np.repeat(labels, v),
                                      class_names, n_boot=100),
        "video_level": compute_metrics(video_probs, labels, class_names, n_boot=100),
        "views": {"clips": clips, "crops": crops},
        "class_names": list(class_names),
        "per_video": [{"path": p, "label": int(y), "crops": crops,
                       "frame_indices": [list(range(k * 8, k * 8 + 8)) for k in range(clips)]}
                      for p, y in zip(paths, labels)],
    }
    predictions = [{"video": p, "true": class_names[y], "predicted": class_names[q],
                    "confidence": float(video_probs[i, q])}
                   for i, (p, y, q) in enumerate(zip(paths, labels, video_probs.argmax(1)))]
    return report, predictions


NAMES5 = ["walk", "run", "jump <high> & far", 'say "hi"', "swim"]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[dict, dict[str, Path]]:
    """One 5-class report written once for the file checks below."""
    report, predictions = make_report(NAMES5, 40)
    paths = write_report(tmp_path_factory.mktemp("report"), report=report,
                         class_names=NAMES5, predictions=predictions)
    return report, paths


def test_every_file_written(written):
    _, paths = written
    assert set(paths) == set(REPORT_FILES)
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0, path
    for name in ("confusion_matrix.png", "per_class_accuracy.png"):
        assert paths[name].read_bytes()[:8] == PNG_SIGNATURE


def test_json_round_trips_and_validates(written):
    report, paths = written
    loaded = json.loads(paths["report.json"].read_text(encoding="utf-8"))
    assert loaded == report
    assert validate_report(loaded) == []


def test_csvs(written):
    report, paths = written
    with paths["per_class.csv"].open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == NAMES5
    assert list(rows[0]) == ["class", "support", "clip_accuracy", "video_accuracy"]
    assert [int(r["support"]) for r in rows] == [8] * 5
    with paths["predictions.csv"].open(encoding="utf-8", newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 40 and list(preds[0]) == ["video", "true", "predicted", "confidence"]
    assert preds[2]["true"] == "jump <high> & far"


def test_html_is_self_contained_and_escaped(written):
    _, paths = written
    page = paths["report.html"].read_text(encoding="utf-8")
    assert "jump &lt;high&gt; &amp; far" in page and "<high>" not in page
    assert "say &quot;hi&quot;" in page
    assert "videos/broken &lt;1&gt;.mp4" in page  # failed videos listed, escaped
    assert page.count('src="data:image/png;base64,') == 2
    uri = page.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(uri)[:8] == PNG_SIGNATURE
    assert 'src="http' not in page and "<link" not in page


@pytest.mark.parametrize("key", sorted(REPORT_KEYS))
def test_validate_reports_missing_key(written, key):
    report = copy.deepcopy(written[0])
    del report[key]
    problems = validate_report(report)
    assert problems and any(key in p for p in problems)


def test_validate_reports_wrong_types_and_counts(written):
    report = copy.deepcopy(written[0])
    report["num_videos"] = "40"
    report["num_failed"] = 3
    del report["video_level"]["top1"]
    report["per_video"][0]["label"] = np.int64(1)  # numpy scalar: not plain JSON
    problems = validate_report(report)
    assert any("report.num_videos" in p for p in problems)
    assert any("num_failed=3" in p for p in problems)
    assert any("video_level: missing key 'top1'" in p for p in problems)
    assert any("per_video[0].label" in p for p in problems)
    with pytest.raises(ValueError, match="invalid report"):
        write_report("unused", report=report, class_names=NAMES5, predictions=[])


def test_format_summary(written):
    text = format_summary(written[0])
    assert "runs/demo/best.pt" in text and "2 clips x 1 crops" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("level"))
    assert "top-1" in header and "top-5" in header and "mean-class" in header
    # Per-class rows are aligned: every row is as wide as or narrower than the header's columns.
    table = lines[lines.index(next(line for line in lines if line.startswith("class"))):]
    assert len(table) == 1 + len(NAMES5)
    assert len({line.index("%") for line in table[1:] if "%" in line}) <= 2


def test_report_without_cis(written):
    report = copy.deepcopy(written[0])
    for level in ("clip_level", "video_level"):
        report[level]["top1_ci95"] = report[level]["mean_class_accuracy_ci95"] = None
    assert validate_report(report) == []
    assert "[" not in format_summary(report).split("class")[0].split("level", 1)[1]


def test_hundred_classes_render(tmp_path):
    # Short names keep glyph rendering (the main cost) low; one long name gets truncated.
    names = [f"class_{i:03d}" for i in range(99)] + ["a_very_long_class_name_" * 4]
    report, predictions = make_report(names, 300, clips=1, crops=3)
    paths = write_report(tmp_path, report=report, class_names=names, predictions=predictions)
    assert paths["confusion_matrix.png"].read_bytes()[:8] == PNG_SIGNATURE
    assert paths["per_class_accuracy.png"].read_bytes()[:8] == PNG_SIGNATURE
    assert "top-5" in format_summary(report)
