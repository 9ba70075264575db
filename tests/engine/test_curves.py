"""Training curves: validation loss beside training loss in train_curves.png, TensorBoard and the log."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from videoft.engine.logger import RunLogger, write_curves
from videoft.engine.metrics import cross_entropy


def _rows():
    return [{"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "train_acc": 0.2 * e, "lr": 0.1,
             "clips_per_s": 5.0, "val_loss": 1.5 + 0.1 * e, "val_top1": 0.5, "val_mean_class_accuracy": 0.5,
             "val_video_top1": 0.6, "val_video_mean_class_accuracy": 0.6} for e in (1, 2, 3)]


def test_cross_entropy_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5], [0.0, 1.0, 0.0]], np.float32)
    expected = -(math.log(0.7) + math.log(0.5) + math.log(np.finfo(np.float32).tiny)) / 3  # 0 -> smallest normal
    assert cross_entropy(probs, np.array([0, 2, 0])) == pytest.approx(expected, rel=1e-6)
    assert math.isnan(cross_entropy(np.zeros((0, 3)), np.zeros(0, np.int64)))
    with pytest.raises(ValueError):
        cross_entropy(probs, np.array([0, 3, 0]))


def test_val_loss_in_tensorboard_log_and_curves(tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = RunLogger(tmp_path, ["a", "b"])
    with caplog.at_level(logging.INFO, logger="videoft"):
        for row in _rows():
            logger.epoch(row)
    logger.close(_rows())
    assert "val loss 1.6000" in caplog.text
    # add_scalars("loss", {"train", "val"}) writes one run per curve, drawn in one chart
    got = {}
    for name in ("loss_train", "loss_val"):
        acc = EventAccumulator(str(tmp_path / "tensorboard" / name))
        acc.Reload()
        got[name] = [(e.step, round(e.value, 4)) for e in acc.Scalars("loss")]
    assert got["loss_val"] == [(10, 1.6), (20, 1.7), (30, 1.8)]
    assert got["loss_train"] == [(10, 2.0), (20, 1.0), (30, 0.6667)]
    png = (tmp_path / "train_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_draw_val_loss_only_when_there_is_one(tmp_path):
    import matplotlib.image as mpimg

    rows = _rows()
    write_curves(rows, tmp_path / "with.png")
    write_curves([{k: v for k, v in r.items() if k != "val_loss"} for r in rows], tmp_path / "without.png")
    with_val, without = mpimg.imread(tmp_path / "with.png"), mpimg.imread(tmp_path / "without.png")
    assert with_val.shape == without.shape
    left = slice(0, with_val.shape[1] // 2)  # the loss panel: an extra line and legend entry
    assert np.abs(with_val[:, left] - without[:, left]).sum() > 100


def test_curves_draw_the_trained_weights_beside_their_average_when_there_is_one(tmp_path):
    """train.ema_decay: both panels get the trained weights' validation (val_online_*) beside the average's."""
    import matplotlib.image as mpimg

    rows = _rows()
    ema = [{**r, "val_online_loss": r["val_loss"] + 0.3, "val_online_top1": 0.3, "val_online_video_top1": 0.35}
           for r in rows]
    write_curves(rows, tmp_path / "plain.png")
    write_curves(ema, tmp_path / "ema.png")
    plain, with_ema = mpimg.imread(tmp_path / "plain.png"), mpimg.imread(tmp_path / "ema.png")
    half = plain.shape[1] // 2
    assert np.abs(with_ema[:, :half] - plain[:, :half]).sum() > 100  # loss panel
    assert np.abs(with_ema[:, half:] - plain[:, half:]).sum() > 100  # accuracy panel
