"""Timelines of long videos: merging window predictions into segments, and scoring segments against
annotated events (per-class precision and recall at a temporal IoU threshold). No torch.

Matching follows the detection convention (THUMOS / ActivityNet): within a video and a class,
predicted segments are taken in order of decreasing probability, and each is matched to the
unmatched annotated segment of the same class with the highest temporal IoU, if that IoU
reaches the threshold. A match is a true positive; an unmatched prediction a false positive;
an unmatched annotation a miss.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Segment:
    start: float
    end: float
    label: str
    probability: float = 1.0


def merge_segments(windows: Iterable[Mapping]) -> list[Segment]:
    """Merge consecutive windows with the same top label (probability: their mean)."""
    segments: list[Segment] = []
    counts: list[int] = []
    for w in windows:
        if segments and segments[-1].label == w["label"] and w["start"] <= segments[-1].end:
            seg = segments[-1]
            seg.probability = (seg.probability * counts[-1] + w["probability"]) / (counts[-1] + 1)
            seg.end = max(seg.end, w["end"])
            counts[-1] += 1
        else:
            segments.append(Segment(w["start"], w["end"], w["label"], w["probability"]))
            counts.append(1)
    return segments


def segments_by_video(events: Iterable) -> dict[str, list[Segment]]:
    """Annotated segments per video from events with `video`, `label`, `start`, `end` (seconds)."""
    out: dict[str, list[Segment]] = {}
    for e in events:
        out.setdefault(e.video, []).append(Segment(float(e.start), float(e.end), e.label))
    return out


def read_timeline_csv(path: str | Path) -> dict[str, list[Segment]]:
    """Predicted segments per video from a timeline CSV (`video,start,end,label,probability`, as written by
    `tools/infer.py --window ... --csv`): consecutive windows with the same label are merged."""
    path = Path(path)
    windows: dict[str, list[dict]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"video", "start", "end", "label", "probability"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)} (expected video,start,end,label,probability)")
        for lineno, row in enumerate(reader, 2):
            try:
                windows.setdefault(row["video"], []).append(
                    {"start": float(row["start"]), "end": float(row["end"]), "label": row["label"],
                     "probability": float(row["probability"])})
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
    return {v: merge_segments(sorted(w, key=lambda x: x["start"])) for v, w in windows.items()}


def align_videos(predicted: Mapping[str, Sequence[Segment]],
                 annotated: Mapping[str, Sequence[Segment]]) -> dict[str, Sequence[Segment]]:
    """`predicted` keyed like `annotated`: the same file (resolved path), else the same unique file name."""
    by_path = {os.path.realpath(v): v for v in annotated}
    names: dict[str, list[str]] = {}
    for v in annotated:
        names.setdefault(os.path.basename(v), []).append(v)
    out: dict[str, Sequence[Segment]] = {}
    rest = []
    for video, segments in predicted.items():
        key = by_path.get(os.path.realpath(video))
        if key is None:
            rest.append((video, segments))
        else:
            out[key] = segments
    for video, segments in rest:  # by file name only where that names one annotated video not yet matched
        candidates = names.get(os.path.basename(video), [])
        key = candidates[0] if len(candidates) == 1 and candidates[0] not in out else video
        out.setdefault(key, segments)
    return out


def temporal_iou(a: Segment, b: Segment) -> float:
    """Intersection over union of two time intervals (0 when they do not overlap)."""
    inter = max(0.0, min(a.end, b.end) - max(a.start, b.start))
    union = (a.end - a.start) + (b.end - b.start) - inter
    return inter / union if union > 0 else 0.0


def match_segments(predicted: Sequence[Segment], annotated: Sequence[Segment],
                   iou_threshold: float) -> list[tuple[int, int, float]]:
    """(predicted index, annotated index, IoU) of each match in one video, same label only (see module doc)."""
    order = sorted(range(len(predicted)), key=lambda i: (-predicted[i].probability, predicted[i].start))
    taken: set[int] = set()
    matches = []
    for i in order:
        best, best_iou = None, iou_threshold
        for j, ann in enumerate(annotated):
            if j in taken or ann.label != predicted[i].label:
                continue
            iou = temporal_iou(predicted[i], ann)
            if iou >= best_iou and (best is None or iou > best_iou):
                best, best_iou = j, iou
        if best is not None:
            taken.add(best)
            matches.append((i, best, best_iou))
    return matches


def evaluate_timeline(predicted: Mapping[str, Sequence[Segment]], annotated: Mapping[str, Sequence[Segment]], *,
                      iou_threshold: float = 0.5, ignore_labels: Iterable[str] = (),
                      min_probability: float = 0.0) -> dict:
    """Per-class precision/recall of predicted segments against annotated ones, over the videos in both.

    `ignore_labels`: classes left out on both sides (a background class). Predictions under
    `min_probability` are dropped first. Returns {"iou_threshold", "videos", "per_class": [{class,
    annotated, predicted, matched, precision, recall, f1}], "overall": {...micro...},
    "mean_precision", "mean_recall" (over classes with annotations), "unmatched_videos"}.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    ignore = set(ignore_labels)
    videos = sorted(set(predicted) & set(annotated))
    counts: dict[str, list[int]] = {}  # class -> [annotated, predicted, matched]
    for video in videos:
        preds = [s for s in predicted[video] if s.label not in ignore and s.probability >= min_probability]
        anns = [s for s in annotated[video] if s.label not in ignore]
        for s in anns:
            counts.setdefault(s.label, [0, 0, 0])[0] += 1
        for s in preds:
            counts.setdefault(s.label, [0, 0, 0])[1] += 1
        for i, _, _ in match_segments(preds, anns, iou_threshold):
            counts[preds[i].label][2] += 1
    per_class = [_scores(name, *counts[name]) for name in sorted(counts)]
    total = [sum(c[k] for c in counts.values()) for k in range(3)]
    with_annotations = [r for r in per_class if r["annotated"]]
    return {
        "iou_threshold": iou_threshold, "videos": videos, "per_class": per_class,
        "overall": _scores("all", *total),
        "mean_precision": _mean([r["precision"] for r in with_annotations]),
        "mean_recall": _mean([r["recall"] for r in with_annotations]),
        "unmatched_videos": {"predicted_only": sorted(set(predicted) - set(annotated)),
                             "annotated_only": sorted(set(annotated) - set(predicted))},
    }


def _scores(name: str, annotated: int, predicted: int, matched: int) -> dict:
    precision = matched / predicted if predicted else None
    recall = matched / annotated if annotated else None
    f1 = (2 * precision * recall / (precision + recall) if precision and recall else
          (0.0 if precision is not None and recall is not None else None))
    return {"class": name, "annotated": annotated, "predicted": predicted, "matched": matched,
            "precision": precision, "recall": recall, "f1": f1}


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def format_timeline_scores(result: dict) -> str:
    """The per-class table for the terminal."""
    def pct(v: float | None) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"

    rows = [["class", "annotated", "predicted", "matched", "precision", "recall", "F1"]]
    for r in result["per_class"] + [result["overall"]]:
        rows.append([r["class"], str(r["annotated"]), str(r["predicted"]), str(r["matched"]),
                     pct(r["precision"]), pct(r["recall"]), pct(r["f1"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(-1, "-" * len(lines[0]))
    lines.append(f"temporal IoU >= {result['iou_threshold']:g}, {len(result['videos'])} video(s); mean over "
                 f"classes: precision {pct(result['mean_precision'])}, recall {pct(result['mean_recall'])}")
    return "\n".join(lines)
