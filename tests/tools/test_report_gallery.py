"""report.html's gallery, end to end: tools/evaluate.py on the grey set with the controlled checkpoint
(tool_helpers.py), whose mistakes are known: charlie/c1 and charlie/c2 -> alpha, bravo/mixed -> delta.

Each shown video is one embedded JPEG: a strip of the centre frame of each of its 3 clips (frames 2,
10 and 18), so the strip's panels have the grey values of those frames.
"""
from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from videoft.engine.gallery import GalleryCaps, GalleryItem, render_gallery, select_gallery

from .test_evaluate_tool import run_evaluate
from .tool_helpers import BRIGHTNESS, write_grey_video

PANEL = 76  # the 48x40 grey videos at a 64 px short side are 76x64; panels are separated by 2 px


class Figures(HTMLParser):
    """Every <figure> of the gallery: its class, data-true/predicted, images and caption text."""

    def __init__(self):
        super().__init__()
        self.figures, self._current = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self._current = {"kind": attrs.get("class"), "true": attrs.get("data-true"),
                             "predicted": attrs.get("data-predicted"), "images": [], "text": ""}
            self.figures.append(self._current)
        elif tag == "img" and self._current is not None:
            self._current["images"].append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "figure":
            self._current = None

    def handle_data(self, data):
        if self._current is not None:
            self._current["text"] += data


def figures_of(page: str) -> list[dict]:
    parser = Figures()
    parser.feed(page)
    return parser.figures


def panels(uri: str) -> list[float]:
    """The mean grey value of each panel of a strip image."""
    assert uri.startswith("data:image/jpeg;base64,")
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
    assert image.shape[0] == 64  # [H, W, 3]: 64 px high
    count = (image.shape[1] + 2) // (PANEL + 2)
    assert image.shape[1] == count * PANEL + (count - 1) * 2
    return [float(image[8:-8, k * (PANEL + 2) + 8:k * (PANEL + 2) + PANEL - 8].mean()) for k in range(count)]


