"""The report's gallery: which videos to show (mistakes, least confident correct ones) and their HTML.

No torch and no decoding here: `select_gallery` picks videos from the predictions, the caller
(tools/evaluate.py, through videoft.data.thumbnails) decodes a JPEG strip for each, and
`render_gallery` turns them into HTML with the images embedded as data URIs, so the report stays
one file. The caps keep a 20k-video evaluation's page to a few MB (about 10-20 KB per strip).
"""
from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GalleryCaps:
    """How many videos the gallery shows (the page states these numbers)."""

    per_pair: int = 3            # mistakes per (true, predicted) pair: the most confident ones
    max_mistakes: int = 150      # mistakes in all, most frequent pairs first
    correct_per_class: int = 2   # least confident correct videos per class
    max_correct: int = 100


@dataclass
class GalleryItem:
    kind: str                    # "mistake" or "unsure"
    video: str                   # the path (with its span for a segment of a long recording)
    true: str
    predicted: str
    confidence: float            # the video-level probability of the predicted class
    frames: list[int] = field(default_factory=list)  # the frames the strip shows
    image: bytes | None = None   # JPEG strip; None when the video did not decode again
    note: str = ""               # why there is no image


def select_gallery(predictions: Sequence[dict], caps: GalleryCaps = GalleryCaps()) -> tuple[list[int], list[int]]:
    """Indices of the mistakes and of the least confident correct predictions to show.

    predictions: {video, true, predicted, confidence} per video (as for predictions.csv).
    Mistakes: pairs in order of frequency (ties by name), within a pair the most confident
    first (the most instructive), `per_pair` each, `max_mistakes` in all. Correct: per class the
    `correct_per_class` least confident, `max_correct` in all, least confident first.
    """
    pairs: dict[tuple[str, str], list[int]] = {}
    correct: dict[str, list[int]] = {}
    for i, p in enumerate(predictions):
        if p["true"] != p["predicted"]:
            pairs.setdefault((p["true"], p["predicted"]), []).append(i)
        else:
            correct.setdefault(p["true"], []).append(i)
    mistakes: list[int] = []
    for _, members in sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        members = sorted(members, key=lambda i: (-predictions[i]["confidence"], predictions[i]["video"]))
        mistakes += members[: caps.per_pair]
    unsure = [i for name in sorted(correct) for i in
              sorted(correct[name], key=lambda i: (predictions[i]["confidence"], predictions[i]["video"]))
              [: caps.correct_per_class]]
    unsure = sorted(unsure, key=lambda i: (predictions[i]["confidence"], predictions[i]["video"]))
    return mistakes[: caps.max_mistakes], unsure[: caps.max_correct]


GALLERY_CSS = """.gallery{display:flex;flex-direction:column;gap:6px;margin:.5em 0 1.5em}
.gallery figure{margin:0;padding:4px 6px;border:1px solid #ddd;display:flex;gap:10px;align-items:center}
.gallery img{border:0;height:64px;max-width:none;flex:none}
.gallery figcaption{font-size:13px;line-height:1.35;min-width:0}
.gallery .path{color:#666;font-size:12px;word-break:break-all}.gallery .wrong{color:#b00020}
.gallery .right{color:#1b5e20}.gallery .missing{color:#b00020;font-style:italic}"""


def render_gallery(mistakes: Sequence[GalleryItem], unsure: Sequence[GalleryItem], *, total_mistakes: int,
                   caps: GalleryCaps, strip_note: str) -> str:
    """The two gallery sections as HTML (one embedded image per shown video)."""
    e = html.escape
    shown = (f"{total_mistakes} video(s) misclassified; showing {len(mistakes)}: at most {caps.per_pair} per "
             f"true/predicted pair and {caps.max_mistakes} in all, most frequent pairs first, the most confident "
             f"mistakes of each pair first.")
    parts = ["<h2>Mistakes (video level)</h2>", f"<p>{e(shown)} {e(strip_note)}</p>"]
    parts.append(_figures(mistakes) if mistakes else "<p>No mistakes.</p>")
    parts.append("<h2>Least confident correct videos</h2>")
    parts.append(f"<p>{e(f'Per class the {caps.correct_per_class} correct videos with the lowest confidence, at most {caps.max_correct} in all, least confident first.')}</p>")  # noqa: E501
    parts.append(_figures(unsure) if unsure else "<p>None.</p>")
    return "\n".join(parts)


def _figures(items: Sequence[GalleryItem]) -> str:
    e = html.escape
    out = ['<div class="gallery">']
    for item in items:
        verdict = "wrong" if item.kind == "mistake" else "right"
        caption = (f'true <b>{e(item.true)}</b> &rarr; predicted <b class="{verdict}">{e(item.predicted)}</b> '
                   f'({100 * item.confidence:.1f}%)<br><span class="path">{e(item.video)}</span>')
        if item.image is not None:
            frames = ", ".join(str(f) for f in item.frames)
            uri = "data:image/jpeg;base64," + base64.b64encode(item.image).decode("ascii")
            picture = (f'<img class="strip" src="{uri}" alt="frames {e(frames)} of {e(item.video)}" '
                       f'title="frames {e(frames)}">')
        else:
            picture = f'<span class="missing">no frames: {e(item.note)}</span>'
        out.append(f'<figure class="{e(item.kind)}" data-true="{e(item.true)}" data-predicted="{e(item.predicted)}">'
                   f"{picture}<figcaption>{caption}</figcaption></figure>")
    out.append("</div>")
    return "\n".join(out)
