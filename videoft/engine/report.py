"""Evaluation report files: report.json, two CSVs, two PNGs and one self-contained HTML page.

No torch import. matplotlib is imported inside the plotting functions and used
through `matplotlib.figure.Figure` (Agg canvas, no pyplot): headless, touches no
global backend state, and leaves no figures open.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from videoft.engine.gallery import GALLERY_CSS

# Top-level keys of report.json: expected type(s) and meaning.
REPORT_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "checkpoint": ((str,), "path of the evaluated checkpoint"),
    "data": ((str,), "video folder or list file that was evaluated"),
    "split": ((str,), "split name, e.g. 'val' or 'test'"),
    "num_videos": ((int,), "videos evaluated (decoded successfully)"),
    "num_failed": ((int,), "videos that could not be decoded; equals len(failed)"),
    "failed": ((list,), "[{path, reason}] for each video that could not be decoded"),
    "clip_level": ((dict,), "compute_metrics dict on single-view predictions (e.g. centre view)"),
    "video_level": ((dict,), "compute_metrics dict, view probabilities averaged per video"),
    "views": ((dict,), "{clips, crops}: temporal clips x spatial crops per video"),
    "class_names": ((list,), "class names; position = label index"),
    "per_video": ((list,), "[{path, label, frame_indices, crops}], one per evaluated video"),
}
# Keys of a compute_metrics dict (clip_level, video_level) and their types.
METRICS_KEYS: dict[str, tuple[type, ...]] = {
    "num_videos": (int,),
    "top1": (int, float),
    "top5": (int, float),
    "mean_class_accuracy": (int, float),
    "top1_ci95": (list, type(None)),  # None when computed with n_boot=0
    "mean_class_accuracy_ci95": (list, type(None)),
    "per_class": (list,),
    "confusion_matrix": (list,),
    "most_confused": (list,),
}
# Per-video entries: frame_indices is one list of frame indices per temporal clip;
# crops is the number of spatial crops or their names.
PER_VIDEO_KEYS: dict[str, tuple[type, ...]] = {
    "path": (str,), "label": (int,), "frame_indices": (list,), "crops": (int, list),
}
PREDICTION_COLUMNS = ("video", "true", "predicted", "confidence")
REPORT_FILES = (
    "report.json", "per_class.csv", "predictions.csv",
    "confusion_matrix.png", "per_class_accuracy.png", "report.html",
)
_MAX_ITEM_PROBLEMS = 5  # per list, so one systematic mistake doesn't print 10k lines
_ANNOTATE_MAX_CLASSES = 30
_MAX_TICK_CHARS = 40


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance, except that bool does not count as int."""
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _check_fields(item: Any, spec: dict[str, tuple[type, ...]], where: str) -> list[str]:
    """Problems with a dict's required keys and their types."""
    if not isinstance(item, dict):
        return [f"{where}: expected a dict, got {type(item).__name__}"]
    problems = []
    for key, types in spec.items():
        if key not in item:
            problems.append(f"{where}: missing key {key!r}")
        elif not _is(item[key], types):
            names = " or ".join(t.__name__ for t in types)
            problems.append(f"{where}.{key}: expected {names}, got {type(item[key]).__name__}")
    return problems


def _check_items(items: list, spec: dict[str, tuple[type, ...]], where: str) -> list[str]:
    """Problems with each dict of a list, capped at a few items."""
    problems, bad = [], 0
    for i, item in enumerate(items):
        item_problems = _check_fields(item, spec, f"{where}[{i}]")
        bad += bool(item_problems)
        if bad <= _MAX_ITEM_PROBLEMS:
            problems += item_problems
    if bad > _MAX_ITEM_PROBLEMS:
        problems.append(f"{where}: {bad - _MAX_ITEM_PROBLEMS} more malformed entries")
    return problems


def _validate_metrics(metrics: dict, num_classes: int, where: str) -> list[str]:
    """Problems with one compute_metrics dict."""
    problems = _check_fields(metrics, METRICS_KEYS, where)
    if problems:
        return problems
    for key in ("top1_ci95", "mean_class_accuracy_ci95"):
        ci = metrics[key]
        if ci is not None and (len(ci) != 2 or not all(_is(v, (int, float)) for v in ci)):
            problems.append(f"{where}.{key}: expected [low, high], got {ci!r}")
    per_class_spec = {"class": (str,), "index": (int,), "support": (int,), "correct": (int,),
                      "accuracy": (int, float, type(None))}
    problems += _check_items(metrics["per_class"], per_class_spec, f"{where}.per_class")
    if len(metrics["per_class"]) != num_classes:
        problems.append(f"{where}.per_class: {len(metrics['per_class'])} entries "
                        f"for {num_classes} classes")
    cm = metrics["confusion_matrix"]
    if len(cm) != num_classes or any(not isinstance(r, list) or len(r) != num_classes for r in cm):
        problems.append(f"{where}.confusion_matrix: expected {num_classes} x {num_classes}")
    pair_spec = {"true": (str,), "predicted": (str,), "count": (int,),
                 "fraction_of_true": (int, float)}
    return problems + _check_items(metrics["most_confused"], pair_spec, f"{where}.most_confused")