@pytest.fixture(scope="module")
def page(controlled_checkpoint, eval_data, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("gallery")
    rc, _, _ = run_evaluate([str(controlled_checkpoint), "--data", str(eval_data), "--split", "test",
                             "--out", str(out), "--workers", "0", "--bootstrap", "0"])
    assert rc == 0
    return (out / "report.html").read_text()


def test_one_image_per_shown_mistake_with_its_labels(page):
    mistakes = [f for f in figures_of(page) if f["kind"] == "mistake"]
    assert sorted((f["true"], f["predicted"]) for f in mistakes) == [
        ("bravo", "delta"), ("charlie", "alpha"), ("charlie", "alpha")]
    assert [(f["true"], f["predicted"]) for f in mistakes][:2] == [("charlie", "alpha")] * 2  # most frequent pair first
    for f in mistakes:
        assert len(f["images"]) == 1
        assert f"true {f['true']}" in f["text"] and f"predicted {f['predicted']}" in f["text"]
    texts = {f["text"].split("%)")[1].strip().rsplit("/", 2)[-2:][1]: f for f in mistakes}  # by file name
    assert set(texts) == {"c1.mp4", "c2.mp4", "mixed.mp4"}
    assert "(66.7%)" in texts["mixed.mp4"]["text"]  # the video-level confidence: 2 of 3 clips said delta
    # the strip shows the frames the model saw: mixed is delta-grey, bravo-grey (its centre clip), delta-grey
    assert panels(texts["mixed.mp4"]["images"][0]) == pytest.approx(
        [BRIGHTNESS["delta"], BRIGHTNESS["bravo"], BRIGHTNESS["delta"]], abs=3)
    assert panels(texts["c1.mp4"]["images"][0]) == pytest.approx([BRIGHTNESS["charlie"]] * 3, abs=3)
    assert "3 video(s) misclassified; showing 3" in page


def test_least_confident_correct_videos(page):
    unsure = [f for f in figures_of(page) if f["kind"] == "unsure"]
    assert sorted(f["true"] for f in unsure) == ["alpha", "alpha", "bravo", "delta"]  # 2 per class at most
    assert all(f["true"] == f["predicted"] and len(f["images"]) == 1 for f in unsure)
    assert page.count('src="data:image/jpeg;base64,') == 3 + 4
    assert page.count("data:image/png;base64,") == 2  # the two figures, as before


def test_caps_and_the_page_says_so(controlled_checkpoint, eval_data, tmp_path):
    rc, _, _ = run_evaluate([str(controlled_checkpoint), "--data", str(eval_data), "--split", "test",
                             "--out", str(tmp_path), "--workers", "0", "--bootstrap", "0", "--gallery-per-pair", "1",
                             "--gallery-correct", "0"])
    assert rc == 0
    page = (tmp_path / "report.html").read_text()
    mistakes = [f for f in figures_of(page) if f["kind"] == "mistake"]
    assert [(f["true"], f["predicted"]) for f in mistakes] == [("charlie", "alpha"), ("bravo", "delta")]
    assert "3 video(s) misclassified; showing 2: at most 1 per true/predicted pair" in page
    assert not [f for f in figures_of(page) if f["kind"] == "unsure"]
    rc, _, _ = run_evaluate([str(controlled_checkpoint), "--data", str(eval_data), "--split", "test",
                             "--out", str(tmp_path / "none"), "--workers", "0", "--bootstrap", "0", "--no-gallery"])
    assert rc == 0 and "data:image/jpeg" not in (tmp_path / "none" / "report.html").read_text()


def test_select_gallery_caps_a_large_evaluation():
    """20,000 videos, 400 classes, 30% wrong: the gallery stays at 150 mistakes and 100 correct videos."""
    classes = [f"class{i}" for i in range(400)]
    predictions = []
    for i in range(20_000):
        true = classes[i % 400]
        wrong = i % 10 < 3
        predictions.append({"video": f"v{i}.mp4", "true": true, "predicted": classes[(i + 1 + i % 3) % 400] if wrong
                            else true, "confidence": (i % 97) / 97})
    mistakes, unsure = select_gallery(predictions, GalleryCaps())
    assert len(mistakes) == 150 and len(unsure) == 100
    assert all(predictions[i]["true"] != predictions[i]["predicted"] for i in mistakes)
    pairs = [(predictions[i]["true"], predictions[i]["predicted"]) for i in mistakes]
    assert max(pairs.count(p) for p in set(pairs)) <= 3
    confidences = [predictions[i]["confidence"] for i in unsure]
    assert confidences == sorted(confidences)


def test_render_gallery_escapes_and_reports_a_video_that_did_not_decode():
    items = [GalleryItem("mistake", "<b>evil</b>.mp4", 'say "hi"', "walk & run", 0.5, [1, 2], b"\xff\xd8fake"),
             GalleryItem("mistake", "gone.mp4", "a", "b", 0.9, note="file does not exist")]
    text = render_gallery(items, [], total_mistakes=2, caps=GalleryCaps(), strip_note="")
    assert "<b>evil</b>" not in text and "&lt;b&gt;evil&lt;/b&gt;.mp4" in text
    assert 'data-true="say &quot;hi&quot;"' in text and "walk &amp; run" in text
    assert text.count("<img") == 1 and "no frames: file does not exist" in text


def test_segments_of_a_recording_are_evaluated_and_shown_from_their_own_frames(controlled_checkpoint, tmp_path):
    """A list of two segments of one recording (charlie-grey 0-0.8 s, then bravo-grey 0.8-1.6 s): each is
    evaluated on its own frames, named with its span, and its strip shows its own frames."""
    write_grey_video(tmp_path / "rec.mp4", [BRIGHTNESS["charlie"]] * 20 + [BRIGHTNESS["bravo"]] * 20)
    (tmp_path / "segments.csv").write_text("path,label,start,end\nrec.mp4,charlie,0,0.8\nrec.mp4,bravo,0.8,1.6\n")
    out = tmp_path / "eval"
    rc, _, _ = run_evaluate([str(controlled_checkpoint), "--data", str(tmp_path / "segments.csv"), "--out", str(out),
                             "--workers", "0", "--bootstrap", "0"])
    assert rc == 0
    with open(out / "predictions.csv", newline="") as f:
        predictions = {Path(r["video"]).name: r for r in csv.DictReader(f)}
    assert predictions["rec.mp4 [0-0.8 s]"]["predicted"] == "alpha"  # charlie is taken for alpha
    assert predictions["rec.mp4 [0.8-1.6 s]"]["predicted"] == "bravo"
    per_video = json.loads((out / "report.json").read_text())["per_video"]
    assert [v["span"] for v in per_video] == ["0-0.8 s", "0.8-1.6 s"]
    assert per_video[0]["frame_indices"] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]
    assert per_video[1]["frame_indices"] == [[20, 21, 22, 23], [28, 29, 30, 31], [36, 37, 38, 39]]
    figures = figures_of((out / "report.html").read_text())
    mistake = next(f for f in figures if f["kind"] == "mistake")
    assert (mistake["true"], mistake["predicted"]) == ("charlie", "alpha") and "[0-0.8 s]" in mistake["text"]
    assert panels(mistake["images"][0]) == pytest.approx([BRIGHTNESS["charlie"]] * 3, abs=3)
    correct = next(f for f in figures if f["kind"] == "unsure")
    assert panels(correct["images"][0]) == pytest.approx([BRIGHTNESS["bravo"]] * 3, abs=3)
