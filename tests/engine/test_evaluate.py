"""Predictions: clip level is the centre view, video level the mean of every view's softmax."""
from __future__ import annotations

import numpy as np
import pytest

from videoft.engine.evaluate import Predictions, centre_view_index, summarize
from videoft.engine.metrics import topk_accuracy


def test_video_level_averages_views_and_can_change_the_prediction():
    # video 0: its centre view says class 0, the two other views say class 1
    view_probs = np.array([[[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]],
                           [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]])  # [N=2, V=3, C=2]
    pred = Predictions(indices=[0, 1], labels=np.array([1, 0]), view_probs=view_probs,
                       frame_indices=[[], []], centre_view=centre_view_index(3, 1))
    np.testing.assert_allclose(pred.video_probs, [[0.3, 0.7], [0.8, 0.2]])
    np.testing.assert_allclose(pred.clip_probs, view_probs[:, 1])
    assert topk_accuracy(pred.clip_probs, pred.labels, 1) == 0.5
    assert topk_accuracy(pred.video_probs, pred.labels, 1) == 1.0
    metrics = summarize(pred, ["a", "b"])
    assert metrics["top1"] == 0.5 and metrics["video_top1"] == 1.0


@pytest.mark.parametrize("clips,crops,expected", [(1, 1, 0), (3, 1, 1), (3, 3, 4), (4, 3, 7), (2, 1, 1)])
def test_centre_view_is_the_centre_clip_and_crop(clips, crops, expected):
    assert centre_view_index(clips, crops) == expected