def validate_report(report: dict) -> list[str]:
    """Every problem with a report (missing keys, wrong types, inconsistent counts); [] if valid."""
    if not isinstance(report, dict):
        return [f"report: expected a dict, got {type(report).__name__}"]
    problems = _check_fields(report, {k: t for k, (t, _) in REPORT_KEYS.items()}, "report")
    ok = {k for k, (t, _) in REPORT_KEYS.items() if k in report and _is(report[k], t)}
    if "class_names" in ok:
        if not all(isinstance(n, str) for n in report["class_names"]):
            problems.append("report.class_names: every class name must be a str")
        for level in ("clip_level", "video_level"):
            if level in ok:
                problems += _validate_metrics(report[level], len(report["class_names"]),
                                              f"report.{level}")
    if "failed" in ok:
        problems += _check_items(report["failed"], {"path": (str,), "reason": (str,)},
                                 "report.failed")
        if "num_failed" in ok and report["num_failed"] != len(report["failed"]):
            problems.append(f"report.num_failed={report['num_failed']} but "
                            f"{len(report['failed'])} failed entries")
    if "views" in ok:
        problems += _check_fields(report["views"], {"clips": (int,), "crops": (int,)},
                                  "report.views")
    if "per_video" in ok:
        problems += _check_items(report["per_video"], PER_VIDEO_KEYS, "report.per_video")
        if "num_videos" in ok and report["num_videos"] != len(report["per_video"]):
            problems.append(f"report.num_videos={report['num_videos']} but "
                            f"{len(report['per_video'])} per_video entries")
    try:
        json.dumps(report, allow_nan=False)
    except (TypeError, ValueError) as err:  # numpy scalars, NaN, non-str keys ...
        problems.append(f"report: not JSON-serialisable ({err})")
    return problems


def _pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage string; '-' for None (class without videos)."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _ci(ci: Sequence[float] | None) -> str:
    """A [low, high] fraction interval as '[a, b]' in percent; '-' if not computed."""
    return "-" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _topk_name(report: dict) -> str:
    """'top-5', or 'top-C' when there are fewer than five classes."""
    return f"top-{min(5, len(report['class_names']))}"


def _summary_rows(report: dict) -> list[list[str]]:
    """Header + clip and video rows of the summary table."""
    rows = [["level", "n", "top-1", "95% CI", _topk_name(report), "mean-class", "95% CI"]]
    for level in ("clip", "video"):
        m = report[f"{level}_level"]
        rows.append([level, str(m["num_videos"]), _pct(m["top1"]), _ci(m["top1_ci95"]),
                     _pct(m["top5"]), _pct(m["mean_class_accuracy"]),
                     _ci(m["mean_class_accuracy_ci95"])])
    return rows


def _per_class_rows(report: dict) -> list[list[str]]:
    """Header + one row per class: support and correct (video level), clip and video accuracy."""
    rows = [["class", "support", "correct", "clip acc", "video acc"]]
    for clip, video in zip(report["clip_level"]["per_class"], report["video_level"]["per_class"]):
        rows.append([video["class"], str(video["support"]), str(video["correct"]),
                     _pct(clip["accuracy"]), _pct(video["accuracy"])])
    return rows


