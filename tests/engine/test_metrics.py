"""Metrics on hand-computed cases, bootstrap CI properties, view averaging."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from videoft.engine.metrics import (
    bootstrap_ci,
    compute_metrics,
    confusion_matrix,
    mean_class_accuracy,
    most_confused_pairs,
    per_class_accuracy,
    topk_accuracy,
)

NAMES3 = ["a", "b", "c"]


def one_hot(preds: list[int], num_classes: int, *, second: list[int] | None = None) -> np.ndarray:
    """Probabilities peaked on preds (0.7), with optional runner-up classes (0.2)."""
    probs = np.full((len(preds), num_classes), 0.1 / num_classes)
    probs[np.arange(len(preds)), preds] = 0.7
    if second is not None:
        probs[np.arange(len(preds)), second] = 0.2
    return probs / probs.sum(1, keepdims=True)


def test_perfect_predictions():
    labels = np.array([0, 1, 2, 0, 1, 2])
    m = compute_metrics(one_hot(labels.tolist(), 3), labels, NAMES3, n_boot=200)
    assert m["top1"] == m["top5"] == m["mean_class_accuracy"] == 1.0
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert m["top1_ci95"] == m["mean_class_accuracy_ci95"] == [1.0, 1.0]
    assert m["most_confused"] == []
    assert [c["accuracy"] for c in m["per_class"]] == [1.0, 1.0, 1.0]


def test_class_always_predicted_as_another():
    # Class 2 is always predicted as 0 (runner-up: its own class); classes 0 and 1 are right.
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    preds = [0, 0, 1, 1, 1, 0, 0]
    second = [1, 1, 0, 0, 0, 2, 2]
    m = compute_metrics(one_hot(preds, 3, second=second), labels, NAMES3, n_boot=200)
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 3, 0], [2, 0, 0]]
    assert [c["accuracy"] for c in m["per_class"]] == [1.0, 1.0, 0.0]
    assert [c["support"] for c in m["per_class"]] == [2, 3, 2]
    assert [c["correct"] for c in m["per_class"]] == [2, 3, 0]
    assert m["top1"] == pytest.approx(5 / 7)
    assert m["mean_class_accuracy"] == pytest.approx(2 / 3)
    # Only 3 classes, so "top5" is top-3: always correct.
    assert m["top5"] == 1.0
    assert topk_accuracy(one_hot(preds, 3, second=second), labels, 2) == 1.0
    assert m["most_confused"] == [
        {"true": "c", "predicted": "a", "count": 2, "fraction_of_true": 1.0}
    ]


def test_zero_support_class_is_none_and_excluded_from_mean():
    labels = np.array([0, 0, 1, 1])
    probs = one_hot([0, 1, 1, 1], 3)
    m = compute_metrics(probs, labels, NAMES3, n_boot=200)
    assert m["per_class"][2] == {"class": "c", "index": 2, "accuracy": None, "support": 0,
                                 "correct": 0}
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    acc, support = per_class_accuracy(np.array(m["confusion_matrix"]))
    assert math.isnan(acc[2]) and support.tolist() == [2, 2, 0]
    json.dumps(m, allow_nan=False)  # plain Python types only


def test_metric_functions_directly():
    cm = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 2, 1, 1]), 4)
    assert cm.dtype == np.int64 and cm.shape == (4, 4)
    assert cm.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert mean_class_accuracy(cm) == pytest.approx((1 + 0.5 + 0) / 3)
    pairs = most_confused_pairs(cm, ["w", "x", "y", "z"], top=1)
    assert pairs == [{"true": "x", "predicted": "y", "count": 1, "fraction_of_true": 0.5}]


def test_topk_ties_follow_argmax():
    probs = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    assert topk_accuracy(probs, np.array([0, 1]), 1) == 0.5  # argmax picks index 0
    assert topk_accuracy(probs, np.array([0, 1]), 2) == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="k=4"):
        topk_accuracy(one_hot([0], 3), np.array([0]), 4)
    with pytest.raises(ValueError, match="labels contains 3"):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    with pytest.raises(ValueError, match="metric="):
        bootstrap_ci(np.array([0]), np.array([0]), 3, metric="top5")
    with pytest.raises(ValueError, match="class names"):
        compute_metrics(one_hot([0], 3), np.array([0]), ["a", "b"])


def noisy(n: int, num_classes: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions that are right with probability `accuracy`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    wrong = (labels + rng.integers(1, num_classes, n)) % num_classes
    return labels, np.where(rng.random(n) < accuracy, labels, wrong)


@pytest.mark.parametrize("metric", ["top1", "mean_class"])
def test_bootstrap_ci_properties(metric):
    labels, preds = noisy(300, 5, 0.7, seed=1)
    cm = confusion_matrix(labels, preds, 5)
    point = np.mean(labels == preds) if metric == "top1" else mean_class_accuracy(cm)
    low, high = bootstrap_ci(labels, preds, 5, metric=metric, n_boot=500, seed=3)
    assert low < point < high
    assert (low, high) == bootstrap_ci(labels, preds, 5, metric=metric, n_boot=500, seed=3)
    assert (low, high) != bootstrap_ci(labels, preds, 5, metric=metric, n_boot=500, seed=4)
    big_labels, big_preds = noisy(3000, 5, 0.7, seed=1)
    big_low, big_high = bootstrap_ci(big_labels, big_preds, 5, metric=metric, n_boot=500, seed=3)
    assert big_high - big_low < 0.5 * (high - low)  # ~1/sqrt(10) as wide
    perfect = bootstrap_ci(labels, labels, 5, metric=metric, n_boot=100)
    assert perfect == (1.0, 1.0)


def test_bootstrap_mean_class_ignores_vanished_classes():
    # One video of a never-right class: resamples that drop it must not count it as 0.
    labels = np.array([0] * 20 + [1])
    preds = np.array([0] * 20 + [0])
    low, high = bootstrap_ci(labels, preds, 2, metric="mean_class", n_boot=2000, seed=0)
    assert high == 1.0  # resamples without class 1: mean over class 0 only
    assert low == 0.5


def test_bootstrap_is_fast():
    labels, preds = noisy(10_000, 100, 0.7, seed=0)
    start = time.perf_counter()
    bootstrap_ci(labels, preds, 100, metric="mean_class", n_boot=1000)
    assert time.perf_counter() - start < 3.0  # ~0.4 s on 2 CPU cores; generous for CI noise


def test_compute_metrics_without_bootstrap():
    # n_boot=0 (quick validation during training) skips the CIs but keeps the keys.
    labels = np.array([0, 1, 2])
    m = compute_metrics(one_hot([0, 1, 1], 3), labels, NAMES3, n_boot=0)
    assert m["top1_ci95"] is None and m["mean_class_accuracy_ci95"] is None
    assert m["top1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="n_boot=-1"):
        compute_metrics(one_hot([0], 3), np.array([0]), NAMES3, n_boot=-1)
