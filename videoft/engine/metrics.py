"""Classification metrics on numpy arrays: top-k, per-class, confusion, bootstrap CIs.

Pure functions with no torch import, so evaluation reports can be built and
tested cheaply. Ties between equal probabilities go to the lower class index,
the same rule as ``np.argmax``, so top-1 and the confusion matrix always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BOOTSTRAP_METRICS = ("top1", "mean_class")
# Bootstrap index arrays are built in chunks of at most this many elements
# (8 bytes each), so 1000 resamples of a huge test set stay in a few tens of MB.
_BOOT_CHUNK_ELEMENTS = 4_000_000


def _check_probs_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return probs as float [N, C] and labels as int64 [N], or raise ValueError."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape [N, C], got {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must have shape [{probs.shape[0]}], got {labels.shape}")
    labels = _check_indices(labels, probs.shape[1], "labels")
    return probs, labels


def _check_indices(values: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """Return values as int64, or raise ValueError if any is outside [0, num_classes)."""
    values = np.asarray(values)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {values.dtype}")
    values = values.astype(np.int64, copy=False)
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = values[(values < 0) | (values >= num_classes)][0]
        raise ValueError(f"{name} contains {bad}, allowed range is 0..{num_classes - 1}")
    return values


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose true label is among the k highest scores (ties: lower index first)."""
    probs, labels = _check_probs_labels(probs, labels)  # [N, C], [N]
    num_classes = probs.shape[1]
    if not 1 <= k <= num_classes:
        raise ValueError(f"k={k} must be between 1 and the number of classes ({num_classes})")
    if probs.shape[0] == 0:
        return float("nan")
    true_score = probs[np.arange(len(labels)), labels][:, None]  # [N, 1]
    # Rank of the true class in a stable descending sort: classes scoring higher,
    # plus equal-scoring classes with a lower index.
    lower_index = np.arange(num_classes)[None, :] < labels[:, None]  # [N, C]
    rank = (probs > true_score).sum(1) + ((probs == true_score) & lower_index).sum(1)
    return float(np.mean(rank < k))


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class) of softmax probabilities [N, C] (NaN for N = 0).

    A probability that underflowed to 0 counts as float32's smallest normal value (-log = 87.3).
    """
    probs, labels = _check_probs_labels(probs, labels)
    if not len(labels):
        return float("nan")
    true = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(true, np.finfo(np.float32).tiny)).mean())


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Count matrix [C, C] with rows = true class, columns = predicted class."""
    labels = _check_indices(labels, num_classes, "labels")
    preds = _check_indices(preds, num_classes, "preds")
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} must be equal-length 1-D")
    counts = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall of each class and its support; NaN accuracy where a class has no videos."""
    cm = np.asarray(cm)
    support = cm.sum(1).astype(np.int64)  # [C]
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return acc.astype(np.float64), support


def mean_class_accuracy(cm: np.ndarray) -> float:
    """Mean of per-class accuracies over classes that have at least one video."""
    acc, support = per_class_accuracy(cm)
    return float(acc[support > 0].mean()) if (support > 0).any() else float("nan")


def most_confused_pairs(
    cm: np.ndarray, class_names: Sequence[str], top: int = 10
) -> list[dict[str, Any]]:
    """The `top` largest off-diagonal cells, as {true, predicted, count, fraction_of_true}."""
    cm = np.asarray(cm)
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class matrix")
    off = cm.copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = np.nonzero(off)
    counts = off[true_idx, pred_idx]
    # Sort by count descending; np.nonzero is row-major, and a stable sort keeps that order on ties.
    order = np.argsort(-counts, kind="stable")[:top]
    support = cm.sum(1)
    return [
        {
            "true": str(class_names[true_idx[i]]),
            "predicted": str(class_names[pred_idx[i]]),
            "count": int(counts[i]),
            "fraction_of_true": float(counts[i] / support[true_idx[i]]),
        }
        for i in order
    ]


def bootstrap_ci(
    labels: np.ndarray,
    preds: np.ndarray,
    num_classes: int,
    *,
    metric: str = "top1",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of top-1 or mean-class accuracy, resampling videos with replacement.

    For "mean_class" each resample's per-class accuracies are recomputed from its
    own counts; classes absent from a resample are left out of its mean.
    """
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"metric={metric!r}, allowed: {', '.join(BOOTSTRAP_METRICS)}")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be at least 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha} must be strictly between 0 and 1")
    labels = _check_indices(labels, num_classes, "labels")
    preds = _check_indices(preds, num_classes, "preds")
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} must be equal-length 1-D")
    n = len(labels)
    if n == 0:
        raise ValueError("cannot bootstrap a confidence interval over zero videos")

    correct = (labels == preds).astype(np.float64)  # [N]
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))  # [b, N]
        if metric == "top1":
            stats[start : start + b] = correct[idx].mean(1)
            continue
        # One bincount for all resamples: offset each resample's labels by b * C.
        flat = (labels[idx] + (np.arange(b) * num_classes)[:, None]).ravel()
        support = np.bincount(flat, minlength=b * num_classes).reshape(b, num_classes)
        hits = np.bincount(flat, weights=correct[idx].ravel(), minlength=b * num_classes)
        hits = hits.reshape(b, num_classes)
        present = support > 0  # every resample has at least one video, so >= 1 class
        acc = np.where(present, hits / np.maximum(support, 1), 0.0)
        stats[start : start + b] = acc.sum(1) / present.sum(1)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def compute_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All evaluation metrics for [N, C] probabilities, as plain JSON-serialisable Python types.

    n_boot: bootstrap resamples for the 95% CIs; 0 skips them (CIs are None), e.g. for a
    quick validation pass during training.
    """
    probs, labels = _check_probs_labels(probs, labels)
    num_videos, num_classes = probs.shape
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes}-class probabilities")
    if num_videos == 0:
        raise ValueError("cannot compute metrics over zero videos")
    preds = probs.argmax(1)  # [N]
    cm = confusion_matrix(labels, preds, num_classes)
    acc, support = per_class_accuracy(cm)
    if n_boot < 0:
        raise ValueError(f"n_boot={n_boot} must be 0 (no CIs) or positive")
    ci = {
        m: list(bootstrap_ci(labels, preds, num_classes, metric=m, n_boot=n_boot, seed=seed))
        if n_boot else None
        for m in BOOTSTRAP_METRICS
    }
    return {
        "num_videos": int(num_videos),
        "top1": topk_accuracy(probs, labels, 1),
        "top5": topk_accuracy(probs, labels, min(5, num_classes)),
        "mean_class_accuracy": mean_class_accuracy(cm),
        "top1_ci95": ci["top1"],
        "mean_class_accuracy_ci95": ci["mean_class"],
        "per_class": [
            {
                "class": str(name),
                "index": i,
                "accuracy": None if support[i] == 0 else float(acc[i]),
                "support": int(support[i]),
                "correct": int(cm[i, i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": cm.tolist(),
        "most_confused": most_confused_pairs(cm, class_names),
    }