def _align(rows: list[list[str]]) -> list[str]:
    """Rows as text lines: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]


def format_summary(report: dict) -> str:
    """Plain-text summary for the terminal: run info, accuracy table with CIs, per-class table."""
    views = report["views"]
    lines = [
        f"checkpoint: {report['checkpoint']}",
        f"data:       {report['data']} (split: {report['split']})",
        f"videos:     {report['num_videos']} evaluated, {report['num_failed']} failed; "
        f"views: {views['clips']} clips x {views['crops']} crops",
        "",
        *_align(_summary_rows(report)),
        "",
        *_align(_per_class_rows(report)),
    ]
    return "\n".join(lines)


def _tick_label(name: str) -> str:
    """A class name shortened for an axis tick."""
    return name if len(name) <= _MAX_TICK_CHARS else name[: _MAX_TICK_CHARS - 1] + "…"


def _text_width_in(labels: Sequence[str], fontsize: float) -> float:
    """Width in inches of the widest label, measured with the font so layout needs no tight bbox."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    font = FontProperties(size=fontsize)
    width_pt = max((text_to_path.get_text_width_height_descent(s, font, ismath=False)[0]
                    for s in labels), default=0.0)
    return width_pt / 72 + 0.1


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: Path, *,
                          title: str = "") -> None:
    """Save a row-normalised confusion matrix (counts in cells up to 30 classes) as a PNG."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    n = len(class_names)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # rows without videos stay 0
    cell = float(np.clip(8.0 / n, 0.2, 0.6))  # inches per cell
    font = float(np.clip(cell * 72 * 0.55, 6, 10))
    rotation = 45 if n <= 30 else 90
    labels = [_tick_label(c) for c in class_names]
    label_w = _text_width_in(labels, font)
    left, bottom = label_w + 0.6, label_w * math.sin(math.radians(rotation)) + 0.7
    side, top, right = n * cell, 0.6, 1.3
    width = max(left + side + right, _text_width_in([title], font + 2) + 0.4)
    fig = Figure(figsize=(width, bottom + side + top), dpi=110)
    w, h = fig.get_size_inches()
    ax = fig.add_axes((left / w, bottom / h, side / w, side / h))
    cax = fig.add_axes(((left + side + 0.2) / w, bottom / h, 0.2 / w, side / h))
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, cax=cax).set_label("fraction of true class", fontsize=font)
    cax.tick_params(labelsize=font)
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels, rotation=rotation, fontsize=font,
                  ha="right" if rotation == 45 else "center",
                  rotation_mode="anchor" if rotation == 45 else "default")
    ax.set_yticks(ticks, labels, fontsize=font)
    ax.set_xlabel("predicted", fontsize=font + 1)
    ax.set_ylabel("true", fontsize=font + 1)
    fig.text(0.5, 1 - 0.2 / h, title, ha="center", va="top", fontsize=font + 2)
    if n <= _ANNOTATE_MAX_CLASSES:
        ax.set_xticks(ticks - 0.5, minor=True)
        ax.set_yticks(ticks - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=font - 1,
                    color="white" if norm[i, j] > 0.55 else "black")
    fig.savefig(path)  # margins are measured above; "tight" would draw twice


def plot_per_class_accuracy(report: dict, path: Path) -> None:
    """Save per-class video-level accuracy as sorted horizontal bars (worst on top) as a PNG."""
    from matplotlib.figure import Figure

    video, clip = report["video_level"]["per_class"], report["clip_level"]["per_class"]
    # Worst first; classes without videos last.
    order = sorted(range(len(video)), key=lambda i: (
        video[i]["accuracy"] is None, video[i]["accuracy"] or 0.0, video[i]["class"]))
    n = len(order)
    row = float(np.clip(3.0 / n, 0.2, 0.4))  # inches per bar
    font = float(np.clip(row * 72 * 0.55, 6, 10))
    labels = [f"{_tick_label(video[i]['class'])} (n={video[i]['support']})" for i in order]
    left = _text_width_in(labels, font) + 0.3
    plot_w, plot_h, top, bottom = 6.0, n * row, 0.9, 0.6
    fig = Figure(figsize=(left + plot_w + 0.3, bottom + plot_h + top), dpi=110)
    w, h = fig.get_size_inches()
    ax = fig.add_axes((left / w, bottom / h, plot_w / w, plot_h / h))
    y = np.arange(n)
    acc = np.array([100 * (video[i]["accuracy"] or 0.0) for i in order])
    ax.barh(y, acc, height=0.7, color="tab:blue", label="video-level")
    clip_acc = [100 * clip[i]["accuracy"] if clip[i]["accuracy"] is not None else np.nan
                for i in order]
    ax.plot(clip_acc, y, "|", color="black", markersize=row * 72 * 0.8, markeredgewidth=1.5,
            label="clip-level")
    for yi, i in zip(y, order):
        a = video[i]["accuracy"]
        ax.text((100 * a if a is not None else 0) + 1, yi, _pct(a, 0) if a is not None
                else "no videos", va="center", fontsize=font - 1)
    mean = report["video_level"]["mean_class_accuracy"]
    ax.axvline(100 * mean, color="tab:red", linestyle="--", linewidth=1,
               label=f"mean-class {_pct(mean)}")
    ax.set_yticks(y, labels, fontsize=font)
    ax.set_ylim(n - 0.5, -0.5)  # first (worst) class on top
    ax.set_xlim(0, 112)
    ax.set_xticks(range(0, 101, 20))
    ax.tick_params(axis="x", labelsize=font)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("accuracy (%)", fontsize=font + 1)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False, fontsize=font,
              markerscale=min(1.0, 10 / (row * 72 * 0.8)))
    fig.text(0.5, 1 - 0.15 / h, "Per-class accuracy (worst first)", ha="center", va="top",
             fontsize=font + 2)
    fig.savefig(path)  # margins are measured above; "tight" would draw twice


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd}dt{font-weight:bold}"""


def _html_table(rows: list[list[str]], text_columns: int = 1) -> str:
    """Header + body rows as an escaped HTML table; columns after `text_columns` right-aligned."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td{' class=n' if j >= text_columns else ''}>"
                                    f"{html.escape(c)}</td>" for j, c in enumerate(r))
                   + "</tr>\n" for r in rows[1:])
    return f"<table><tr>{head}</tr>\n{body}</table>"


def _data_uri(path: Path) -> str:
    """A PNG file as a base64 data URI, so the page has no external files."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(report: dict, images: dict[str, Path], gallery_html: str = "") -> str:
    """The whole report as one self-contained HTML page (all user strings escaped).

    gallery_html: the gallery sections (videoft.engine.gallery.render_gallery), placed last.
    """
    e = html.escape
    views = report["views"]
    pairs = [["true", "predicted", "count", "% of true"]] + [
        [p["true"], p["predicted"], str(p["count"]), _pct(p["fraction_of_true"])]
        for p in report["video_level"]["most_confused"]]
    failed = [["path", "reason"]] + [[f["path"], f["reason"]] for f in report["failed"]]
    figures = "".join(f'<h2>{e(title)}</h2>\n<img alt="{e(title)}" src="{_data_uri(p)}">\n'
                      for title, p in images.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation report</title>
<style>{_CSS}
{GALLERY_CSS}</style></head><body>
<h1>Evaluation report</h1>
<dl><dt>checkpoint</dt><dd>{e(report['checkpoint'])}</dd>
<dt>data</dt><dd>{e(report['data'])} (split: {e(report['split'])})</dd>
<dt>videos</dt><dd>{report['num_videos']} evaluated, {report['num_failed']} failed;
{views['clips']} clips x {views['crops']} crops per video</dd></dl>
<h2>Summary</h2>
{_html_table(_summary_rows(report))}
<h2>Per class</h2>
{_html_table(_per_class_rows(report))}
<h2>Most confused pairs (video level)</h2>
{_html_table(pairs, 2) if len(pairs) > 1 else '<p>No confusions.</p>'}
<h2>Failed videos</h2>
{_html_table(failed, 2) if len(failed) > 1 else '<p>None.</p>'}
{figures}{gallery_html}
</body></html>
"""


def write_report(out_dir: str | Path, *, report: dict, class_names: Sequence[str],
                 predictions: list[dict], gallery_html: str = "") -> dict[str, Path]:
    """Write report.json, CSVs, PNGs and report.html to out_dir; return {file name: path}.

    predictions: one {video, true, predicted, confidence} per video, for predictions.csv.
    gallery_html: the mistakes gallery for report.html (see videoft.engine.gallery).
    """
    problems = validate_report(report)
    if problems:
        raise ValueError("invalid report:\n  " + "\n  ".join(problems))
    if list(class_names) != report["class_names"]:
        raise ValueError("class_names differ from report['class_names']")
    for i, p in enumerate(predictions):
        missing = [c for c in PREDICTION_COLUMNS if c not in p]
        if missing:
            raise ValueError(f"predictions[{i}] lacks {missing}; needs {list(PREDICTION_COLUMNS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in REPORT_FILES}

    paths["report.json"].write_text(json.dumps(report, indent=1, allow_nan=False) + "\n",
                                     encoding="utf-8")
    with paths["per_class.csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "support", "clip_accuracy", "video_accuracy"])
        for clip, video in zip(report["clip_level"]["per_class"],
                               report["video_level"]["per_class"]):
            writer.writerow([video["class"], video["support"],
                             "" if clip["accuracy"] is None else f"{clip['accuracy']:.6f}",
                             "" if video["accuracy"] is None else f"{video['accuracy']:.6f}"])
    with paths["predictions.csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for p in predictions:
            writer.writerow([p["video"], p["true"], p["predicted"], f"{p['confidence']:.6f}"])

    video = report["video_level"]
    plot_confusion_matrix(
        np.array(video["confusion_matrix"]), class_names, paths["confusion_matrix.png"],
        title=f"Video-level confusion matrix ({video['num_videos']} videos, "
              f"top-1 {_pct(video['top1'])})")
    plot_per_class_accuracy(report, paths["per_class_accuracy.png"])
    images = {"Confusion matrix (video level, row-normalised)": paths["confusion_matrix.png"],
              "Per-class accuracy": paths["per_class_accuracy.png"]}
    paths["report.html"].write_text(render_html(report, images, gallery_html), encoding="utf-8")
    return paths
